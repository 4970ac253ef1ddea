//! # wsplice: a thread-per-core io_uring WebSocket reverse proxy
//!
//! ## Layout
//! Folders are the proxy's nouns; dependencies point one way, down this list:
//! (`os`, `http`, `config`) <- `tls` <- `upstream` <- `uring` <- `tunnel` <- `proxy` <- `server`, and
//! `observe` uses only the leaves. No module imports the one that drives it.
//!
//! - [`os`]: CPU pinning, the open-files budget, the spare descriptor, memory, sd_notify.
//! - [`http`]: sans-IO HTTP/1.1: the request head (strict checks, the rewrite sent
//!   upstream), the request path in normal form (what routes match), where a head ends
//!   (scanned once) and where a body ends (`Content-Length`, chunked), the response head,
//!   the RFC 6455 key and accept checks, and the lookups a balancer hashes (a header, a
//!   cookie, a query parameter), the PROXY protocol header (read and written), and who the
//!   client is behind trusted proxies (`X-Forwarded-For`).
//! - [`config`]: the TOML config, raw serde types validated into [`config::Config`].
//! - [`tls`]: the certificates of the `[tls]` section checked and hot-swapped, the SNI
//!   resolver (exact name, then one-label wildcard, then `unknown_sni`), the one rustls
//!   `ServerConfig`, and the AEAD crate the tunnel's record layer uses.
//! - [`observe`]: per-worker metrics, the admin endpoint (`/metrics`, `/healthz`), the
//!   access log written from its own thread.
//! - [`upstream`]: the upstream file as an immutable table of groups, each with its balancer
//!   (smooth weighted round robin, least connections, a consistent-hash ring, sticky
//!   cookies; passive health); hot reload (inotify, SIGHUP) swaps the table whole through
//!   arc-swap, handing on health and open-connection counts; one background thread runs
//!   the active health checks and looks host names up again (a changed set is swapped in
//!   the same way).
//! - [`uring`]: tokio-uring plumbing: the connection type over a plain descriptor, a connect
//!   that a timeout really ends, deadlines that never drop a pending read, the buffer pool.
//! - [`tunnel`]: every open tunnel of a worker, relayed by one loop over a ring of their own
//!   (kernel-selected receive buffers, so an idle tunnel holds none; a blocked send spills
//!   to the heap and gives its buffer back; splice for bulk); each direction's state is one
//!   enum, so one operation per direction is checked by the compiler.
//! - [`proxy`]: one connection: (read the PROXY header ->) read the request head -> route ->
//!   connect an upstream -> response head -> hand the tunnel over after a real `101`, or
//!   relay one framed request and response and close; the per-client limits (a fixed table
//!   of atomic buckets shared by all workers: connections per address, request heads per
//!   second).
//! - [`server`]: start-up and stop, the listeners, one pinned worker thread per CPU with
//!   its own tokio-uring runtime and accept loop.

pub mod config;
pub mod http;
pub mod observe;
pub mod os;
pub mod proxy;
pub mod server;
pub mod tls;
pub mod tunnel;
pub mod upstream;
pub mod uring;
