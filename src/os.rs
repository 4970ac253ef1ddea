//! What wsplice asks of the operating system outside io_uring: CPUs, descriptors, memory,
//! systemd's readiness protocol, and watching the files read at run time.

pub mod cpus;
pub mod fdlimit;
pub mod memory;
pub mod notify;
pub mod spare_fd;
pub mod watch;
