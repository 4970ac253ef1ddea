//! A TCP connection that owns a plain descriptor, which it gives up
//! ([`Stream::into_fd`]) when the handshake is over and the connection becomes a tunnel.
//! Operations are [`super::op`]'s, on the worker's ring, made by [`op::submit`] (as
//! [`super::connect`]'s): the buffer is the operation's data, kept alive until the kernel is
//! done with it even if the future is dropped. Buffers are tokio-uring's owned-buffer types
//! (`BoundedBuf`), which say where the kernel may read and write.
//!
//! The descriptor is not: dropping a `Stream` closes it at once, so its pending operations
//! must be awaited to the end first (as everything here does, see [`super::deadline`]).

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{opcode, types};
use socket2::{SockAddr, SockAddrStorage, SockRef};
use tokio_uring::buf::{BoundedBuf, BoundedBufMut};

use super::op;

/// A connected TCP socket.
#[derive(Debug)]
pub struct Stream {
    fd: OwnedFd,
}

impl Stream {
    pub fn from_fd(fd: OwnedFd) -> Stream {
        Stream { fd }
    }

    /// Gives the descriptor up, e.g. to hand the connection over.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Reads some bytes into `buf` at its start, as tokio-uring's `TcpStream::read` does: up
    /// to `bytes_total()`, and the buffer's initialized length becomes at least the count.
    /// `Ok(0)`: end of stream.
    pub async fn read<T: BoundedBufMut>(&self, mut buf: T) -> (io::Result<usize>, T) {
        let ptr = buf.stable_mut_ptr();
        let len = buf.bytes_total() as u32;
        let sqe = opcode::Recv::new(types::Fd(self.as_raw_fd()), ptr, len).build();
        // SAFETY: the entry writes at most `bytes_total()` bytes at `buf`'s stable pointer,
        // and `buf` is the op's data.
        #[allow(unsafe_code)]
        let op = unsafe { op::submit(buf, sqe) };
        let (done, mut buf) = op.await;
        let res = done.count();
        if let Ok(n) = res {
            // SAFETY: the kernel wrote `n` bytes from `stable_mut_ptr()` on.
            #[allow(unsafe_code)]
            unsafe {
                buf.set_init(n);
            }
        }
        (res, buf)
    }

    /// Writes all of `buf`'s initialized bytes, as tokio-uring's `TcpStream::write_all` does.
    /// MSG_NOSIGNAL: a peer gone reports EPIPE, never SIGPIPE.
    pub async fn write_all<T: BoundedBuf>(&self, buf: T) -> (io::Result<()>, T) {
        let bounds = buf.bounds();
        let mut slice = buf.slice_full();
        while slice.bytes_init() != 0 {
            let sqe = opcode::Send::new(
                types::Fd(self.as_raw_fd()),
                slice.stable_ptr(),
                slice.bytes_init() as u32,
            )
            .flags(libc::MSG_NOSIGNAL)
            .build();
            // SAFETY: the entry reads `bytes_init()` bytes at `slice`'s stable pointer, and
            // `slice` is the op's data.
            #[allow(unsafe_code)]
            let op = unsafe { op::submit(slice, sqe) };
            let (done, sent) = op.await;
            slice = match done.count() {
                Ok(0) => {
                    let err =
                        io::Error::new(io::ErrorKind::WriteZero, "failed to write whole buffer");
                    return (Err(err), T::from_buf_bounds(sent.into_inner(), bounds));
                }
                Ok(n) => sent.slice(n..),
                Err(e) => return (Err(e), T::from_buf_bounds(sent.into_inner(), bounds)),
            };
        }
        (Ok(()), T::from_buf_bounds(slice.into_inner(), bounds))
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        SockRef::from(&self.fd).shutdown(how)
    }

    /// The socket's own address (`getsockname`).
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        SockRef::from(&self.fd)
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("not an IP socket"))
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        SockRef::from(&self.fd).set_tcp_nodelay(on)
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Accepts a connection on `listener` (close-on-exec, like tokio-uring's accept). A
/// `shutdown(Read)` of the listener makes a pending accept fail.
pub async fn accept(listener: &TcpListener) -> io::Result<(Stream, SocketAddr)> {
    let mut peer = Box::new(Peer {
        storage: SockAddrStorage::zeroed(),
        len: 0,
    });
    peer.len = peer.storage.size_of();
    let sqe = opcode::Accept::new(
        types::Fd(listener.as_raw_fd()),
        (&raw mut peer.storage).cast(),
        &raw mut peer.len,
    )
    .flags(libc::SOCK_CLOEXEC)
    .build();
    // SAFETY: the entry writes the peer's address and its length into `peer`'s heap
    // allocation, and `peer` is the op's data.
    #[allow(unsafe_code)]
    let op = unsafe { op::submit(peer, sqe) };
    let (done, peer) = op.await;
    let fd = done.result()?;
    // SAFETY: a successful accept returns a new descriptor that nothing else owns.
    #[allow(unsafe_code)]
    let stream = Stream::from_fd(unsafe { OwnedFd::from_raw_fd(fd) });
    let Peer { storage, len } = *peer;
    // SAFETY: the kernel wrote a socket address of `len` bytes into `storage`.
    #[allow(unsafe_code)]
    let addr = unsafe { SockAddr::new(storage, len) };
    let addr = addr
        .as_socket()
        .ok_or_else(|| io::Error::other("Could not get socket IP address"))?;
    Ok((stream, addr))
}

/// Cancels what this worker's ring has pending on `listener` (its accept), leaving the
/// socket open and listening: a handoff stops this process accepting while the next goes
/// on accepting on the same socket, which a `shutdown` would stop for both.
pub async fn cancel_accepts(listener: &TcpListener) -> io::Result<usize> {
    let on = types::CancelBuilder::fd(types::Fd(listener.as_raw_fd())).all();
    let sqe = opcode::AsyncCancel2::new(on).build();
    // SAFETY: the entry touches no memory; `listener` outlives the call, which waits for
    // the cancellation to complete.
    #[allow(unsafe_code)]
    let op = unsafe { op::submit((), sqe) };
    match op.await.0.count() {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(0),
        other => other,
    }
}

/// Whether this kernel cancels by descriptor (`IORING_ASYNC_CANCEL_FD`, Linux 5.19), which
/// [`cancel_accepts`] needs: asked of a ring of its own, on a descriptor with nothing pending.
pub fn cancels_by_fd() -> bool {
    let Ok(mut ring) = io_uring::IoUring::new(2) else {
        return false;
    };
    let on = types::CancelBuilder::fd(types::Fd(ring.as_raw_fd())).all();
    let sqe = opcode::AsyncCancel2::new(on).build();
    // SAFETY: the entry touches no memory.
    #[allow(unsafe_code)]
    if unsafe { ring.submission().push(&sqe) }.is_err() || ring.submit_and_wait(1).is_err() {
        return false;
    }
    // Nothing to cancel: ENOENT, or 0 cancelled; an older kernel says EINVAL.
    ring.completion()
        .next()
        .is_some_and(|cqe| cqe.result() != -libc::EINVAL)
}

/// Where the kernel writes an accepted peer's address; boxed, so it stays put.
struct Peer {
    storage: SockAddrStorage,
    len: libc::socklen_t,
}
