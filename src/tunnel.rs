//! Every open tunnel of one worker, relayed by one task over the worker's io_uring ring, whose
//! loop also carries the handshake side's operations ([`crate::uring::op`]). A tunnel is one
//! slab entry (its two descriptors, where each direction stands, its byte counts): no task,
//! future or waker per tunnel, so an idle upgraded connection costs a few hundred bytes, and completions are handled in batches straight
//! off the completion queue. Receives take kernel-selected buffers from a ring-mapped buffer
//! ring (IORING_REGISTER_PBUF_RING): a waiting receive consumes no buffer, one is taken when
//! bytes arrive and handed back with one store once they are written on, so an idle tunnel
//! pins no buffer. When the ring is empty, a direction waits for readiness without a buffer
//! and then borrows a heap buffer for the one read that is sure to find bytes.
//!
//! A ring buffer is never held while waiting for a reader: received bytes are sent without
//! waiting, and whatever the reader's socket cannot take at once is copied to a heap buffer
//! that waits instead. So readers that stop reading cannot drain the ring that every other
//! tunnel of the worker reads into.
//!
//! Each direction is in one `State`, and every state but `Done` is exactly one operation in
//! flight (a receive, a send, or a readiness poll), so bytes keep their order. Timeouts and
//! errors shut the sockets down, which completes whatever is pending; a tunnel's descriptors
//! are closed only once both directions are `Done`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::observe::metrics::WorkerMetrics;
use crate::uring::op;

mod buffers;
mod direction;
mod files;
mod handoff;
mod queue;
mod report;
mod ring;
mod splice;
#[cfg(test)]
mod testing;
mod tls;

pub use handoff::{Detached, DetachedDirection, fields};
pub use report::{End, RelayError, Report, Side};

use crate::tls::record::{MAX_OVERHEAD, MAX_PREFIX, MAX_RECORD, TunnelTls};
use buffers::{BufferRing, Spill};
use direction::{Direction, State};
use tls::TlsTunnel;

/// Completion queue bounds. It is sized for every operation a worker may have in flight
/// (four per tunnel: a receive and a send each way, up to `limits.max_connections`
/// tunnels, as far as the kernel's 65,536 allows), so completions do not spill into the
/// kernel's slower overflow list (where none is lost either) even when every tunnel ends
/// at once.
const CQ_MIN: u32 = 4096;
const CQ_MAX: u32 = 65536;
/// Completions one turn of the loop handles before it lets the worker's other tasks (accepts,
/// handshakes) run: under steady load the completion queue never runs empty.
const TURN_BUDGET: usize = 1024;
/// How long the loop waits before retrying a submission the kernel refused.
const SUBMIT_RETRY: Duration = Duration::from_millis(1);

/// How a worker's tunnels receive.
#[derive(Debug, Clone, Copy)]
pub struct Receive {
    /// Capped multishot receives (`limits.multishot_receive`), where the kernel has them
    /// and the ring defers its completion work.
    pub multishot: bool,
    /// `limits.defer_taskrun`: None defers where the kernel signals deferred work promptly
    /// (see `ring`).
    pub defer: Option<bool>,
}

/// The tunnels of one worker. `P` is what the owner wants back when a tunnel ends.
pub struct Tunnels<P> {
    engine: RefCell<Engine<P>>,
    /// The parked loop, for `wake_loop`.
    parked: Cell<Option<Waker>>,
    /// Entries were queued from outside the loop (see `wake_loop`).
    queued: Cell<bool>,
}

struct Engine<P> {
    ring: IoUring,
    /// Plain directions receive with a multishot receive (cleared if the kernel refuses it).
    multishot: bool,
    /// When the kernel runs completion work (see `ring`).
    work: ring::KernelWork,
    /// The tunnels' slots in the ring's file table.
    files: files::Files,
    buffers: Option<BufferRing>,
    spill: Spill,
    slab: Vec<Option<Tunnel<P>>>,
    free: Vec<u32>,
    ended: Vec<(P, Report)>,
    /// Tunnels are being handed to another process (see `handoff`).
    detaching: bool,
    detached: Vec<Detached<P>>,
    cqes: Vec<cqueue::Entry>,
    /// The handshake side's entries, on their way into the submission queue (see
    /// [`crate::uring::op`]).
    handshakes: Vec<squeue::Entry>,
    /// Entries the submission queue had no room for while the kernel refused to take any.
    backlog: VecDeque<squeue::Entry>,
    /// Pipes this worker may still open for spliced directions (their descriptors come out
    /// of the open-files headroom left over `limits.max_connections`).
    pipes_left: usize,
    metrics: Arc<WorkerMetrics>,
}

struct Tunnel<P> {
    /// [client, upstream].
    fds: [OwnedFd; 2],
    /// [client->upstream, upstream->client]; direction `d` reads `fds[d]`, writes the other.
    dirs: [Direction; 2],
    /// Bytes were read since the idle sweep last looked.
    active: bool,
    /// Idle sweeps in a row that found no bytes read.
    quiet: u8,
    aborted: bool,
    idled: bool,
    /// Never detached: resumed here after a handoff ended, to drain.
    stays: bool,
    /// Boxed: errors are rare, and an idle tunnel's entry stays 8 bytes smaller.
    error: Option<Box<RelayError>>,
    /// A `wss://` tunnel's record layer; `None` for plain ones.
    tls: Option<Box<TlsTunnel>>,
    payload: P,
}

impl<P> Tunnels<P> {
    /// Bytes of a tunnel's table entry with payload `P`: what an idle tunnel costs besides
    /// its sockets and kernel buffers.
    pub const ENTRY_SIZE: usize = std::mem::size_of::<Option<Tunnel<P>>>();

    /// A ring of its own with `count` receive buffers of `size` bytes. Without ring-mapped
    /// buffers (kernels before 5.19) every read borrows a heap buffer instead.
    /// Up to `pipes` directions at a time may splice.
    /// `max_connections`: tunnels this worker may have open at most (for the queue sizes);
    /// `metrics`: this worker's counters, `worker` its id (for logs). `multishot`: plain
    /// tunnels receive with capped multishot receives where the kernel has them (6.17+).
    pub fn new(
        worker: usize,
        metrics: Arc<WorkerMetrics>,
        max_connections: usize,
        size: u32,
        count: u16,
        pipes: usize,
        receive: Receive,
    ) -> io::Result<Self> {
        // Each direction: its multishot receive, and a send.
        let in_flight = 4 * max_connections;
        let cq = u32::try_from(in_flight.next_power_of_two())
            .unwrap_or(CQ_MAX)
            .clamp(CQ_MIN, CQ_MAX);
        let (ring, work) = ring::build(cq, receive.defer)?;
        let files = files::Files::register(&ring, max_connections);
        let buffers = match BufferRing::register(&ring, size, count) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(
                    "worker {worker}: no kernel-selected buffers ({e}); tunnels read into heap buffers"
                );
                None
            }
        };
        Ok(Tunnels {
            engine: RefCell::new(Engine {
                ring,
                // Multishot receives need the loop to say when the kernel may post more
                // (see `ring`): inline work would queue one completion per message behind
                // a loop that fell behind.
                multishot: receive.multishot
                    && matches!(work, ring::KernelWork::Deferred(_))
                    && crate::os::kernel::at_least(
                        direction::MULTISHOT_KERNEL.0,
                        direction::MULTISHOT_KERNEL.1,
                    ),
                work,
                files,
                buffers,
                // Heap buffers also hold a whole TLS record, or one sealed with its prefix.
                // Up to as many kept as the ring has buffers: what the worker keeps at its
                // busiest is then at most what its ring holds anyway.
                spill: Spill::new(
                    (size as usize)
                        .max(MAX_RECORD)
                        .max(MAX_PREFIX + size as usize + MAX_OVERHEAD),
                    usize::from(count),
                ),
                // Reserved up front: address space only until tunnels fill it, and no
                // reallocation (a copy, and a freed block) while connections pile in.
                slab: Vec::with_capacity(max_connections),
                free: Vec::new(),
                ended: Vec::new(),
                detaching: false,
                detached: Vec::new(),
                cqes: Vec::with_capacity(256),
                handshakes: Vec::new(),
                pipes_left: pipes,
                metrics,
                backlog: VecDeque::new(),
            }),
            parked: Cell::new(None),
            queued: Cell::new(false),
        })
    }

    /// Starts relaying between `[client, upstream]` until both directions end. `early`:
    /// bytes already relayed each way with the heads, counted in the report.
    /// `tls`: for a client that spoke TLS, its record layer and the start of a record that
    /// came with the request phase's last read. Its first entries are submitted by the
    /// loop's next turn.
    pub fn open(
        &self,
        fds: [OwnedFd; 2],
        early: [u64; 2],
        tls: Option<(Box<TunnelTls>, Vec<u8>)>,
        payload: P,
    ) {
        let mut engine = self.engine.borrow_mut();
        let [up, down] = early;
        let tunnel = Tunnel {
            fds,
            dirs: [Direction::new(up), Direction::new(down)],
            // Opening counts as activity: the first sweep must not find it already quiet.
            active: true,
            quiet: 0,
            aborted: false,
            idled: false,
            stays: false,
            error: None,
            tls: None,
            payload,
        };
        let (tls, tail) = match tls {
            Some((records, tail)) => {
                let state = TlsTunnel {
                    records,
                    carry: None,
                    peer_closed: false,
                    closing: false,
                };
                (Some(Box::new(state)), tail)
            }
            None => (None, Vec::new()),
        };
        let tunnel = Tunnel { tls, ..tunnel };
        let index = engine.insert(tunnel);
        if engine.parks(index) {
            // Handing over: it leaves as it is, nothing read yet.
            let tunnel = engine.tunnel(index);
            tunnel.dirs[0].state = State::Parked;
            tunnel.dirs[1].state = State::Parked;
            engine.detach(index);
            drop(engine);
            return self.wake_loop();
        }
        if engine.is_tls(index) {
            engine.carry_in(index, &tail);
            engine.read_client_tls(index);
        } else {
            engine.read(index, 0);
        }
        engine.read(index, 1);
        drop(engine);
        self.wake_loop();
    }

    /// Lets the loop submit what was queued from outside it (the entries of every tunnel
    /// opened before the loop runs again go in with one enter, with the loop's own) and
    /// hand on what was detached.
    fn wake_loop(&self) {
        self.queued.set(true);
        if let Some(loop_task) = self.parked.take() {
            loop_task.wake();
        }
    }

    /// Whether plain tunnels receive with multishot receives (asked for, Linux 6.17+).
    pub fn multishot(&self) -> bool {
        self.engine.borrow().multishot
    }

    /// Whether the kernel runs the ring's completion work only when the loop asks (see
    /// `ring`).
    pub fn deferred(&self) -> bool {
        matches!(self.engine.borrow().work, ring::KernelWork::Deferred(_))
    }

    /// Tunnels open now.
    pub fn len(&self) -> usize {
        let engine = self.engine.borrow();
        engine.slab.len() - engine.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The relay loop: handles completions, hands each ended tunnel's payload and report to
    /// `on_end` and each tunnel detached for a handoff to `on_detach`, and sleeps in between
    /// until the kernel has work for it (the ring's eventfd, or the ring itself, polled by the
    /// runtime's epoll) or the handshake side queued entries. Runs for the worker's life.
    pub async fn run(
        self: Rc<Self>,
        mut on_end: impl FnMut(P, Report),
        mut on_detach: impl FnMut(Detached<P>),
    ) -> io::Result<()> {
        let ring = {
            let engine = self.engine.borrow();
            RingFd(engine.work.wakes(&engine.ring))
        };
        // SAFETY: the descriptor (the ring's or its eventfd) stays open as long as `self`,
        // which this loop holds.
        #[allow(unsafe_code)]
        let ready = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE)? };
        let mut ended = Vec::new();
        let mut detached = Vec::new();
        loop {
            let turn = {
                let mut engine = self.engine.borrow_mut();
                let turn = engine.turn();
                std::mem::swap(&mut ended, &mut engine.ended);
                std::mem::swap(&mut detached, &mut engine.detached);
                turn
            };
            for (payload, report) in ended.drain(..) {
                on_end(payload, report);
            }
            for tunnel in detached.drain(..) {
                on_detach(tunnel);
            }
            match turn {
                // Readiness is cleared before the next turn looks, so a completion that
                // arrives after that look wakes the loop again.
                Turn::Drained => {
                    std::future::poll_fn(|cx| {
                        self.parked.set(Some(cx.waker().clone()));
                        if op::park(cx.waker()) {
                            return Poll::Ready(Ok(()));
                        }
                        // Entries queued by `open` wait for the loop to submit them; a
                        // tunnel opened while detaching leaves without an operation. No
                        // completion would wake the loop for either.
                        if self.queued.replace(false) || !self.engine.borrow().detached.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        match ready.poll_read_ready(cx) {
                            Poll::Ready(Ok(mut guard)) => {
                                guard.clear_ready();
                                Poll::Ready(Ok(()))
                            }
                            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                            Poll::Pending => Poll::Pending,
                        }
                    })
                    .await?;
                    self.parked.set(None);
                }
                Turn::Budget => tokio::task::yield_now().await,
                Turn::Stalled => tokio::time::sleep(SUBMIT_RETRY).await,
            }
        }
    }

    /// Closes tunnels in which no bytes were read for `idle` (checked four times per period,
    /// so a quiet tunnel ends between 1 and 1.25 x `idle` after its last read, or after it
    /// opened). Runs for the worker's life.
    pub async fn sweep_idle(self: Rc<Self>, idle: Duration) {
        let tick = idle / 4;
        loop {
            tokio::time::sleep(tick).await;
            let mut engine = self.engine.borrow_mut();
            for tunnel in engine.slab.iter_mut().flatten() {
                if std::mem::take(&mut tunnel.active) {
                    tunnel.quiet = 0;
                    continue;
                }
                tunnel.quiet = tunnel.quiet.saturating_add(1);
                if tunnel.quiet >= 4 && !tunnel.aborted {
                    tunnel.idled = true;
                    tunnel.abort();
                }
            }
        }
    }
}

impl<P> Engine<P> {
    /// Submits what is queued and handles completions until none is left, the turn's budget
    /// is spent, or the kernel refuses submissions. The kernel runs the completion work it
    /// deferred only once every completion it posted is handled (see `ring`).
    fn turn(&mut self) -> Turn {
        let mut handled = 0;
        loop {
            self.refill_from_backlog();
            self.take_handshakes();
            let drained = self.ring.completion().is_empty();
            if let Err(e) = self.work.enter(&mut self.ring, drained) {
                tracing::error!("tunnel ring submit failed (retrying): {e}");
                return Turn::Stalled;
            }
            self.cqes.clear();
            let room = TURN_BUDGET - handled;
            self.cqes.extend(self.ring.completion().take(room));
            if self.cqes.is_empty() {
                if self.backlog.is_empty() && !self.work.deferred(&mut self.ring) {
                    return Turn::Drained;
                }
                // Work that posts nothing (a poll that found its socket empty again) still
                // counts towards the budget.
                handled += 1;
                if handled >= TURN_BUDGET {
                    return Turn::Budget;
                }
                continue;
            }
            for i in 0..self.cqes.len() {
                let cqe = self.cqes[i].clone();
                match cqe.user_data() {
                    handoff::CANCEL => {}
                    files::UPDATED if cqe.result() < 0 => {
                        let e = io::Error::from_raw_os_error(-cqe.result());
                        tracing::warn!("tunnel file table update failed: {e}");
                    }
                    files::UPDATED => {}
                    CLOSED if cqe.result() < 0 => {
                        let e = io::Error::from_raw_os_error(-cqe.result());
                        tracing::warn!("closing a tunnel socket failed: {e}");
                    }
                    CLOSED => {}
                    data if data & op::TAG != 0 => op::complete(&cqe),
                    _ => self.complete(&cqe),
                }
            }
            handled += self.cqes.len();
            if handled >= TURN_BUDGET {
                return Turn::Budget;
            }
        }
    }

    /// Moves entries that found the submission queue full into it, oldest first, as far as
    /// they fit.
    fn refill_from_backlog(&mut self) {
        while let Some(sqe) = self.backlog.front() {
            // SAFETY: every backlog entry was built by `enter`, whose state still holds what
            // it points at, or came through `op::submit` (see `push`).
            #[allow(unsafe_code)]
            if !unsafe { push_sqe(&mut self.ring, sqe) } {
                return;
            }
            self.backlog.pop_front();
        }
    }

    /// Queues the entries the handshake side started since the last turn.
    fn take_handshakes(&mut self) {
        op::queued_into(&mut self.handshakes);
        let mut entries = std::mem::take(&mut self.handshakes);
        for sqe in entries.drain(..) {
            self.push(sqe);
        }
        self.handshakes = entries;
    }

    /// Submits what is queued, outside the loop's turn (see `ring`).
    fn submit(&mut self) -> io::Result<usize> {
        self.work.enter(&mut self.ring, false)
    }

    /// Queues an entry built by `enter`; when the queue is full, submits it first, and keeps
    /// the entry for `turn` if the kernel takes none. Entries reach the kernel in the order
    /// they were pushed (a cancellation after what it cancels).
    fn push(&mut self, sqe: squeue::Entry) {
        // SAFETY: `enter` built the entry from the state it stored, which holds the buffer
        // (ring memory is never freed, a spill buffer stays lent to the state) until this
        // completion is handled; the descriptors stay open until both directions are `Done`.
        // A handshake's entry keeps what it points at alive by `op::submit`'s contract.
        #[allow(unsafe_code)]
        if self.backlog.is_empty() && unsafe { push_sqe(&mut self.ring, &sqe) } {
            return;
        }
        let _ = self.submit();
        self.refill_from_backlog();
        // SAFETY: as above.
        #[allow(unsafe_code)]
        if !self.backlog.is_empty() || !unsafe { push_sqe(&mut self.ring, &sqe) } {
            self.backlog.push_back(sqe);
        }
    }

    fn tunnel(&mut self, index: u32) -> &mut Tunnel<P> {
        self.slab[index as usize]
            .as_mut()
            .expect("completion for a closed tunnel")
    }

    /// Finishes tunnel `index` once both directions are over, or hands it over once both
    /// rest (see `handoff`).
    fn finish_if_done(&mut self, index: u32) {
        let tunnel = self.tunnel(index);
        let [a, b] = &tunnel.dirs;
        if a.is_done() && b.is_done() {
            self.finish(index);
        } else if a.rests() && b.rests() {
            if tunnel.aborted {
                self.finish(index);
            } else {
                self.detach(index);
            }
        }
    }

    /// Both directions are over and nothing is in flight: close and report.
    fn finish(&mut self, index: u32) {
        let mut tunnel = self.slab[index as usize].take().expect("open tunnel");
        self.free.push(index);
        self.clear_slots(index);
        if let Some((spill, _)) = tunnel.tls.as_ref().and_then(|t| t.carry) {
            self.spill.put(spill);
        }
        self.pipes_left += tunnel.dirs.iter().filter(|d| d.pipe.is_some()).count();
        for dir in &mut tunnel.dirs {
            if let State::ParkedHeap { spill, .. } = dir.state {
                self.spill.put(spill);
            }
            dir.queue.clear(&mut self.spill);
        }
        let end = if tunnel.idled {
            End::Idle
        } else if let Some(e) = tunnel.error {
            let e = *e;
            End::Error(e)
        } else {
            End::Closed
        };
        let report = Report {
            client_to_upstream: tunnel.dirs[0].bytes,
            upstream_to_client: tunnel.dirs[1].bytes,
            end,
        };
        for fd in tunnel.fds {
            self.close(fd);
        }
        self.ended.push((tunnel.payload, report));
    }

    /// Closes `fd` with the ring's next enter rather than a system call of its own (sockets
    /// have no flush, so the kernel closes them inline), after the entries queued before,
    /// the file-table update that lets go of its slot included.
    fn close(&mut self, fd: OwnedFd) {
        let sqe = opcode::Close::new(types::Fd(fd.into_raw_fd())).build();
        self.push(sqe.user_data(CLOSED));
    }
}

/// Queues `sqe` on `ring`'s submission queue; `false` if the queue is full. Every entry of
/// the tunnels' ring goes through here.
///
/// # Safety
/// Until the entry's completion is reaped, the memory it points at (a receive's or send's
/// buffer) must stay allocated and untouched by anything else, and its descriptor must
/// stay open (or at least not be reused).
#[allow(unsafe_code)]
unsafe fn push_sqe(ring: &mut IoUring, sqe: &squeue::Entry) -> bool {
    // SAFETY: the caller keeps what the entry points at valid until its completion.
    unsafe { ring.submission().push(sqe) }.is_ok()
}

impl<P> Tunnel<P> {
    /// An error on either side ends both directions.
    fn fail(&mut self, side: Side, source: io::Error) {
        self.error = Some(Box::new(RelayError { side, source }));
        self.abort();
    }

    /// Shuts both sockets down both ways, which completes every pending operation on them.
    fn abort(&mut self) {
        self.aborted = true;
        for fd in &self.fds {
            let _ = SockRef::from(fd).shutdown(Shutdown::Both);
        }
    }
}

/// How a turn of the loop ended.
enum Turn {
    /// No completion left: sleep until the ring has one.
    Drained,
    /// The budget is spent: let the worker's other tasks run, then go on.
    Budget,
    /// The kernel took no submissions: retry shortly.
    Stalled,
}

#[cfg(test)]
impl<P> Tunnels<P> {
    /// Sockets in the ring's file table, from the kernel's own listing of its slots.
    #[allow(clippy::disallowed_methods)] // a small /proc read in a test
    fn registered(&self) -> usize {
        let fd = self.engine.borrow().ring.as_raw_fd();
        std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            .unwrap()
            .lines()
            .filter(|line| line.starts_with(' ') && line.contains("socket:["))
            .count()
    }
}

impl<P> std::fmt::Debug for Tunnels<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnels")
            .field("open", &self.len())
            .finish()
    }
}

fn side_of(d: usize) -> Side {
    if d == 0 { Side::Client } else { Side::Upstream }
}

/// A completion names its tunnel and direction, and whether it is the direction's multishot
/// receive ([`RECV`]); otherwise the direction's state says which operation it was.
fn user_data(index: u32, d: usize) -> u64 {
    (u64::from(index) << 2) | d as u64
}

/// The bit of a multishot receive's `user_data`.
const RECV: u64 = 2;
/// The user data of a close (see `Engine::close`), which no direction waits for.
const CLOSED: u64 = handoff::CANCEL | 2;

fn parse_user_data(data: u64) -> (u32, usize) {
    ((data >> 2) as u32, (data & 1) as usize)
}

/// `sqe` with the 4-byte field at byte `offset` of its `io_uring_sqe` set to `value`: for
/// the fields io-uring 0.6 has no setter for.
fn with_field(sqe: squeue::Entry, offset: usize, value: u32) -> squeue::Entry {
    // SAFETY: `squeue::Entry` is a `repr(C)` wrapper of the 64-byte `io_uring_sqe` (the
    // transmutes check the size), plain bytes with no invalid values either way.
    #[allow(unsafe_code)]
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(sqe) };
    raw[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    // SAFETY: as above.
    #[allow(unsafe_code)]
    unsafe {
        std::mem::transmute(raw)
    }
}

/// The descriptor that wakes the loop, for the runtime's epoll.
struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        for (index, d) in [(0, 0), (0, 1), (7, 1), (u32::MAX, 0), (u32::MAX, 1)] {
            assert_eq!(parse_user_data(user_data(index, d)), (index, d));
            assert_eq!(parse_user_data(user_data(index, d) | RECV), (index, d));
            assert_ne!(user_data(index, d) | RECV, handoff::CANCEL);
            assert_ne!(user_data(index, d) | RECV, CLOSED);
        }
    }
}
