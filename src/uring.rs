//! The handshake phase's I/O on the worker's ring: its operations, the connection type,
//! connecting upstream, deadlines, and the per-worker buffer pool.

pub mod buffers;
pub mod connect;
pub mod deadline;
pub mod op;
pub mod stream;
