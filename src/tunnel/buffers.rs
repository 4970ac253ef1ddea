//! The tunnels' buffers: a ring-mapped buffer ring the kernel picks from when bytes arrive,
//! and heap buffers lent when that ring is empty or a reader is too slow to take a send.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

/// The buffer group of the receive buffers (the ring has only this one).
pub(super) const GROUP: u16 = 0;
/// Heap buffers kept for reuse once the kernel ring ran dry.
const SPILL_KEEP: usize = 16;

/// Receive buffers lent to the kernel through a ring-mapped buffer ring. The memory is
/// leaked on purpose: the kernel may hold any buffer until the ring goes away, and a
/// worker's ring lives as long as the process.
pub(super) struct BufferRing {
    entries: *mut BufRingEntry,
    mask: u16,
    tail: u16,
    base: *mut u8,
    pub(super) size: u32,
}

impl BufferRing {
    pub(super) fn register(ring: &IoUring, size: u32, count: u16) -> io::Result<Self> {
        let slots = count.next_power_of_two();
        let layout = std::alloc::Layout::from_size_align(
            usize::from(slots) * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size.
        #[allow(unsafe_code)]
        let entries = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let memory = Vec::leak(vec![0u8; size as usize * usize::from(count)]);
        // SAFETY: `entries` is page-aligned, zeroed, `slots` entries long, and never freed.
        #[allow(unsafe_code)]
        unsafe {
            ring.submitter()
                .register_buf_ring(entries as u64, slots, GROUP)?;
        }
        let mut buffers = BufferRing {
            entries,
            mask: slots - 1,
            tail: 0,
            base: memory.as_mut_ptr(),
            size,
        };
        for id in 0..count {
            buffers.give_back(id);
        }
        Ok(buffers)
    }

    /// Ring buffer `id`'s memory, for the record layer: only while the buffer is ours (from
    /// its receive's completion until it is given back).
    pub(super) fn bytes_mut(&mut self, id: u16) -> &mut [u8] {
        // SAFETY: the memory was initialised at registration and is never freed; the kernel
        // writes buffer `id` only after it is given back, and `&mut self` keeps this the one
        // reference into it until then.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts_mut(self.start(id), self.size as usize)
        }
    }

    pub(super) fn start(&self, id: u16) -> *mut u8 {
        // SAFETY: ids handed out by the kernel are ones we provided, all inside the memory.
        #[allow(unsafe_code)]
        unsafe {
            self.base.add(usize::from(id) * self.size as usize)
        }
    }

    /// Hands buffer `id` back to the kernel: one entry and a tail store, no system call.
    pub(super) fn give_back(&mut self, id: u16) {
        let addr = self.start(id) as u64;
        // SAFETY: `tail & mask` indexes inside the entries; the kernel reads only entries
        // before the published tail, and this one is published after it is written. The
        // entry is written through raw pointers to its `addr`, `len` and `bid` fields only
        // (struct io_uring_buf: u64 addr, u32 len, u16 bid, u16 resv): entry 0's `resv` is
        // the ring's tail, which no reference may cover.
        #[allow(unsafe_code)]
        unsafe {
            let entry = self
                .entries
                .add(usize::from(self.tail & self.mask))
                .cast::<u8>();
            entry.cast::<u64>().write(addr);
            entry.add(8).cast::<u32>().write(self.size);
            entry.add(12).cast::<u16>().write(id);
            self.tail = self.tail.wrapping_add(1);
            let tail = BufRingEntry::tail(self.entries).cast_mut();
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

/// Heap buffers: for reads when the kernel ring is empty, and for the unsent rest of a send
/// the reader could not take at once. Each is lent for one read or one rest and its sends.
/// Ids stay valid for good; up to [`SPILL_KEEP`] of them keep their memory for reuse. The
/// memory is never initialised by us: only the kernel (a receive) or a copy of bytes already
/// received writes it, and it is only ever read through raw pointers up to what was written.
/// (Zeroed when allocated, so the TLS record layer may also work in it as a byte slice.)
pub(super) struct Spill {
    buffers: Vec<Box<[u8]>>,
    /// Free ids whose buffer kept its memory.
    kept: Vec<u32>,
    /// Free ids whose memory was given back (an empty box: no allocation).
    empty: Vec<u32>,
    pub(super) size: usize,
}

impl Spill {
    pub(super) fn new(size: usize) -> Self {
        Spill {
            buffers: Vec::new(),
            kept: Vec::new(),
            empty: Vec::new(),
            size,
        }
    }

    /// A free buffer of `size` bytes: a kept one if any, else freshly allocated.
    pub(super) fn take(&mut self) -> u32 {
        let id = self
            .kept
            .pop()
            .or_else(|| self.empty.pop())
            .unwrap_or_else(|| {
                self.buffers.push(Box::default());
                (self.buffers.len() - 1) as u32
            });
        let buf = &mut self.buffers[id as usize];
        if buf.len() < self.size {
            *buf = vec![0; self.size].into_boxed_slice();
        }
        id
    }

    /// The first byte of buffer `id`, which holds `size` bytes.
    pub(super) fn start(&mut self, id: u32) -> *mut u8 {
        self.buffers[id as usize].as_mut_ptr().cast()
    }

    /// Buffer `id` as bytes, for the record layer (while no operation uses it).
    pub(super) fn bytes_mut(&mut self, id: u32) -> &mut [u8] {
        &mut self.buffers[id as usize]
    }

    /// Two different buffers as bytes at once, to copy from one to the other.
    pub(super) fn pair_mut(&mut self, a: u32, b: u32) -> (&mut [u8], &mut [u8]) {
        assert_ne!(a, b, "two different buffers");
        let (lo, hi) = (a.min(b) as usize, a.max(b) as usize);
        let (left, right) = self.buffers.split_at_mut(hi);
        let (low, high) = (&mut left[lo][..], &mut right[0][..]);
        if a < b { (low, high) } else { (high, low) }
    }

    pub(super) fn put(&mut self, id: u32) {
        if self.kept.len() < SPILL_KEEP {
            self.kept.push(id);
        } else {
            self.buffers[id as usize] = Box::default();
            self.empty.push(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spill_buffers_are_reused_and_only_the_kept_keep_memory() {
        let mut spill = Spill::new(64);
        let ids: Vec<u32> = (0..SPILL_KEEP as u32 + 2).map(|_| spill.take()).collect();
        let first = spill.start(ids[0]);
        for &id in &ids {
            spill.put(id);
        }
        assert_eq!(spill.kept.len(), SPILL_KEEP);
        assert_eq!(spill.empty.len(), 2);
        assert!(spill.buffers.iter().filter(|b| b.is_empty()).count() == 2);
        let again: Vec<u32> = (0..ids.len()).map(|_| spill.take()).collect();
        assert_eq!(spill.buffers.len(), ids.len(), "no new ids");
        assert!(
            again.iter().any(|&id| spill.start(id) == first),
            "memory reused"
        );
    }
}
