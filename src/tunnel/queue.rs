//! Bytes a direction's multishot receive delivered while its send was still in flight, or
//! a piece of a read cut short that waits for its rest.
//!
//! A multishot receive keeps delivering while the bytes before are being written on, and
//! they must go out in order, after those. They are copied into heap buffers chained in
//! arrival order, and the ring buffer goes back at once: a ring buffer is still never held
//! while a reader is waited for. The next send takes a whole heap buffer, so bytes that
//! piled up behind a send go out in one send, not one per receive. A multishot receive is
//! capped (see `direction`), so a queue holds at most that many bytes.

use super::buffers::Spill;

/// No buffer: the queue is empty.
const NONE: u32 = u32::MAX;

/// A chain of heap buffers, every one full but the last.
#[derive(Clone, Copy, Debug)]
pub(super) struct Queue {
    head: u32,
    tail: u32,
    /// Bytes in the last buffer.
    tail_len: u32,
}

impl Queue {
    pub(super) const EMPTY: Queue = Queue {
        head: NONE,
        tail: NONE,
        tail_len: 0,
    };

    pub(super) fn is_empty(&self) -> bool {
        self.head == NONE
    }

    /// Holds bytes, less than one whole heap buffer (of `size` bytes) of them.
    pub(super) fn partial(&self, size: usize) -> bool {
        self.head != NONE && self.head == self.tail && (self.tail_len as usize) < size
    }

    /// Copies `data` in after what is queued.
    pub(super) fn push(&mut self, spill: &mut Spill, mut data: &[u8]) {
        while !data.is_empty() {
            if self.head == NONE || self.tail_len as usize == spill.size {
                let id = spill.take();
                spill.link(id, NONE);
                if self.head == NONE {
                    self.head = id;
                } else {
                    spill.link(self.tail, id);
                }
                self.tail = id;
                self.tail_len = 0;
            }
            let at = self.tail_len as usize;
            let n = data.len().min(spill.size - at);
            spill.bytes_mut(self.tail)[at..at + n].copy_from_slice(&data[..n]);
            self.tail_len += n as u32;
            data = &data[n..];
        }
    }

    /// The first buffer and its length, now the caller's (to send and then put back).
    pub(super) fn pop(&mut self, spill: &mut Spill) -> Option<(u32, u32)> {
        if self.head == NONE {
            return None;
        }
        let id = self.head;
        let len = if id == self.tail {
            self.tail_len
        } else {
            spill.size as u32
        };
        self.head = spill.next(id);
        if self.head == NONE {
            *self = Queue::EMPTY;
        }
        Some((id, len))
    }

    /// Appends everything queued to `out` and empties the queue (a tunnel handed over).
    pub(super) fn drain_into(&mut self, spill: &mut Spill, out: &mut Vec<u8>) {
        while let Some((id, len)) = self.pop(spill) {
            out.extend_from_slice(&spill.bytes_mut(id)[..len as usize]);
            spill.put(id);
        }
    }

    /// Empties the queue, its bytes dropped (the tunnel ended).
    pub(super) fn clear(&mut self, spill: &mut Spill) {
        while let Some((id, _)) = self.pop(spill) {
            spill.put(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_come_out_in_order_in_whole_buffers() {
        let mut spill = Spill::new(8, 0);
        let mut queue = Queue::EMPTY;
        assert!(queue.is_empty());
        queue.push(&mut spill, b"abc");
        queue.push(&mut spill, b"defghij");
        queue.push(&mut spill, b"klmnopqrs");
        let mut out = Vec::new();
        while let Some((id, len)) = queue.pop(&mut spill) {
            assert!(len == 8 || queue.is_empty(), "only the last is short");
            out.extend_from_slice(&spill.bytes_mut(id)[..len as usize]);
            spill.put(id);
        }
        assert_eq!(out, b"abcdefghijklmnopqrs");
        queue.push(&mut spill, b"tu");
        let mut rest = Vec::new();
        queue.drain_into(&mut spill, &mut rest);
        assert_eq!(rest, b"tu");
        assert!(queue.is_empty());
    }

    #[test]
    fn clearing_puts_every_buffer_back() {
        let mut spill = Spill::new(4, 0);
        let mut queue = Queue::EMPTY;
        queue.push(&mut spill, &[7; 10]);
        queue.clear(&mut spill);
        assert!(queue.is_empty());
        let reused: Vec<u32> = (0..3).map(|_| spill.take()).collect();
        assert_eq!(
            spill.len(),
            3,
            "the three buffers came back and were reused"
        );
        assert_eq!(reused.len(), 3);
    }
}
