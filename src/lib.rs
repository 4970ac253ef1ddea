//! # wsplice: a thread-per-core io_uring WebSocket reverse proxy
//!
//! ## Layout
//! - [`config`]: the TOML config, raw serde types validated into [`config::Config`].
//! - [`upstream`]: the upstream file as an immutable [`upstream::UpstreamTable`];
//!   [`balancer`] picks (smooth weighted round robin, passive health); [`reload`] watches
//!   the file (inotify) and swaps the table whole (arc-swap), also on SIGHUP.
//! - [`server`]: start-up and stop; [`listener`] binds SO_REUSEPORT sockets, [`worker`] runs
//!   one pinned thread per CPU with its own tokio-uring runtime and accept loop.
//! - [`proxy`]: one connection: request head ([`handshake`], sans-IO) -> route -> upstream
//!   ([`connect`]) -> response head -> tunnel after a `101` only.
//! - [`tunnels`]: every open tunnel of a worker, relayed by one loop over a ring of their
//!   own (kernel-selected receive buffers, so an idle tunnel holds none; splice for bulk).
//! - [`relay`]: byte pumps for plain responses, with idle timeout; [`buffers`] the pool
//!   of head and response buffers.
//! - [`socket`]: the connection type, over a plain descriptor handed to [`tunnels`] after
//!   the handshake.
//! - [`deadline`]: timeouts that never drop a pending io_uring read.
//! - [`metrics`] (per-worker counters), served by [`admin`] with `/healthz`; [`access_log`]
//!   writes one line per connection from its own thread.
//! - [`websocket`]: the RFC 6455 key and accept checks; no tunnel opens without them.
//! - [`spare_fd`]: a descriptor in reserve, so a process out of them still answers 503.
//! - [`memory`]: freed memory goes back to the OS once a burst of handshakes is over.
//! - [`cpus`], [`fdlimit`], [`notify`]: CPU pinning, the open-files budget, sd_notify.

pub mod access_log;
pub mod admin;
pub mod balancer;
pub mod buffers;
pub mod config;
pub mod connect;
pub mod cpus;
pub mod deadline;
pub mod fdlimit;
pub mod handshake;
pub mod listener;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod relay;
pub mod reload;
pub mod server;
pub mod socket;
pub mod spare_fd;
pub mod tunnels;
pub mod upstream;
pub mod websocket;
pub mod worker;
