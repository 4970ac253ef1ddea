//! What the engine's tests share: loopback socket pairs and a bounded wait.
#![allow(clippy::disallowed_methods)] // the peers are plain threads, not a worker

use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::Receive;

/// Multishot receives on a deferred ring, whatever the kernel's eventfd does: these tests
/// exercise the engine, not how promptly its loop wakes.
pub(super) const MULTISHOT: Receive = Receive {
    multishot: true,
    defer: Some(true),
};

/// A connected pair: the peer's end, and the end the engine relays.
pub(super) fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let outside = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (inside, _) = listener.accept().unwrap();
    (outside, inside)
}

/// Polls `done` until it holds, for at most 20 s.
pub(super) async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
