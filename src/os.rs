//! What wsplice asks of the operating system outside io_uring: CPUs, descriptors, memory,
//! and systemd's readiness protocol.

pub mod cpus;
pub mod fdlimit;
pub mod memory;
pub mod notify;
pub mod spare_fd;
