//! One relay direction of a tunnel as an explicit state machine: each [`State`] is one
//! operation in flight and the buffer it holds, [`Engine::enter`] is the only place an
//! operation is submitted, and [`Engine::complete`] moves a direction on from whatever
//! state its completion finds it in.
//!
//! A plain direction receives with one multishot receive (IORING_RECV_MULTISHOT): armed
//! once, it completes every time bytes arrive, with no new entry and no poll re-armed per
//! message. It runs beside the state's operation ([`Direction::recv`]): bytes it delivers
//! while nothing is being sent are sent at once; bytes it delivers while a send is in
//! flight queue behind it ([`Queue`]). Each is capped at [`RECV_CAP`] bytes in all
//! (IORING_RECV_MSHOT_LIM, Linux 6.17) and armed again only once everything it delivered
//! is sent, so a reader slower than its writer makes the worker hold at most that much
//! more than a one-shot receive would: a cancellation would come too late, after the kernel
//! had read on for as long as the socket had bytes. A piece cut short by its ring buffer's
//! end or by the cap while bytes still wait in the socket (IORING_CQE_F_SOCK_NONEMPTY) is
//! queued until the rest comes, up to one heap buffer: bytes that arrived together leave
//! in one send, not two (a TCP segment and a wake of the reader fewer). `wss://` tunnels,
//! and older kernels (where the cap would be ignored), use one receive per read.

use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;

use io_uring::types::Fd;
use io_uring::{cqueue, opcode, squeue};
use socket2::SockRef;

use super::buffers::GROUP;
use super::files::on_slot;
use super::handoff::CANCEL;
use super::queue::Queue;
use super::splice::Pipe;
use super::{Engine, RECV, parse_user_data, side_of, user_data, with_field};

/// Reads of at least this many bytes in a row count towards switching a direction to
/// splice (see `splice::BULK_STREAK`).
const BULK_READ: u32 = 4096;
/// Bytes one multishot receive delivers at most: one relay buffer's worth. Message traffic
/// arms one per this many bytes; bulk traffic turns to splice.
const RECV_CAP: u32 = 16 * 1024;
/// The first kernel that caps a multishot receive's bytes (`sqe->optlen`).
pub(super) const MULTISHOT_KERNEL: (u32, u32) = (6, 17);

/// One direction of a tunnel: where it stands and what it has moved.
pub(super) struct Direction {
    pub(super) state: State,
    pub(super) bytes: u64,
    /// Bytes of the current run of reads of at least [`BULK_READ`].
    pub(super) streak: u32,
    /// Set once the direction moves its bytes with splice(2) through this pipe; kept while
    /// a buffered read gets a spliced source past urgent data.
    pub(super) pipe: Option<Box<Pipe>>,
    /// Where the direction's multishot receive stands.
    pub(super) recv: Recv,
    /// Bytes the multishot receive delivered while a send was in flight, to send next.
    pub(super) queue: Queue,
}

/// A direction's multishot receive, which runs beside its state's operation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Recv {
    /// None in flight.
    Off,
    Armed,
    /// Cancelled (the direction turns to splice, or a handoff), and its last completion
    /// not yet in.
    Stopping,
}

/// Where one direction stands. Each state but `Done` is one operation in flight, the one
/// [`Engine::enter`] submits for it, and holds the buffer that operation uses, so a
/// direction can have neither two operations nor a buffer without its operation.
pub(super) enum State {
    /// Nothing in flight but the direction's multishot receive ([`Recv::Armed`] or
    /// [`Recv::Stopping`]); what it delivers is sent at once.
    Streaming,
    /// A receive into a buffer the kernel picks when bytes arrive. `polled`: a readiness
    /// poll just found bytes waiting, so if the ring is still empty a heap buffer is borrowed.
    Receiving { polled: bool },
    /// A receive into heap buffer `spill`: bytes are waiting but the ring was empty (or this
    /// kernel has none), or a spliced source is stopped at urgent data.
    /// `at`: bytes already there (the start of a TLS record), which the receive appends to.
    ReceivingHeap { spill: u32, at: u32 },
    /// The ring was empty: a poll for bytes to read, holding no buffer.
    AwaitingReadable,
    /// A send of bytes `sent..len` of ring buffer `id` (offsets in the buffer: a receive's
    /// piece need not start at its start) that does not wait (MSG_DONTWAIT): what the reader
    /// cannot take at once moves to a heap buffer.
    SendingRing { id: u16, len: u32, sent: u32 },
    /// A send of bytes `sent..len` of heap buffer `spill`, waiting for the reader.
    SendingHeap { spill: u32, len: u32, sent: u32 },
    /// Spliced: a poll of the source (`POLLIN`, pipe empty) or of the destination
    /// (`POLLOUT`, pipe not yet written on).
    Spliced { events: libc::c_short },
    /// Nothing in flight, for a handoff: the tunnel leaves once both directions rest.
    Parked,
    /// Parked holding bytes `sent..len` of heap buffer `spill`, read and not yet written on.
    ParkedHeap { spill: u32, len: u32, sent: u32 },
    /// Nothing in flight: the direction ended (end of stream, error, abort), or its
    /// completion is being handled.
    Done,
}

impl State {
    /// Nothing in flight: ended or parked.
    pub(super) fn rests(&self) -> bool {
        matches!(self, State::Done | State::Parked | State::ParkedHeap { .. })
    }
}

impl Direction {
    pub(super) fn new(bytes: u64) -> Self {
        Direction {
            state: State::Done,
            bytes,
            streak: 0,
            pipe: None,
            recv: Recv::Off,
            queue: Queue::EMPTY,
        }
    }

    /// Nothing in flight, the multishot receive included.
    pub(super) fn rests(&self) -> bool {
        self.recv == Recv::Off && self.state.rests()
    }

    /// Ended: nothing in flight and nothing more to read or send.
    pub(super) fn is_done(&self) -> bool {
        self.recv == Recv::Off && matches!(self.state, State::Done)
    }
}

impl<P> Engine<P> {
    /// Puts direction `d` of tunnel `index` in `state` and submits the one operation that
    /// state stands for: the only place tunnel entries are built.
    pub(super) fn enter(&mut self, index: u32, d: usize, state: State) {
        if self.parks(index) {
            return self.park(index, d, state);
        }
        let tunnel = self.slab[index as usize].as_mut().expect("open tunnel");
        let src = tunnel.fds[d].as_raw_fd();
        let dst = tunnel.fds[1 - d].as_raw_fd();
        let mut data = user_data(index, d);
        let sqe = match state {
            State::Streaming => {
                data |= RECV;
                tunnel.dirs[d].recv = Recv::Armed;
                cap_total(opcode::RecvMulti::new(Fd(src), GROUP).build(), RECV_CAP)
            }
            State::Receiving { .. } => {
                let size = self.buffers.as_ref().expect("a buffer ring").size;
                opcode::Recv::new(Fd(src), std::ptr::null_mut(), size)
                    .buf_group(GROUP)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT)
            }
            State::ReceivingHeap { spill, at } => {
                // A TLS tunnel's upstream bytes must fit one record.
                let size = if d == 1 && tunnel.tls.is_some() {
                    crate::tls::record::MAX_PLAIN as u32
                } else {
                    self.spill.size as u32 - at
                };
                // SAFETY: `at < size`: inside heap buffer `spill`.
                #[allow(unsafe_code)]
                let ptr = unsafe { self.spill.start(spill).add(at as usize) };
                opcode::Recv::new(Fd(src), ptr, size).build()
            }
            State::AwaitingReadable => opcode::PollAdd::new(Fd(src), libc::POLLIN as u32).build(),
            State::SendingRing { id, len, sent } => {
                let start = self.buffers.as_ref().expect("a buffer ring").start(id);
                // SAFETY: `sent < len <= size`: inside ring buffer `id`.
                #[allow(unsafe_code)]
                let ptr = unsafe { start.add(sent as usize) };
                opcode::Send::new(Fd(dst), ptr, len - sent)
                    .flags(libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
                    .build()
            }
            State::SendingHeap { spill, len, sent } => {
                // SAFETY: `sent < len <= size`: inside heap buffer `spill`.
                #[allow(unsafe_code)]
                let ptr = unsafe { self.spill.start(spill).add(sent as usize) };
                opcode::Send::new(Fd(dst), ptr, len - sent)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            }
            State::Spliced { events } => {
                let fd = if events == libc::POLLIN { src } else { dst };
                opcode::PollAdd::new(Fd(fd), events as u32).build()
            }
            State::Done | State::Parked | State::ParkedHeap { .. } => {
                unreachable!("no operation to submit")
            }
        };
        let writes = match state {
            State::SendingRing { .. } | State::SendingHeap { .. } => {
                self.metrics.sends.add(1);
                true
            }
            State::Spliced { events } => events != libc::POLLIN,
            _ => false,
        };
        let side = if writes { 1 - d } else { d };
        let sqe = match self.files.slot(index, side) {
            Some(slot) => on_slot(sqe, slot),
            None => sqe,
        };
        let dir = &mut tunnel.dirs[d];
        debug_assert!(matches!(dir.state, State::Done), "two operations in flight");
        dir.state = state;
        self.push(sqe.user_data(data));
    }

    /// Reads direction `d` next: into buffers the kernel picks when bytes arrive (with a
    /// multishot receive where it can), or into a heap buffer on kernels without buffer
    /// rings.
    pub(super) fn read(&mut self, index: u32, d: usize) {
        if self.buffers.is_none() {
            self.read_into_heap(index, d);
        } else if self.multishot && !self.is_tls(index) {
            self.enter(index, d, State::Streaming);
        } else {
            self.enter(index, d, State::Receiving { polled: false });
        }
    }

    /// Reads direction `d` into a borrowed heap buffer (counted: a ring that keeps running
    /// dry means too few receive buffers).
    pub(super) fn read_into_heap(&mut self, index: u32, d: usize) {
        let spill = self.spill.take();
        self.metrics.heap_reads.add(1);
        self.enter(index, d, State::ReceivingHeap { spill, at: 0 });
    }

    /// Handles one completion: the direction's state says which operation it was and what
    /// it held; the direction enters its next state, or `Done`.
    pub(super) fn complete(&mut self, cqe: &cqueue::Entry) {
        let (index, d) = parse_user_data(cqe.user_data());
        if cqe.user_data() & RECV != 0 {
            return self.streamed(cqe, index, d);
        }
        let res = cqe.result();
        let cancelled = res == -libc::ECANCELED && self.parks(index);
        let tunnel = self.tunnel(index);
        let state = std::mem::replace(&mut tunnel.dirs[d].state, State::Done);
        let aborted = tunnel.aborted;
        if cancelled {
            // Cancelled for a handoff before it did anything: it parks as it stood.
            self.park(index, d, state);
            return self.finish_if_done(index);
        }
        match state {
            State::Receiving { polled } => {
                let id = cqueue::buffer_select(cqe.flags());
                let buffers = self.buffers.as_mut().expect("a buffer ring");
                match id {
                    Some(id) if res > 0 => {
                        let len = res as u32;
                        let at = buffers.received(id, len, cqe.flags());
                        if aborted {
                            buffers.give_back(id);
                        } else {
                            self.received(index, d, len, cqueue::sock_nonempty(cqe.flags()));
                            match (self.is_tls(index), d) {
                                (true, 0) => self.opened_ring(index, id, at, len),
                                (true, _) => self.seal_ring(index, id, at, len),
                                (false, _) => {
                                    let len = at + len;
                                    self.enter(index, d, State::SendingRing { id, len, sent: at });
                                }
                            }
                        }
                    }
                    _ => {
                        // No bytes: the kernel keeps (recycles) a buffer it picked. One it
                        // still names goes back whole where buffers are never shared.
                        if let Some(id) = id
                            && !buffers.incremental
                        {
                            buffers.received(id, 0, 0);
                            buffers.give_back(id);
                        }
                        match res {
                            _ if aborted => {}
                            // ENOBUFS: the ring was empty when the receive was issued. Wait
                            // for bytes without a buffer; once they are there, a heap buffer
                            // is borrowed for that one read if the ring is still empty.
                            e if e == -libc::ENOBUFS && polled => self.read_into_heap(index, d),
                            e if e == -libc::ENOBUFS => {
                                self.enter(index, d, State::AwaitingReadable);
                            }
                            _ => self.read_ended(index, d, res),
                        }
                    }
                }
            }
            State::ReceivingHeap { spill, at } => {
                if res > 0 && !aborted {
                    self.received(index, d, res as u32, cqueue::sock_nonempty(cqe.flags()));
                    let len = res as u32;
                    match (self.is_tls(index), d) {
                        (true, 0) => self.opened_heap(index, spill, at + len),
                        (true, _) => self.seal_heap(index, spill, len),
                        (false, _) => {
                            let state = State::SendingHeap {
                                spill,
                                len,
                                sent: 0,
                            };
                            self.enter(index, d, state);
                        }
                    }
                } else {
                    self.spill.put(spill);
                    if !aborted {
                        self.read_ended(index, d, res);
                    }
                }
            }
            State::AwaitingReadable if aborted => {}
            State::AwaitingReadable if res < 0 => {
                tunnel.fail(side_of(d), io::Error::from_raw_os_error(-res));
            }
            State::AwaitingReadable => self.enter(index, d, State::Receiving { polled: true }),
            State::SendingRing { id, len, sent } => {
                let sent = sent + res.max(0) as u32;
                if !aborted && (res > 0 || res == -libc::EAGAIN) && sent < len {
                    self.spill_rest(index, d, id, sent, len);
                } else {
                    self.buffers.as_mut().expect("a buffer ring").give_back(id);
                    self.sent(index, d, res, aborted);
                }
            }
            State::SendingHeap { spill, len, sent } => {
                let sent = sent + res.max(0) as u32;
                if !aborted && res > 0 && sent < len {
                    self.metrics.spilled_sends.add(1);
                    self.enter(index, d, State::SendingHeap { spill, len, sent });
                } else {
                    self.spill.put(spill);
                    self.sent(index, d, res, aborted);
                }
            }
            State::Spliced { .. } if aborted => {}
            State::Spliced { events } if res < 0 => {
                let waited_on = if events == libc::POLLOUT { 1 - d } else { d };
                tunnel.fail(side_of(waited_on), io::Error::from_raw_os_error(-res));
            }
            State::Spliced { .. } => self.splice(index, d, true),
            State::Streaming | State::Done | State::Parked | State::ParkedHeap { .. } => {
                unreachable!("a completion for a direction with nothing in flight")
            }
        }
        self.finish_if_done(index);
    }

    /// Handles a completion of direction `d`'s multishot receive: its bytes are sent at
    /// once when nothing is being sent, else queued behind the send. Once the receive ends
    /// (no IORING_CQE_F_MORE) with nothing being sent, the direction goes on as after a
    /// one-shot receive; an end of stream that comes while a send is in flight is found
    /// again by the receive that follows the send.
    fn streamed(&mut self, cqe: &cqueue::Entry, index: u32, d: usize) {
        let res = cqe.result();
        let flags = cqe.flags();
        let buffer = self.spill.size;
        let tunnel = self.slab[index as usize]
            .as_mut()
            .expect("completion for a closed tunnel");
        let aborted = tunnel.aborted;
        let dir = &mut tunnel.dirs[d];
        if !cqueue::more(flags) {
            dir.recv = Recv::Off;
        }
        let buffers = self.buffers.as_mut().expect("a buffer ring");
        // Bytes (or an end of stream) still wait in the socket: this piece was cut short
        // (by its ring buffer's end or the receive's cap) and the rest follows at once, so
        // it waits for the rest rather than go out in a send (and a TCP segment) of its own.
        let cut = cqueue::sock_nonempty(flags);
        let streaming = matches!(dir.state, State::Streaming);
        match cqueue::buffer_select(flags) {
            Some(id) if res > 0 => {
                let len = res as u32;
                let at = buffers.received(id, len, flags);
                if aborted {
                    buffers.give_back(id);
                } else if streaming && dir.queue.is_empty() && !cut {
                    dir.state = State::Done;
                    self.received(index, d, len, cut);
                    self.enter(
                        index,
                        d,
                        State::SendingRing {
                            id,
                            len: at + len,
                            sent: at,
                        },
                    );
                } else {
                    dir.queue
                        .push(&mut self.spill, buffers.piece_mut(id, at, len));
                    buffers.give_back(id);
                    self.received(index, d, len, cut);
                    let dir = &mut self.tunnel(index).dirs[d];
                    let wait = cut && dir.queue.partial(buffer);
                    if streaming && dir.recv == Recv::Armed && !wait {
                        // The rest is in (or a whole buffer waits): all of it goes in one send.
                        dir.state = State::Done;
                        self.go_on(index, d);
                    }
                }
            }
            // No bytes: as for a one-shot receive (see `complete`).
            Some(id) if !buffers.incremental => {
                buffers.received(id, 0, 0);
                buffers.give_back(id);
            }
            _ => {}
        }
        let dir = &mut self.tunnel(index).dirs[d];
        if dir.recv != Recv::Off {
            return self.finish_if_done(index);
        }
        if matches!(dir.state, State::Streaming) {
            dir.state = State::Done;
            // Bytes held for the rest of a cut piece go out before anything the receive's
            // end means: an end of stream or an empty ring is found again after them.
            let held = !dir.queue.is_empty();
            let wait = cut && dir.queue.partial(buffer);
            match res {
                _ if aborted => {}
                // The cap cut a piece: the next receive brings the rest to go with it.
                r if r > 0 && wait => {
                    self.enter(index, d, State::Streaming);
                }
                // Stopped: by this engine (splice next, a handoff) or the kernel.
                r if r > 0 || r == -libc::ECANCELED => self.go_on(index, d),
                e if e == -libc::EINVAL && self.multishot => {
                    tracing::warn!("no multishot receives on this kernel ({e}); one per read");
                    self.multishot = false;
                    self.go_on(index, d);
                }
                e if (e == 0 || e == -libc::ENOBUFS) && held => self.go_on(index, d),
                e if e == -libc::ENOBUFS => self.enter(index, d, State::AwaitingReadable),
                _ => self.read_ended(index, d, res),
            }
        } else if res < 0 && res != -libc::ECANCELED && res != -libc::ENOBUFS && !aborted {
            // An end of stream (0) is found again by the receive after the send; bytes (the
            // cap reached) were queued, and the receive is armed again after them.
            self.tunnel(index)
                .fail(side_of(d), io::Error::from_raw_os_error(-res));
        }
        self.finish_if_done(index);
    }

    /// Cancels direction `d`'s multishot receive, if armed.
    pub(super) fn stop_receiving(&mut self, index: u32, d: usize) {
        let dir = &mut self.tunnel(index).dirs[d];
        if dir.recv != Recv::Armed {
            return;
        }
        dir.recv = Recv::Stopping;
        let cancel = opcode::AsyncCancel::new(user_data(index, d) | RECV).build();
        self.push(cancel.user_data(CANCEL));
    }

    /// Plain direction `d` has nothing in flight but maybe its multishot receive: it sends
    /// what queued up, or waits for its receive, or turns to splice, or receives anew.
    pub(super) fn go_on(&mut self, index: u32, d: usize) {
        let tunnel = self.slab[index as usize].as_mut().expect("open tunnel");
        let dir = &mut tunnel.dirs[d];
        if let Some((spill, len)) = dir.queue.pop(&mut self.spill) {
            let state = State::SendingHeap {
                spill,
                len,
                sent: 0,
            };
            return self.enter(index, d, state);
        }
        if dir.recv != Recv::Off {
            dir.state = State::Streaming;
            // Splicing waits for the receive's last completion (`streamed` comes back here).
            if self.turns_bulk(index, d) {
                self.stop_receiving(index, d);
            }
        } else if self.start_splice(index, d) {
            self.splice(index, d, false);
        } else {
            self.read(index, d);
        }
    }

    /// Counts `n` bytes read by direction `d`. `cut`: bytes were still waiting in the socket
    /// (IORING_CQE_F_SOCK_NONEMPTY), so the read was as short as its buffer (the end of an
    /// incrementally consumed ring buffer, say), not as the stream's flow: it keeps a bulk
    /// streak going however few bytes it took.
    fn received(&mut self, index: u32, d: usize, n: u32, cut: bool) {
        self.metrics.bytes[d].add(u64::from(n));
        let tunnel = self.tunnel(index);
        tunnel.active = true;
        let dir = &mut tunnel.dirs[d];
        dir.streak = if n >= BULK_READ || cut {
            dir.streak.saturating_add(n)
        } else {
            0
        };
        dir.bytes += u64::from(n);
    }

    /// The reader could not take bytes `sent..len` of ring buffer `id` now: they move to a
    /// heap buffer, whose send waits for the reader, and the ring buffer goes back at once.
    fn spill_rest(&mut self, index: u32, d: usize, id: u16, sent: u32, len: u32) {
        let rest = len - sent;
        let spill = self.spill.take();
        let buffers = self.buffers.as_mut().expect("a buffer ring");
        debug_assert!(rest as usize <= self.spill.size);
        // SAFETY: `sent < len <= size`: the rest lies inside ring buffer `id`, whose first
        // `len` bytes the kernel wrote; heap buffers hold `size` bytes and are separate
        // allocations, so the ranges do not overlap. Raw pointers only: the destination is
        // uninitialised memory.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::copy_nonoverlapping(
                buffers.start(id).add(sent as usize),
                self.spill.start(spill),
                rest as usize,
            );
        }
        buffers.give_back(id);
        self.metrics.spilled_sends.add(1);
        self.enter(
            index,
            d,
            State::SendingHeap {
                spill,
                len: rest,
                sent: 0,
            },
        );
    }

    /// Direction `d` wrote all it had read: it reads on, or splices if it has turned bulk.
    fn sent_all(&mut self, index: u32, d: usize) {
        if self.is_tls(index) {
            if d == 0 {
                self.client_sent_all(index);
            } else if !self.upstream_sent_all(index) {
                self.read(index, 1);
            }
            return;
        }
        self.go_on(index, d);
    }

    /// Direction `d`'s read ended with `res` (0: end of stream, passed on as a half-close).
    pub(super) fn read_ended(&mut self, index: u32, d: usize, res: i32) {
        if res == 0 && d == 1 && self.is_tls(index) {
            return self.close_notify(index);
        }
        let tunnel = self.tunnel(index);
        if res == 0 {
            let _ = SockRef::from(&tunnel.fds[1 - d]).shutdown(Shutdown::Write);
        } else {
            tunnel.fail(side_of(d), io::Error::from_raw_os_error(-res));
        }
    }

    /// Direction `d`'s send ended with `res` and its buffer is back: all written (it goes
    /// on), or failed (0: nothing taken).
    fn sent(&mut self, index: u32, d: usize, res: i32, aborted: bool) {
        if aborted {
            return;
        }
        if res > 0 {
            return self.sent_all(index, d);
        }
        let error = if res == 0 {
            io::ErrorKind::WriteZero.into()
        } else {
            io::Error::from_raw_os_error(-res)
        };
        self.tunnel(index).fail(side_of(1 - d), error);
    }
}

/// Caps multishot receive `sqe` at `bytes` in all: `sqe->optlen`, which io-uring 0.6 has no
/// setter for (the kernel then completes without IORING_CQE_F_MORE once it has delivered
/// them).
fn cap_total(sqe: squeue::Entry, bytes: u32) -> squeue::Entry {
    /// `offsetof(struct io_uring_sqe, optlen)`.
    const OPTLEN: usize = 44;
    with_field(sqe, OPTLEN, bytes)
}

#[cfg(test)]
mod tests;
