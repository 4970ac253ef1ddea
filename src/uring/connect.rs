//! Connecting to one upstream address with a timeout that really ends the attempt.
//! tokio-uring's own connect cannot be aborted (a dropped connect keeps its socket until the
//! kernel gives up, minutes later), so this submits IORING_OP_CONNECT on a socket we own and,
//! on timeout, shuts the socket down, which aborts a SYN_SENT connect at once. A unix socket
//! server goes through the same op with a `sockaddr_un`: a missing path (ENOENT) or a refusal
//! fails the attempt like a TCP refusal, so the group fails over the same way.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use io_uring::{cqueue, opcode, types};
use socket2::{SockAddr, Socket, Type};
use tokio_uring::OneshotOutputTransform;

use super::deadline::with_deadline;
use super::stream::{self, Stream};
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

/// Data the kernel uses until the completion arrives. tokio-uring keeps it alive until then,
/// even if the future is dropped, so the address pointer and the fd stay valid.
struct ConnectData {
    socket: Socket,
    _addr: Box<SockAddr>,
}

struct ConnectTransform;

impl OneshotOutputTransform for ConnectTransform {
    type Output = (io::Result<()>, Socket);
    type StoredData = ConnectData;

    fn transform_oneshot_output(self, data: ConnectData, cqe: cqueue::Entry) -> Self::Output {
        (stream::result(&cqe).map(drop), data.socket)
    }
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
    let op = unsafe { stream::oneshot(data, ConnectTransform, sqe) }.submit();
    let ((res, socket), timed_out) = with_deadline(timeout, op, || {
        // Aborts a connect in SYN_SENT; the pending op then completes with an error.
        // SAFETY: `fd` is open: ConnectData owns the socket until the op completes, and the op
        // is still pending here. shutdown(2) touches no memory of ours.
        #[allow(unsafe_code)]
        unsafe {
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
    })
    .await;
    match res {
        _ if timed_out => Err(ConnectError::TimedOut),
        Ok(()) => Ok(Stream::from_fd(socket.into())),
        Err(e) => Err(ConnectError::Failed(e)),
    }
}
