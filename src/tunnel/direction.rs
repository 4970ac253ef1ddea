//! One relay direction of a tunnel as an explicit state machine: each [`State`] is one
//! operation in flight and the buffer it holds, [`Engine::enter`] is the only place an
//! operation is submitted, and [`Engine::complete`] moves a direction on from whatever
//! state its completion finds it in.

use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;

use io_uring::types::Fd;
use io_uring::{cqueue, opcode, squeue};
use socket2::SockRef;

use super::buffers::GROUP;
use super::splice::Pipe;
use super::{Engine, parse_user_data, side_of, user_data};

/// Reads of at least this many bytes in a row count towards switching a direction to
/// splice (see `splice::BULK_STREAK`).
const BULK_READ: u32 = 4096;

/// One direction of a tunnel: where it stands and what it has moved.
pub(super) struct Direction {
    pub(super) state: State,
    pub(super) bytes: u64,
    /// Bytes of the current run of reads of at least [`BULK_READ`].
    pub(super) streak: u32,
    /// Set once the direction moves its bytes with splice(2) through this pipe; kept while
    /// a buffered read gets a spliced source past urgent data.
    pub(super) pipe: Option<Box<Pipe>>,
}

/// Where one direction stands. Each state but `Done` is one operation in flight, the one
/// [`Engine::enter`] submits for it, and holds the buffer that operation uses, so a
/// direction can have neither two operations nor a buffer without its operation.
pub(super) enum State {
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
        }
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
        let sqe = match state {
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
        let dir = &mut tunnel.dirs[d];
        debug_assert!(matches!(dir.state, State::Done), "two operations in flight");
        dir.state = state;
        self.push(sqe.user_data(user_data(index, d)));
    }

    /// Reads direction `d` next: into a buffer the kernel picks when bytes arrive, or into a
    /// heap buffer on kernels without buffer rings.
    pub(super) fn read(&mut self, index: u32, d: usize) {
        if self.buffers.is_some() {
            self.enter(index, d, State::Receiving { polled: false });
        } else {
            self.read_into_heap(index, d);
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
                            self.received(index, d, len);
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
                    self.received(index, d, res as u32);
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
            State::Done | State::Parked | State::ParkedHeap { .. } => {
                unreachable!("a completion for a direction with nothing in flight")
            }
        }
        self.finish_if_done(index);
    }

    /// Counts `n` bytes read by direction `d`.
    fn received(&mut self, index: u32, d: usize, n: u32) {
        self.metrics.bytes[d].add(u64::from(n));
        let tunnel = self.tunnel(index);
        tunnel.active = true;
        let dir = &mut tunnel.dirs[d];
        dir.streak = if n >= BULK_READ {
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
        if self.start_splice(index, d) {
            self.splice(index, d, false);
        } else {
            self.read(index, d);
        }
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
