//! Splice mode for bulk tunnel directions: bytes go socket -> pipe -> socket with
//! non-blocking splice(2) calls made straight from the tunnel loop (IORING_OP_SPLICE would
//! run on io-wq threads), so they are never copied through user space.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use socket2::SockRef;

use super::{Engine, State, side_of};

/// Bytes a direction must move in reads of at least `BULK_READ` (4 KiB) in a row before it
/// switches to splice. Message traffic (even pipelined) never gets there; a bulk stream gets
/// there whether the proxy is ahead of it (reads of what just arrived) or behind (full reads).
const BULK_STREAK: u32 = 256 * 1024;
/// Bytes one splice(2) moves at most: a default pipe's capacity. (A 256 KiB pipe measured
/// no better: 1,418 vs 1,583 MB/s in the bulk cell, both bound by the load generator.)
const SPLICE_CHUNK: usize = 64 * 1024;
/// Socket-to-pipe-to-socket rounds one completion may run before the direction waits its
/// turn again, so a bulk tunnel cannot hold the loop.
const SPLICE_ROUNDS: usize = 4;

/// A spliced direction's pipe and the bytes in it not yet written on.
pub(super) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    pub(super) held: usize,
}

impl<P> Engine<P> {
    /// After a run of large reads, moves direction `d` to splice(2): bytes go socket -> pipe
    /// -> socket as page references, never copied through user space. Both sockets become
    /// non-blocking so a splice never waits (io_uring operations on them do not mind).
    /// `false`: the direction stays on buffered reads (not bulk, or no pipe to be had).
    pub(super) fn start_splice(&mut self, index: u32, d: usize) -> bool {
        if !self.turns_bulk(index, d) {
            return false;
        }
        let tunnel = self.slab[index as usize].as_mut().expect("open tunnel");
        let dir = &mut tunnel.dirs[d];
        if dir.pipe.is_some() {
            return true;
        }
        dir.streak = 0;
        let pipe = match new_pipe() {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("no pipe for a bulk tunnel, staying on buffered reads: {e}");
                return false;
            }
        };
        if let Err(e) = tunnel
            .fds
            .iter()
            .try_for_each(|fd| SockRef::from(fd).set_nonblocking(true))
        {
            tracing::debug!("cannot make a bulk tunnel's sockets non-blocking: {e}");
            return false;
        }
        tunnel.dirs[d].pipe = Some(Box::new(pipe));
        self.pipes_left -= 1;
        self.metrics.spliced.add(1);
        true
    }

    /// Whether direction `d` splices, or is to once it has nothing in flight.
    pub(super) fn turns_bulk(&self, index: u32, d: usize) -> bool {
        let tunnel = self.slab[index as usize].as_ref().expect("open tunnel");
        let dir = &tunnel.dirs[d];
        dir.pipe.is_some() || (dir.streak >= BULK_STREAK && self.pipes_left > 0)
    }

    /// Moves what direction `d` can without waiting, then waits for readiness of its source
    /// (pipe empty) or destination (pipe not yet written on): one poll in flight
    /// ([`State::Spliced`]), as a buffered direction has one read or send in flight.
    /// `polled`: called because a poll completed.
    ///
    /// A source reported readable that still will not splice is stopped at TCP urgent data
    /// (splice stops at the mark, a plain read skips the byte): one buffered read, into a
    /// heap buffer since bytes are sure to be there, gets it past; splicing resumes after.
    pub(super) fn splice(&mut self, index: u32, d: usize, polled: bool) {
        let tunnel = self.slab[index as usize].as_mut().expect("open tunnel");
        let waited_for_bytes = polled && tunnel.dirs[d].pipe.as_ref().is_some_and(|p| p.held == 0);
        let src = tunnel.fds[d].as_raw_fd();
        let dst = tunnel.fds[1 - d].as_raw_fd();
        let pipe = tunnel.dirs[d].pipe.as_mut().expect("a spliced direction");
        let mut moved = 0u64;
        let mut outcome = Ok(None);
        for _ in 0..SPLICE_ROUNDS {
            if pipe.held == 0 {
                match splice(src, pipe.write.as_raw_fd(), SPLICE_CHUNK) {
                    Ok(0) => {
                        outcome = Ok(Some(Shutdown::Write));
                        break;
                    }
                    Ok(n) => {
                        pipe.held = n;
                        moved += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if waited_for_bytes && moved == 0 {
                            self.read_into_heap(index, d);
                            return;
                        }
                        break;
                    }
                    Err(e) => {
                        outcome = Err((side_of(d), e));
                        break;
                    }
                }
            }
            match splice(pipe.read.as_raw_fd(), dst, pipe.held) {
                Ok(0) => {
                    outcome = Err((side_of(1 - d), io::ErrorKind::WriteZero.into()));
                    break;
                }
                Ok(n) => pipe.held -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    outcome = Err((side_of(1 - d), e));
                    break;
                }
            }
        }
        let events = if pipe.held == 0 {
            libc::POLLIN
        } else {
            libc::POLLOUT
        };
        if moved > 0 {
            tunnel.active = true;
            tunnel.dirs[d].bytes += moved;
            self.metrics.bytes[d].add(moved);
        }
        match outcome {
            Ok(None) => self.enter(index, d, State::Spliced { events }),
            Ok(Some(how)) => {
                let _ = SockRef::from(&tunnel.fds[1 - d]).shutdown(how);
            }
            Err((side, e)) => tunnel.fail(side, e),
        }
    }
}

impl Pipe {
    /// A pipe handed over with `held` bytes in it.
    pub(super) fn from_parts(read: OwnedFd, write: OwnedFd, held: usize) -> Self {
        Pipe { read, write, held }
    }

    pub(super) fn into_parts(self) -> (OwnedFd, OwnedFd, usize) {
        (self.read, self.write, self.held)
    }
}

fn new_pipe() -> io::Result<Pipe> {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) writes two descriptors into the array we pass.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and belong to nobody else.
    #[allow(unsafe_code)]
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok(Pipe {
        read,
        write,
        held: 0,
    })
}

/// One non-blocking splice(2) of up to `len` bytes; `WouldBlock` when nothing can move now.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: no offsets are passed (both null), only descriptors we own.
    #[allow(unsafe_code)]
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
