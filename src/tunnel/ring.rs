//! The tunnels' ring, and when the loop lets the kernel run the completion work it has for
//! the worker's thread: a receive whose bytes arrived, a poll that fired.
//!
//! By default the kernel runs that work on the thread's every return to user space, for
//! any system call or interrupt. With multishot receives, a loop that fell behind (a CPU
//! shared with other work) then kept finding more completions queued behind the ones it
//! was handling, one per message, until the completion queue held seconds of backlog
//! (`fanout-hog`: p50 2-3 s, one round in three collapsed to a sixth of the rate while
//! its queued bytes took fresh heap buffers). With DEFER_TASKRUN (Linux 6.1) that work
//! waits until the loop asks for it, and the loop asks only once it has handled every
//! completion it had: bytes that arrive meanwhile wait in their socket and are read
//! together, as one receive per read would read them.
//!
//! The kernel does not wake pollers of the ring for deferred work, only an eventfd
//! registered with it (and it does so for posted completions too), so that is what the
//! runtime's epoll watches. The eventfd is never read: epoll reports every signal as a new
//! edge, and its count only grows.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::IoUring;

/// Submission queue size; a full queue is submitted and refilled, so this bounds batching only.
const SQ_ENTRIES: u32 = 1024;
/// `io_uring_enter` flag: run completion work and reap.
const ENTER_GETEVENTS: u32 = 1;

/// How the kernel runs completion work for the ring's thread.
pub(super) enum KernelWork {
    /// At the loop's request (DEFER_TASKRUN); signalled through this eventfd.
    Deferred(OwnedFd),
    /// On every return to user space; `flagged`: the submission queue's flags say when
    /// some is pending (IORING_SETUP_TASKRUN_FLAG), so an enter with nothing to submit can
    /// be skipped.
    Inline { flagged: bool },
}

/// A ring with DEFER_TASKRUN, SINGLE_ISSUER and TASKRUN_FLAG and an eventfd (where `defer`);
/// else one with COOP_TASKRUN instead (no interrupt to run completion work: it runs when the
/// thread next enters the kernel); else a plain one. Must be built on the thread that runs
/// the loop.
pub(super) fn build(cq_entries: u32, defer: bool) -> io::Result<(IoUring, KernelWork)> {
    if defer
        && let Ok(ring) = IoUring::builder()
            .setup_cqsize(cq_entries)
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .build(SQ_ENTRIES)
        && let Ok(eventfd) = eventfd()
        && ring
            .submitter()
            .register_eventfd(eventfd.as_raw_fd())
            .is_ok()
    {
        return Ok((ring, KernelWork::Deferred(eventfd)));
    }
    IoUring::builder()
        .setup_cqsize(cq_entries)
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(SQ_ENTRIES)
        .map(|ring| (ring, KernelWork::Inline { flagged: true }))
        .or_else(|_| {
            IoUring::builder()
                .setup_cqsize(cq_entries)
                .build(SQ_ENTRIES)
                .map(|ring| (ring, KernelWork::Inline { flagged: false }))
        })
}

impl KernelWork {
    /// The descriptor the runtime polls to wake the loop.
    pub(super) fn wakes(&self, ring: &IoUring) -> RawFd {
        match self {
            KernelWork::Deferred(eventfd) => eventfd.as_raw_fd(),
            KernelWork::Inline { .. } => ring.as_raw_fd(),
        }
    }

    /// Whether deferred work waits for the loop's next enter (inline work never does: the
    /// kernel runs it on its own).
    pub(super) fn deferred(&self, ring: &mut IoUring) -> bool {
        matches!(self, KernelWork::Deferred(_)) && ring.submission().taskrun()
    }

    /// Submits what is queued; `drained`: the loop has handled every completion, so the
    /// kernel may run the work it deferred and flush completions that overflowed. Enters
    /// only when there is something to submit or to run.
    pub(super) fn enter(&self, ring: &mut IoUring, drained: bool) -> io::Result<usize> {
        let mut sq = ring.submission();
        sq.sync();
        let queued = sq.len();
        let work = sq.taskrun();
        let overflow = sq.cq_overflow();
        drop(sq);
        match self {
            KernelWork::Deferred(_) => {
                let run = drained && (work || overflow);
                if queued == 0 && !run {
                    return Ok(0);
                }
                let flags = if run { ENTER_GETEVENTS } else { 0 };
                // SAFETY: no argument is passed; the entries are valid (see `push_sqe`).
                #[allow(unsafe_code)]
                unsafe {
                    ring.submitter()
                        .enter::<libc::sigset_t>(queued as u32, 0, flags, None)
                }
            }
            KernelWork::Inline { flagged } => {
                if *flagged && queued == 0 && !work && !overflow {
                    return Ok(0);
                }
                ring.submit()
            }
        }
    }
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain system call; a descriptor it returns is ours alone.
    #[allow(unsafe_code)]
    unsafe {
        let fd = libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::{opcode, types};

    const POLLED: u64 = 7;

    /// A pipe, and a poll for its read end queued on `ring`.
    fn polled_pipe(ring: &mut IoUring) -> [OwnedFd; 2] {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
        #[allow(unsafe_code)]
        let pipe = unsafe {
            assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), 0);
            fds.map(|fd| OwnedFd::from_raw_fd(fd))
        };
        let poll = opcode::PollAdd::new(types::Fd(pipe[0].as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(POLLED);
        // SAFETY: the poll points at no memory; the pipe outlives the ring in each test.
        #[allow(unsafe_code)]
        unsafe {
            ring.submission().push(&poll).unwrap();
        }
        pipe
    }

    fn write_byte(fd: &OwnedFd) {
        // SAFETY: one byte from a live buffer.
        #[allow(unsafe_code)]
        let n = unsafe { libc::write(fd.as_raw_fd(), b"x".as_ptr().cast(), 1) };
        assert_eq!(n, 1);
    }

    fn readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        #[allow(unsafe_code)]
        let n = unsafe { libc::poll(&mut p, 1, 2000) };
        n == 1
    }

    /// What the loop relies on: deferred work waits for an enter of a drained loop, flags
    /// itself in the submission queue and signals the eventfd, which the loop polls.
    #[test]
    fn deferred_work_runs_only_when_the_loop_asks_and_signals_the_eventfd() {
        let (mut ring, work) = build(4096, true).unwrap();
        let KernelWork::Deferred(eventfd) = &work else {
            panic!("no DEFER_TASKRUN here (Linux 6.1+)");
        };
        let pipe = polled_pipe(&mut ring);
        assert_eq!(work.enter(&mut ring, false).unwrap(), 1);
        assert!(ring.completion().is_empty());
        let signals = {
            let mut n = 0u64;
            // SAFETY: reads 8 bytes into `n` (the eventfd starts at 0, so this fails
            // with EAGAIN, and is only a check that nothing was signalled yet).
            #[allow(unsafe_code)]
            let r = unsafe { libc::read(eventfd.as_raw_fd(), (&raw mut n).cast(), 8) };
            r
        };
        assert_eq!(signals, -1, "the eventfd was signalled before any work");
        write_byte(&pipe[1]);
        assert!(
            readable(work.wakes(&ring)),
            "no eventfd signal for deferred work"
        );
        assert!(work.deferred(&mut ring));
        // Neither a system call nor an enter of a loop that is still busy runs it.
        assert_eq!(work.enter(&mut ring, false).unwrap(), 0);
        assert!(ring.completion().is_empty());
        work.enter(&mut ring, true).unwrap();
        let cqe = ring.completion().next().expect("the poll's completion");
        assert_eq!(cqe.user_data(), POLLED);
        assert!(!work.deferred(&mut ring));
    }

    /// Without DEFER_TASKRUN (kernels before 6.1) the loop still gets its completions.
    #[test]
    fn inline_work_completes_too() {
        let (mut ring, work) = build(4096, false).unwrap();
        assert!(matches!(work, KernelWork::Inline { flagged: true }));
        assert_eq!(work.wakes(&ring), ring.as_raw_fd());
        let pipe = polled_pipe(&mut ring);
        work.enter(&mut ring, true).unwrap();
        write_byte(&pipe[1]);
        work.enter(&mut ring, true).unwrap();
        let cqe = ring.completion().next().expect("the poll's completion");
        assert_eq!(cqe.user_data(), POLLED);
    }
}
