//! Keeping resident memory proportional to what is open. Handshakes come in bursts and each
//! holds buffers while it lasts; once the burst is over and its connections sit idle as
//! tunnels, that memory should go back to the OS. mimalloc returns a freed page only when it
//! next runs after its purge delay, and a worker whose connections all went idle allocates
//! nothing, so pages are purged as soon as they are free.
//! (Also collecting each worker's heap once it went quiet after a burst measured no better:
//! 467-1179 bytes per idle connection in all-contender runs either way, so it is not done.)

/// `mi_option_purge_delay`, the 16th entry of mimalloc.h's `mi_option_e` (the same in the
/// v2 and v3 headers libmimalloc-sys 0.1.49 ships). The bindings name only some options, not
/// this one, and mimalloc has no set-by-name call: its only name-based route is the
/// `MIMALLOC_PURGE_DELAY` variable, read before `main` runs. So the number stays, and the
/// test below checks it against that name, through mimalloc's own table.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed pages go back to the OS at once rather than after mimalloc's delay (1 s, checked
/// only on a later allocation). `MIMALLOC_PURGE_DELAY` in the environment still decides.
/// Measured with 8,000 idle tunnels: 1,172 -> 582 bytes of RSS per connection, handshakes/s
/// unchanged. Call first thing in `main`.
pub fn purge_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's process-wide options; no memory of ours is passed.
        #[allow(unsafe_code)]
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// mimalloc loads `MIMALLOC_PURGE_DELAY` into the option it names `purge_delay`: this
    /// test runs itself again with the variable set, and that run must read the value back
    /// through [`MI_OPTION_PURGE_DELAY`].
    #[test]
    fn the_option_number_is_mimallocs_purge_delay() {
        let module = module_path!().split_once("::").unwrap().1;
        let name = format!("{module}::the_option_number_is_mimallocs_purge_delay");
        const VALUE: &str = "4321";
        if std::env::var("MIMALLOC_PURGE_DELAY").as_deref() == Ok(VALUE) {
            // SAFETY: reads one of mimalloc's process-wide options.
            #[allow(unsafe_code)]
            let value = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
            assert_eq!(value.to_string(), VALUE);
            return;
        }
        let run = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &name, "--test-threads=1"])
            .env("MIMALLOC_PURGE_DELAY", VALUE)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&run.stdout);
        assert!(run.status.success() && out.contains("1 passed"), "{out}");
    }
}
