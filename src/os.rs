//! What wsplice asks of the operating system outside io_uring: CPUs, descriptors, memory,
//! the kernel's release, systemd's readiness protocol, watching the files read at run time, and passing
//! descriptors to another process.

pub mod cpus;
pub mod fd_passing;
pub mod fdlimit;
pub mod kernel;
pub mod memory;
pub mod notify;
pub mod spare_fd;
pub mod watch;
