//! Connecting to one upstream address with a timeout that really ends the attempt.
//! A connect that is merely dropped keeps its socket until the kernel gives up, minutes
//! later, so this submits IORING_OP_CONNECT on a socket we own and, on timeout, shuts the
//! socket down, which aborts a SYN_SENT connect at once. A unix socket server goes through
//! the same op with a `sockaddr_un`: a missing path (ENOENT) or a refusal fails the attempt
//! like a TCP refusal, so the group fails over the same way.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use io_uring::{opcode, types};
use socket2::{SockAddr, Socket, Type};

use super::deadline::with_deadline;
use super::op;
use super::stream::Stream;
use crate::upstream::UpstreamAddr;

/// Why one connect attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out")]
    TimedOut,
    /// This process is out of descriptors: no fault of the upstream's.
    #[error("no descriptor for a socket: {0}")]
    NoDescriptor(io::Error),
    #[error("{0}")]
    Failed(#[from] io::Error),
}

/// Data the kernel uses until the completion arrives, kept alive until then even if the
/// future is dropped, so the address pointer and the fd stay valid.
struct ConnectData {
    socket: Socket,
    _addr: Box<SockAddr>,
}

/// Connects to `addr` (TCP with TCP_NODELAY set, or a unix socket), giving up after `timeout`
/// (`None`: no limit).
pub async fn connect(
    addr: &UpstreamAddr,
    timeout: Option<Duration>,
) -> Result<Stream, ConnectError> {
    // Non-blocking from the start (the tunnel's splices need it): no fcntl round trips.
    let socket =
        Socket::new(addr.domain(), Type::STREAM.nonblocking(), None).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::EMFILE | libc::ENFILE) => ConnectError::NoDescriptor(e),
                _ => ConnectError::Failed(e),
            }
        })?;
    if addr.is_tcp() {
        socket.set_tcp_nodelay(true)?;
    }
    let fd = socket.as_raw_fd();
    let addr = Box::new(addr.sock_addr()?);
    let sqe = opcode::Connect::new(types::Fd(fd), addr.as_ptr().cast(), addr.len()).build();
    let data = ConnectData {
        socket,
        _addr: addr,
    };
    // SAFETY: the entry reads `addr`'s heap allocation and uses `fd`; both are the op's data
    // (see ConnectData), which outlives the kernel's use of them.
    #[allow(unsafe_code)]
    let op = unsafe { op::submit(data, sqe) };
    let ((done, data), timed_out) = with_deadline(timeout, op, || {
        // Aborts a connect in SYN_SENT; the pending op then completes with an error.
        // SAFETY: `fd` is open: ConnectData owns the socket until the op completes, and the op
        // is still pending here. shutdown(2) touches no memory of ours.
        #[allow(unsafe_code)]
        unsafe {
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
    })
    .await;
    match done.result() {
        _ if timed_out => Err(ConnectError::TimedOut),
        Ok(_) => Ok(Stream::from_fd(data.socket.into())),
        Err(e) => Err(ConnectError::Failed(e)),
    }
}
