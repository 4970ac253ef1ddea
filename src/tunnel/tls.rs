//! TLS tunnels in the engine: the client's side speaks TLS records, opened and sealed in
//! place by [`crate::tls::record`] in the same buffers plain tunnels use, so a TLS tunnel
//! keeps the same promises: one operation per direction, order kept, no allocation per
//! message, and no buffer held while idle.
//!
//! Client -> upstream: a receive's records are opened in its buffer and their data sent on
//! from the buffer's start. A record cut by the end of a read (a full one is larger than a
//! ring buffer) moves to a heap buffer, and the next read appends to it there. A tunnel
//! whose client stops in the middle of a record holds that one heap buffer until the rest
//! comes or the idle timeout ends it.
//!
//! Upstream -> client: received bytes are sealed into one record in a heap buffer (the ring
//! buffer goes back at once), whose send waits for the client like a spilled send. The
//! upstream's end of stream becomes `close_notify`, then FIN; the client's `close_notify`
//! becomes a FIN to the upstream. TLS directions never splice.

use std::io;

use super::{Engine, Side};
use crate::tls::record::{RecordError, TunnelTls};

use super::direction::State;

/// The TLS state of a tunnel.
pub(super) struct TlsTunnel {
    pub(super) records: Box<TunnelTls>,
    /// The start of a record from the client still arriving: heap buffer, bytes held.
    pub(super) carry: Option<(u32, u32)>,
    /// The client sent `close_notify`: client -> upstream ends once its data is sent.
    pub(super) peer_closed: bool,
    /// Upstream -> client is sending `close_notify`: FIN follows it.
    pub(super) closing: bool,
}

/// The TLS state of tunnel `index` in `slab`: a free function, so the engine's buffers can
/// be borrowed beside it.
fn tls_of<P>(slab: &mut [Option<super::Tunnel<P>>], index: u32) -> &mut TlsTunnel {
    slab[index as usize]
        .as_mut()
        .and_then(|t| t.tls.as_deref_mut())
        .expect("a TLS tunnel")
}

impl<P> Engine<P> {
    /// The TLS state of tunnel `index`, if it is a TLS tunnel.
    fn tls(&mut self, index: u32) -> Option<&mut TlsTunnel> {
        self.tunnel(index).tls.as_deref_mut()
    }

    pub(super) fn is_tls(&mut self, index: u32) -> bool {
        self.tls(index).is_some()
    }

    /// Takes the start of a record that came with the handshake's last read.
    pub(super) fn carry_in(&mut self, index: u32, tail: &[u8]) {
        if tail.is_empty() {
            return;
        }
        let spill = self.spill.take();
        self.spill.bytes_mut(spill)[..tail.len()].copy_from_slice(tail);
        let tls = self.tls(index).expect("a TLS tunnel");
        tls.carry = Some((spill, tail.len() as u32));
    }

    /// Reads the client's side next: appending to a held record start, or as usual.
    pub(super) fn read_client_tls(&mut self, index: u32) {
        match self.tls(index).and_then(|t| t.carry.take()) {
            Some((spill, at)) => {
                self.enter(index, 0, State::ReceivingHeap { spill, at });
            }
            None => self.read(index, 0),
        }
    }

    /// Client -> upstream: `n` bytes arrived in ring buffer `id`, at `at`.
    pub(super) fn opened_ring(&mut self, index: u32, id: u16, at: u32, n: u32) {
        let buffers = self.buffers.as_mut().expect("a buffer ring");
        let bytes = buffers.piece_mut(id, at, n);
        let tls = tls_of(&mut self.slab, index);
        let opened = match tls.records.open(bytes) {
            Ok(o) => o,
            Err(e) => {
                self.buffers.as_mut().expect("a buffer ring").give_back(id);
                return self.tls_failed(index, e);
            }
        };
        tls.peer_closed = opened.closed;
        let tail = opened.tail(n as usize);
        if tail > 0 {
            let spill = self.spill.take();
            let buffers = self.buffers.as_mut().expect("a buffer ring");
            let from = &buffers.piece_mut(id, at, n)[opened.consumed..];
            self.spill.bytes_mut(spill)[..tail].copy_from_slice(from);
            self.tls(index).expect("a TLS tunnel").carry = Some((spill, tail as u32));
        }
        if opened.plain > 0 {
            let len = at + opened.plain as u32;
            self.enter(index, 0, State::SendingRing { id, len, sent: at });
        } else {
            self.buffers.as_mut().expect("a buffer ring").give_back(id);
            self.client_sent_all(index);
        }
    }

    /// Client -> upstream: heap buffer `spill` holds `n` bytes (a held record start and
    /// what was read after it).
    pub(super) fn opened_heap(&mut self, index: u32, spill: u32, n: u32) {
        let bytes = &mut self.spill.bytes_mut(spill)[..n as usize];
        let tls = tls_of(&mut self.slab, index);
        let opened = match tls.records.open(bytes) {
            Ok(o) => o,
            Err(e) => {
                self.spill.put(spill);
                return self.tls_failed(index, e);
            }
        };
        tls.peer_closed = opened.closed;
        let tail = opened.tail(n as usize);
        if opened.plain == 0 {
            if tail > 0 {
                let buf = self.spill.bytes_mut(spill);
                buf.copy_within(opened.consumed..n as usize, 0);
                self.tls(index).expect("a TLS tunnel").carry = Some((spill, tail as u32));
            } else {
                self.spill.put(spill);
            }
            return self.client_sent_all(index);
        }
        if tail > 0 {
            let rest = self.spill.take();
            let (from, to) = self.spill.pair_mut(spill, rest);
            to[..tail].copy_from_slice(&from[opened.consumed..n as usize]);
            self.tls(index).expect("a TLS tunnel").carry = Some((rest, tail as u32));
        }
        let len = opened.plain as u32;
        self.enter(
            index,
            0,
            State::SendingHeap {
                spill,
                len,
                sent: 0,
            },
        );
    }

    /// Client -> upstream wrote all it had: it reads on, or ends after `close_notify`.
    pub(super) fn client_sent_all(&mut self, index: u32) {
        if self.tls(index).is_some_and(|t| t.peer_closed) {
            self.read_ended(index, 0, 0);
        } else {
            self.read_client_tls(index);
        }
    }

    /// Upstream -> client: seals the `n` bytes at `at` of ring buffer `id` into a heap buffer
    /// and sends it.
    pub(super) fn seal_ring(&mut self, index: u32, id: u16, at: u32, n: u32) {
        let spill = self.spill.take();
        let tls = tls_of(&mut self.slab, index);
        let prefix = tls.records.prefix();
        let buffers = self.buffers.as_mut().expect("a buffer ring");
        let out = self.spill.bytes_mut(spill);
        out[prefix..prefix + n as usize].copy_from_slice(buffers.piece_mut(id, at, n));
        buffers.give_back(id);
        let sealed = tls.records.seal(out, n as usize);
        self.send_sealed(index, spill, sealed);
    }

    /// Upstream -> client: seals the `n` bytes at the start of heap buffer `spill` in place.
    pub(super) fn seal_heap(&mut self, index: u32, spill: u32, n: u32) {
        let tls = tls_of(&mut self.slab, index);
        let prefix = tls.records.prefix();
        let out = self.spill.bytes_mut(spill);
        out.copy_within(..n as usize, prefix);
        let sealed = tls.records.seal(out, n as usize);
        self.send_sealed(index, spill, sealed);
    }

    /// The upstream ended its stream: `close_notify` to the client, then FIN (see
    /// [`Engine::upstream_sent_all`]).
    pub(super) fn close_notify(&mut self, index: u32) {
        let spill = self.spill.take();
        let tls = tls_of(&mut self.slab, index);
        tls.closing = true;
        let sealed = tls.records.seal_close_notify(self.spill.bytes_mut(spill));
        self.send_sealed(index, spill, sealed);
    }

    /// Sends the record sealed into heap buffer `spill` to the client, or ends the tunnel if
    /// sealing failed.
    fn send_sealed(&mut self, index: u32, spill: u32, sealed: Result<usize, RecordError>) {
        match sealed {
            Ok(len) => {
                let len = len as u32;
                self.enter(
                    index,
                    1,
                    State::SendingHeap {
                        spill,
                        len,
                        sent: 0,
                    },
                );
            }
            Err(e) => {
                self.spill.put(spill);
                self.tls_failed(index, e);
            }
        }
    }

    /// Upstream -> client wrote all it had: after `close_notify`, FIN; else it reads on.
    /// `true`: handled here.
    pub(super) fn upstream_sent_all(&mut self, index: u32) -> bool {
        match self.tls(index) {
            Some(tls) if tls.closing => {
                let tunnel = self.tunnel(index);
                let _ = socket2::SockRef::from(&tunnel.fds[0]).shutdown(std::net::Shutdown::Write);
                true
            }
            _ => false,
        }
    }

    fn tls_failed(&mut self, index: u32, e: RecordError) {
        tracing::debug!("TLS tunnel: {e}");
        let error = io::Error::new(io::ErrorKind::InvalidData, e);
        self.tunnel(index).fail(Side::Client, error);
    }
}
