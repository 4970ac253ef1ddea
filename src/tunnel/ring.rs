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
//!
//! Some kernels signal that eventfd late: work queued from the network stack has its signal
//! punted to an RCU callback, which runs a grace period later (Linux 6.18.44 here: 4-16 ms
//! per wake, and relayed messages fell to 1-51% of nginx's rate, handshakes to 22%). So the
//! deferred ring is kept only where a byte sent over loopback signals the eventfd before
//! its `send` returns ([`signals_promptly`]); elsewhere the kernel runs the work inline.

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

/// A ring with DEFER_TASKRUN, SINGLE_ISSUER and TASKRUN_FLAG and an eventfd (where `defer`
/// is true, or None and the kernel signals that eventfd promptly); else one with
/// COOP_TASKRUN instead (no interrupt to run completion work: it runs when the thread next
/// enters the kernel); else a plain one. Must be built on the thread that runs the loop.
pub(super) fn build(cq_entries: u32, defer: Option<bool>) -> io::Result<(IoUring, KernelWork)> {
    if defer != Some(false)
        && let Some((mut ring, eventfd)) = deferred(cq_entries)
    {
        if defer == Some(true) {
            return Ok((ring, KernelWork::Deferred(eventfd)));
        }
        match signals_promptly(&mut ring, &eventfd) {
            Ok(true) => return Ok((ring, KernelWork::Deferred(eventfd))),
            Ok(false) => LATE_SIGNAL.call_once(|| {
                tracing::warn!(
                    "this kernel signals io_uring's eventfd late for deferred completion work (a loopback byte's signal came after its send returned, {PROBES} times in a row), so the tunnels' rings run that work inline (COOP_TASKRUN) and receive once per read: a loop asleep on that signal would wait a grace period per wake (`limits.defer_taskrun = true` defers it anyway)"
                );
            }),
            Err(e) => LATE_SIGNAL.call_once(|| {
                tracing::warn!(
                    "could not check how this kernel signals io_uring's eventfd ({e}); the tunnels' rings run completion work inline (COOP_TASKRUN)"
                );
            }),
        }
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

/// A ring with DEFER_TASKRUN, SINGLE_ISSUER and TASKRUN_FLAG, and the eventfd registered
/// with it; None where the kernel has no DEFER_TASKRUN (before 6.1).
fn deferred(cq_entries: u32) -> Option<(IoUring, OwnedFd)> {
    let ring = IoUring::builder()
        .setup_cqsize(cq_entries)
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .build(SQ_ENTRIES)
        .ok()?;
    let eventfd = eventfd().ok()?;
    ring.submitter()
        .register_eventfd(eventfd.as_raw_fd())
        .ok()?;
    Some((ring, eventfd))
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

/// How many loopback bytes [`signals_promptly`] sends before it calls the signal late: one
/// prompt signal is proof enough, and a late one can be bad luck (the stack's receive work
/// handed to ksoftirqd), never the norm.
const PROBES: usize = 3;
/// The probe's poll; the probe reaps it before the ring carries anything else.
const PROBE: u64 = u64::MAX;
static LATE_SIGNAL: std::sync::Once = std::sync::Once::new();

/// Whether the kernel signals `eventfd` for deferred work before the system call that made
/// the work returns: a poll on one end of a loopback TCP connection is armed on `ring`, this
/// thread sends a byte from the other end (the stack delivers it, and queues the poll's
/// work, inside that `send`), and the eventfd must be readable right after. Leaves the ring
/// as it found it.
fn signals_promptly(ring: &mut IoUring, eventfd: &OwnedFd) -> io::Result<bool> {
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpListener, TcpStream};

    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let mut client = TcpStream::connect(listener.local_addr()?)?;
    let (mut server, _) = listener.accept()?;
    for _ in 0..PROBES {
        let poll = io_uring::opcode::PollAdd::new(
            io_uring::types::Fd(server.as_raw_fd()),
            libc::POLLIN as u32,
        )
        .build()
        .user_data(PROBE);
        // SAFETY: the poll points at no memory; the socket outlives it, as the poll
        // completes (below) before this function returns.
        #[allow(unsafe_code)]
        unsafe {
            ring.submission()
                .push(&poll)
                .map_err(|_| io::Error::other("a new ring's submission queue is full"))?;
        }
        ring.submit()?;
        let mut count = [0u8; 8];
        // SAFETY: reads the 8-byte count into `count`, resetting it to 0; EAGAIN (it was 0
        // already) is as good.
        #[allow(unsafe_code)]
        unsafe {
            libc::read(eventfd.as_raw_fd(), count.as_mut_ptr().cast(), 8);
        }
        client.write_all(b"x")?;
        let prompt = readable_within(eventfd.as_raw_fd(), 0);
        ring.submit_and_wait(1)?;
        let reaped = ring.completion().any(|cqe| cqe.user_data() == PROBE);
        if !reaped {
            return Err(io::Error::other("the probe's poll did not complete"));
        }
        server.read_exact(&mut [0u8; 1])?;
        if prompt {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `fd` is readable within `ms` milliseconds (0: at this instant).
fn readable_within(fd: RawFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    #[allow(unsafe_code)]
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n == 1
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

    /// What the loop relies on: deferred work waits for an enter of a drained loop, flags
    /// itself in the submission queue and signals the eventfd, which the loop polls.
    #[test]
    fn deferred_work_runs_only_when_the_loop_asks_and_signals_the_eventfd() {
        let (mut ring, eventfd) = deferred(4096).expect("no DEFER_TASKRUN here (Linux 6.1+)");
        let eventfd_fd = eventfd.as_raw_fd();
        let work = KernelWork::Deferred(eventfd);
        let pipe = polled_pipe(&mut ring);
        assert_eq!(work.enter(&mut ring, false).unwrap(), 1);
        assert!(ring.completion().is_empty());
        let signals = {
            let mut n = 0u64;
            // SAFETY: reads 8 bytes into `n` (the eventfd starts at 0, so this fails
            // with EAGAIN, and is only a check that nothing was signalled yet).
            #[allow(unsafe_code)]
            let r = unsafe { libc::read(eventfd_fd, (&raw mut n).cast(), 8) };
            r
        };
        assert_eq!(signals, -1, "the eventfd was signalled before any work");
        write_byte(&pipe[1]);
        assert!(
            readable_within(work.wakes(&ring), 2000),
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

    /// The probe reaps what it submitted, and a deferred ring is only ever handed out where
    /// a loopback byte signals the eventfd before its send returns: the loop sleeps on that
    /// signal, and a late one costs every wake its delay.
    #[test]
    fn a_deferred_ring_is_one_whose_eventfd_is_signalled_promptly() {
        let (mut ring, eventfd) = deferred(4096).expect("no DEFER_TASKRUN here (Linux 6.1+)");
        signals_promptly(&mut ring, &eventfd).unwrap();
        assert!(ring.completion().is_empty());
        assert!(ring.submission().is_empty());
        assert!(!ring.submission().taskrun());
        let (mut ring, work) = build(4096, None).unwrap();
        match &work {
            KernelWork::Deferred(eventfd) => assert!(
                signals_promptly(&mut ring, eventfd).unwrap(),
                "a deferred ring whose eventfd is signalled late"
            ),
            KernelWork::Inline { flagged } => assert!(flagged),
        }
    }

    /// Without DEFER_TASKRUN (kernels before 6.1) the loop still gets its completions.
    #[test]
    fn inline_work_completes_too() {
        let (mut ring, work) = build(4096, Some(false)).unwrap();
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
