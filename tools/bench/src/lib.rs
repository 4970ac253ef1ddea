//! # wsplice-bench: measure a WebSocket proxy, and compare it with the same job done directly,
//! by nginx, by HAProxy and by wsplice
//!
//! ## Layout
//! - [`ws`]: the bit of RFC 6455 both sides need (accept key, frame headers, masking) and the
//!   self-checking messages the client sends.
//! - [`upstream`]: a fast echo (any path) and sink (`/sink`) upstream, so the proxy is what
//!   is measured.
//! - [`client`]: connect + upgrade + frame reading for one benchmark connection.
//! - [`load`]: the modes (`rr`, `pipe`, open-loop rate, `handshake`, `bulk`, `idle`), each
//!   counting inside a [`report::Window`] and reporting a [`report::Report`].
//! - [`compare`]: the side-by-side run (direct, nginx, HAProxy, wsplice) that pins the proxy
//!   to its own CPUs, reads its CPU time (user and kernel) and memory from /proc, counts its
//!   system calls with `perf stat` in a window of their own, and writes the tables.
//! - [`tls`]: the certificate the TLS cells give every proxy, and the client's TLS settings
//!   (TLS 1.3, one cipher suite, no resumption).
//! - [`sys`]: CPU pinning, the open-files limit and signals (the crate's only unsafe code).

pub mod client;
pub mod compare;
pub mod load;
pub mod report;
pub mod sys;
pub mod tls;
pub mod upstream;
pub mod ws;

/// A tokio runtime with `threads` threads: a single-threaded one for 1 (the cheapest per
/// message), a multi-threaded one otherwise.
pub fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}
