//! Faults the tests can switch on in a debug build (`WSPLICE_FAULT=<name>`): to check that a
//! worker which cannot go on takes the process down instead of accepting connections that
//! nobody serves, and that a takeover in another format is refused. Release builds compile
//! all of it away.

use std::io;

/// Whether the fault `name` is switched on.
pub fn on(name: &str) -> bool {
    cfg!(debug_assertions) && std::env::var("WSPLICE_FAULT").is_ok_and(|v| v == name)
}

/// Panics when the fault `name` is switched on.
pub fn inject_panic(name: &str) {
    if on(name) {
        panic!("injected fault {name}");
    }
}

/// An error to fail with when the fault `name` is switched on.
pub fn injected_error(name: &str) -> Option<io::Error> {
    on(name).then(|| io::Error::other(format!("injected fault {name}")))
}
