//! Taking plain tunnels out of one process's engine and resuming them in another's, for a
//! binary upgrade that cuts no tunnel.
//!
//! A tunnel can leave only at rest: no operation in flight, every byte read but not yet
//! written held where it can be handed on. [`Tunnels::detach_all`] cancels what each plain
//! tunnel has in flight; from then on, a direction entering its next state parks instead of
//! submitting (see `Engine::enter`), keeping the bytes that state would have sent. Once both
//! directions rest, the tunnel leaves the slab as a [`Detached`], its descriptors unclosed.
//! [`Tunnels::adopt`] puts one into this engine: held bytes are sent first, a spliced
//! direction keeps its pipe (and what is in it), an ended direction stays ended.
//!
//! `wss://` tunnels never leave: their record layer's keys and sequence numbers stay in
//! this process, which relays them until they end.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use io_uring::opcode;

pub mod fields;

use fields::{Malformed, Reader, Writer};

use super::direction::State;
use super::splice::Pipe;
use super::{Engine, Tunnel, Tunnels, user_data};

/// `user_data` of the cancellations that detaching submits; their completions are ignored.
pub(super) const CANCEL: u64 = 1 << 63;

/// Held bytes an encoded tunnel carries per direction at most: the earlier ones go before
/// it in parts of this size ([`Detached::held_parts`]), so every message stays well inside
/// what one seqpacket message holds.
pub const HELD_PER_MESSAGE: usize = 64 * 1024;

/// A plain tunnel out of the engine, with nothing in flight.
pub struct Detached<P> {
    /// [client, upstream].
    pub fds: [OwnedFd; 2],
    /// [client->upstream, upstream->client].
    pub dirs: [DetachedDirection; 2],
    /// Idle sweeps in a row that found no bytes read (the idle deadline carries over).
    pub quiet: u8,
    pub payload: P,
}

/// One direction of a detached tunnel.
#[derive(Default)]
pub struct DetachedDirection {
    /// Bytes moved so far, for the access log.
    pub bytes: u64,
    /// Its source reached end of stream, passed on as a half-close: it reads no more.
    pub ended: bool,
    /// Bytes read and not yet written on, to be written first.
    pub held: Vec<u8>,
    /// A spliced direction's pipe `[read, write]` and the bytes in it not yet written on
    /// (written after `held`, which is then empty anyway: a spliced direction reads into a
    /// buffer only with its pipe empty).
    pub pipe: Option<([OwnedFd; 2], usize)>,
}

impl<P> Detached<P> {
    /// The same tunnel with `payload` instead, and the payload it had.
    pub fn replace<Q>(self, payload: Q) -> (Detached<Q>, P) {
        let tunnel = Detached {
            fds: self.fds,
            dirs: self.dirs,
            quiet: self.quiet,
            payload,
        };
        (tunnel, self.payload)
    }

    /// The same tunnel with its payload turned into another.
    pub fn map<Q>(self, f: impl FnOnce(P) -> Q) -> Detached<Q> {
        Detached {
            fds: self.fds,
            dirs: self.dirs,
            quiet: self.quiet,
            payload: f(self.payload),
        }
    }
}

impl<P> Detached<P> {
    /// Where each direction's held bytes that go in the tunnel's own message start.
    fn held_in_message(&self) -> [usize; 2] {
        self.dirs
            .each_ref()
            .map(|d| d.held.len().saturating_sub(HELD_PER_MESSAGE))
    }

    /// The held bytes that do not fit the tunnel's message, in order, as (direction, part):
    /// sent before it, and given back to [`Detached::decode`] in `earlier`.
    pub fn held_parts(&self) -> impl Iterator<Item = (usize, &[u8])> {
        let split = self.held_in_message();
        (0..2).flat_map(move |d| {
            self.dirs[d].held[..split[d]]
                .chunks(HELD_PER_MESSAGE)
                .map(move |part| (d, part))
        })
    }
}

impl Detached<Vec<u8>> {
    /// Appends the tunnel to `out` (its payload already in bytes, its held bytes from where
    /// [`Detached::held_parts`] left off) and returns its descriptors, in the order
    /// [`Detached::decode`] takes them back.
    pub fn encode(&self, out: &mut Vec<u8>) -> Vec<RawFd> {
        let mut fds = vec![self.fds[0].as_raw_fd(), self.fds[1].as_raw_fd()];
        let split = self.held_in_message();
        let mut w = Writer(out);
        w.u8(self.quiet);
        for (dir, from) in self.dirs.iter().zip(split) {
            w.u64(dir.bytes)
                .u8(u8::from(dir.ended))
                .bytes(&dir.held[from..]);
            match &dir.pipe {
                Some((ends, held)) => {
                    w.u8(1).u64(*held as u64);
                    fds.extend(ends.iter().map(AsRawFd::as_raw_fd));
                }
                None => {
                    w.u8(0).u64(0);
                }
            }
        }
        w.bytes(&self.payload);
        fds
    }

    /// A tunnel from what [`Detached::encode`] wrote and the descriptors that came with it;
    /// `earlier`: the held parts that came before it, taken.
    pub fn decode(
        bytes: &[u8],
        fds: Vec<OwnedFd>,
        earlier: &mut [Vec<u8>; 2],
    ) -> Result<Self, Malformed> {
        let mut r = Reader(bytes);
        let mut fds = fds.into_iter();
        let mut fd = || fds.next().ok_or(Malformed("descriptors missing"));
        let ends = [fd()?, fd()?];
        let quiet = r.u8()?;
        let mut dirs = [DetachedDirection::default(), DetachedDirection::default()];
        for (d, dir) in dirs.iter_mut().enumerate() {
            dir.bytes = r.u64()?;
            dir.ended = r.u8()? != 0;
            let rest = r.bytes()?;
            dir.held = std::mem::take(&mut earlier[d]);
            dir.held.extend_from_slice(rest);
            let spliced = r.u8()? != 0;
            let held = r.u64()? as usize;
            if spliced {
                dir.pipe = Some(([fd()?, fd()?], held));
            }
        }
        let payload = r.bytes()?.to_vec();
        r.end()?;
        if fds.next().is_some() {
            return Err(Malformed("descriptors left over"));
        }
        Ok(Detached {
            fds: ends,
            dirs,
            quiet,
            payload,
        })
    }
}

impl<P> Tunnels<P> {
    /// Starts handing every plain tunnel over: cancels what each has in flight. Each comes
    /// to rest within a completion or two and is passed to `run`'s `on_detach`; so is every
    /// plain tunnel opened from now on, at once. `wss://` tunnels stay.
    pub fn detach_all(&self) {
        let mut engine = self.engine.borrow_mut();
        engine.detaching = true;
        // An entry still in the backlog is not in the kernel yet, where a cancellation could
        // find it.
        engine.refill_from_backlog();
        let _ = engine.submit();
        for index in 0..engine.slab.len() {
            let Some(tunnel) = &engine.slab[index] else {
                continue;
            };
            if tunnel.tls.is_some() {
                continue;
            }
            let busy =
                [0, 1].map(|d| !matches!(tunnel.dirs[d].state, State::Done | State::Streaming));
            for d in (0..2).filter(|&d| busy[d]) {
                let cancel = opcode::AsyncCancel::new(user_data(index as u32, d)).build();
                engine.push(cancel.user_data(CANCEL));
            }
            for d in 0..2 {
                engine.stop_receiving(index as u32, d);
            }
        }
        let _ = engine.submit();
        drop(engine);
        self.wake_loop();
    }

    /// Whether tunnels are being handed over (see [`Tunnels::detach_all`]).
    pub fn detaching(&self) -> bool {
        self.engine.borrow().detaching
    }

    /// Resumes a tunnel another process detached.
    pub fn adopt(&self, tunnel: Detached<P>) {
        self.resume(tunnel, false);
    }

    /// Resumes a tunnel this engine detached for a handoff that is over: it stays, and
    /// drains here.
    pub fn keep(&self, tunnel: Detached<P>) {
        self.resume(tunnel, true);
    }

    fn resume(&self, tunnel: Detached<P>, stays: bool) {
        let mut engine = self.engine.borrow_mut();
        let Detached {
            fds,
            mut dirs,
            quiet,
            payload,
        } = tunnel;
        let mut entry = Tunnel {
            fds,
            dirs: [dirs[0].bytes, dirs[1].bytes].map(super::Direction::new),
            active: false,
            quiet,
            aborted: false,
            idled: false,
            stays,
            error: None,
            tls: None,
            payload,
        };
        for (dir, from) in entry.dirs.iter_mut().zip(&mut dirs) {
            if let Some(([read, write], held)) = from.pipe.take() {
                dir.pipe = Some(Box::new(Pipe::from_parts(read, write, held)));
                engine.pipes_left = engine.pipes_left.saturating_sub(1);
            }
        }
        let index = engine.insert(entry);
        for (d, from) in dirs.into_iter().enumerate() {
            let spliced = engine.tunnel(index).dirs[d].pipe.as_ref().map(|p| p.held);
            if from.ended {
                continue;
            }
            if !from.held.is_empty() {
                // Held bytes queue as bytes read behind a send do, and go out first.
                let Engine { slab, spill, .. } = &mut *engine;
                let tunnel = slab[index as usize].as_mut().expect("open tunnel");
                tunnel.dirs[d].queue.push(spill, &from.held);
                engine.go_on(index, d);
            } else if let Some(held) = spliced {
                let events = if held == 0 {
                    libc::POLLIN
                } else {
                    libc::POLLOUT
                };
                engine.enter(index, d, State::Spliced { events });
            } else {
                engine.read(index, d);
            }
        }
        if engine.parks(index) {
            // Adopted while this engine hands its own tunnels on: it leaves again.
            engine.finish_if_done(index);
            drop(engine);
            return self.wake_loop();
        }
        drop(engine);
        self.wake_loop();
    }
}

impl<P> Engine<P> {
    /// Whether direction entries of tunnel `index` park instead of being submitted.
    pub(super) fn parks(&self, index: u32) -> bool {
        self.detaching
            && self.slab[index as usize]
                .as_ref()
                .is_some_and(|t| t.tls.is_none() && !t.aborted && !t.stays)
    }

    /// Direction `d` would enter `state`, but the tunnel is leaving: the direction rests
    /// instead, keeping the bytes `state` would have sent in a heap buffer.
    pub(super) fn park(&mut self, index: u32, d: usize, state: State) {
        let parked = match state {
            State::Streaming
            | State::Receiving { .. }
            | State::AwaitingReadable
            | State::Spliced { .. } => State::Parked,
            State::ReceivingHeap { spill, at } => {
                debug_assert_eq!(at, 0, "only TLS reads append");
                self.spill.put(spill);
                State::Parked
            }
            State::SendingHeap { spill, len, sent } => State::ParkedHeap { spill, len, sent },
            State::SendingRing { id, len, sent } => {
                let spill = self.spill.take();
                let buffers = self.buffers.as_mut().expect("a buffer ring");
                let rest = buffers.piece_mut(id, sent, len - sent);
                let n = rest.len();
                self.spill.bytes_mut(spill)[..n].copy_from_slice(rest);
                buffers.give_back(id);
                State::ParkedHeap {
                    spill,
                    len: n as u32,
                    sent: 0,
                }
            }
            State::Parked | State::ParkedHeap { .. } | State::Done => {
                unreachable!("not an operation")
            }
        };
        self.tunnel(index).dirs[d].state = parked;
    }

    /// Tunnel `index` rests in both directions (at least one parked) and is not failing:
    /// it leaves the slab for `on_detach`, its descriptors open.
    pub(super) fn detach(&mut self, index: u32) {
        let tunnel = self.slab[index as usize].take().expect("open tunnel");
        self.free.push(index);
        self.clear_slots(index);
        let Tunnel {
            fds,
            dirs,
            active,
            quiet,
            payload,
            ..
        } = tunnel;
        // Bytes read since the last sweep make it not quiet at all.
        let quiet = if active { 0 } else { quiet };
        let dirs = dirs.map(|mut dir| {
            let mut out = DetachedDirection {
                bytes: dir.bytes,
                ended: matches!(dir.state, State::Done),
                ..DetachedDirection::default()
            };
            if let State::ParkedHeap { spill, len, sent } = dir.state {
                out.held = self.spill.bytes_mut(spill)[sent as usize..len as usize].to_vec();
                self.spill.put(spill);
            }
            dir.queue.drain_into(&mut self.spill, &mut out.held);
            if let Some(pipe) = dir.pipe {
                self.pipes_left += 1;
                let (read, write, held) = pipe.into_parts();
                out.pipe = Some(([read, write], held));
            }
            out
        });
        self.detached.push(Detached {
            fds,
            dirs,
            quiet,
            payload,
        });
    }

    /// Puts `tunnel` in a free place of the table, and its descriptors in that place's
    /// slots of the ring's file table (ahead of its first operation).
    pub(super) fn insert(&mut self, tunnel: Tunnel<P>) -> u32 {
        let fds = tunnel.fds.each_ref().map(|fd| fd.as_raw_fd());
        let index = match self.free.pop() {
            Some(i) => {
                self.slab[i as usize] = Some(tunnel);
                i
            }
            None => {
                self.slab.push(Some(tunnel));
                (self.slab.len() - 1) as u32
            }
        };
        if let Some(update) = self.files.update(index, Some(fds)) {
            self.push(update);
        }
        index
    }

    /// Tunnel `index` left the table: its slots let go of its sockets (after its last
    /// operation).
    pub(super) fn clear_slots(&mut self, index: u32) {
        if let Some(update) = self.files.update(index, None) {
            self.push(update);
        }
    }
}

#[cfg(test)]
mod tests;
