//! tokio-uring plumbing for the handshake phase: the connection type, connecting upstream,
//! deadlines, and the per-worker buffer pool.

pub mod buffers;
pub mod connect;
pub mod deadline;
pub mod stream;
