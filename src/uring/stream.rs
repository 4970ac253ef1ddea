//! A TCP connection that owns a plain descriptor. tokio-uring's `TcpStream` keeps its fd to
//! itself; this one gives it up ([`Stream::into_fd`]), so that after the handshake a
//! connection can be handed to other code with its own ring. Operations go through
//! tokio-uring's `UnsubmittedOneshot` escape hatch, always by way of `oneshot` (also for
//! [`super::connect`]), with tokio-uring's own semantics: the buffer is the op's stable data,
//! kept alive until the kernel is done with it even if the future is dropped.
//!
//! The descriptor is not: dropping a `Stream` closes it at once, so its pending operations
//! must be awaited to the end first (as everything here does, see [`super::deadline`]).

use std::io;
use std::marker::PhantomData;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{cqueue, opcode, squeue, types};
use socket2::{SockAddr, SockAddrStorage, SockRef};
use tokio_uring::buf::{BoundedBuf, BoundedBufMut};
use tokio_uring::{OneshotOutputTransform, UnsubmittedOneshot};

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
        let op = unsafe { oneshot(buf, WithBuf(PhantomData), sqe) };
        let (res, mut buf) = op.submit().await;
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
            let op = unsafe { oneshot(slice, WithBuf(PhantomData), sqe) };
            let (res, done) = op.submit().await;
            slice = match res {
                Ok(0) => {
                    let err =
                        io::Error::new(io::ErrorKind::WriteZero, "failed to write whole buffer");
                    return (Err(err), T::from_buf_bounds(done.into_inner(), bounds));
                }
                Ok(n) => done.slice(n..),
                Err(e) => return (Err(e), T::from_buf_bounds(done.into_inner(), bounds)),
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
    let op = unsafe { oneshot(peer, Accepted, sqe) };
    op.submit().await
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
    let op = unsafe { oneshot((), WithBuf(PhantomData), sqe) };
    match op.submit().await.0 {
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

/// A tokio-uring operation from a raw entry: every raw entry for a worker's tokio-uring ring
/// is made into an operation here.
///
/// # Safety
/// The memory `sqe` reads or writes must lie inside `data`'s heap allocation or stable
/// buffer (tokio-uring keeps `data`, unmoved, until the kernel completes the operation, even
/// if its future is dropped), or otherwise outlive the operation; nothing else may touch the
/// memory the kernel writes until then. Its descriptor must stay open until the operation
/// completes (else the kernel may act on whatever file reuses the number).
#[allow(unsafe_code)]
pub(crate) unsafe fn oneshot<D, T>(
    data: D,
    transform: T,
    sqe: squeue::Entry,
) -> UnsubmittedOneshot<D, T>
where
    T: OneshotOutputTransform<StoredData = D>,
{
    UnsubmittedOneshot::new(data, transform, sqe)
}

/// Where the kernel writes an accepted peer's address; boxed, so it stays put.
struct Peer {
    storage: SockAddrStorage,
    len: libc::socklen_t,
}

/// Maps a completion to the byte count, handing the buffer back either way.
struct WithBuf<T>(PhantomData<T>);

impl<T> OneshotOutputTransform for WithBuf<T> {
    type Output = (io::Result<usize>, T);
    type StoredData = T;

    fn transform_oneshot_output(self, buf: T, cqe: cqueue::Entry) -> Self::Output {
        (result(&cqe).map(|n| n as usize), buf)
    }
}

struct Accepted;

impl OneshotOutputTransform for Accepted {
    type Output = io::Result<(Stream, SocketAddr)>;
    type StoredData = Box<Peer>;

    fn transform_oneshot_output(self, peer: Box<Peer>, cqe: cqueue::Entry) -> Self::Output {
        let fd = result(&cqe)?;
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
}

/// A completion's result: the count or descriptor, or the error the kernel reported.
pub(crate) fn result(cqe: &cqueue::Entry) -> io::Result<i32> {
    if cqe.result() >= 0 {
        Ok(cqe.result())
    } else {
        Err(io::Error::from_raw_os_error(-cqe.result()))
    }
}
