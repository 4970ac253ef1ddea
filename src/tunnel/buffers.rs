//! The tunnels' buffers: a ring-mapped buffer ring the kernel picks from when bytes arrive,
//! and heap buffers lent when that ring is empty or a reader is too slow to take a send.
//!
//! Where the kernel consumes ring buffers incrementally (IOU_PBUF_RING_INC, 6.12+), a receive
//! takes only the bytes it got from the current buffer, and the next receive (of any tunnel)
//! goes on in the same buffer: a 64-byte message holds 64 bytes, not a whole buffer. Without
//! it, every receive that completes holds a whole buffer until its bytes are sent, so a burst
//! of more receives than there are buffers (a worker that was off its CPU for a few
//! milliseconds, with thousands of tunnels) empties the ring, and each receive after that
//! costs a failed receive, a poll and a heap buffer: the most work exactly when the worker has
//! the least CPU, which is how a shared CPU made the fanout benchmark collapse.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::IoUring;
use io_uring::types::BufRingEntry;

/// The buffer group of the receive buffers (the ring has only this one).
pub(super) const GROUP: u16 = 0;
/// Heap buffers kept for reuse at least (see [`Spill::new`]).
pub(super) const SPILL_KEEP: usize = 16;
/// `io_uring_register` opcode and flag for a buffer ring consumed incrementally (6.12+).
const IORING_REGISTER_PBUF_RING: libc::c_uint = 22;
const IOU_PBUF_RING_INC: u16 = 2;
/// A completion's flag: its buffer will get more completions (incremental consumption).
const IORING_CQE_F_BUF_MORE: u32 = 1 << 4;

/// `struct io_uring_buf_reg`, with the `flags` field io-uring 0.6 does not expose.
#[repr(C)]
struct BufReg {
    ring_addr: u64,
    ring_entries: u32,
    bgid: u16,
    flags: u16,
    resv: [u64; 3],
}

/// What the engine knows of one ring buffer while the kernel may still fill it.
#[derive(Clone, Copy, Default)]
struct Use {
    /// Where the kernel's next piece of this buffer starts.
    next: u32,
    /// Pieces received into it and not yet handed back.
    out: u16,
    /// The kernel moved on to the next buffer: once `out` is 0, it can go back.
    full: bool,
}

/// Receive buffers lent to the kernel through a ring-mapped buffer ring. The memory is
/// leaked on purpose: the kernel may hold any buffer until the ring goes away, and a
/// worker's ring lives as long as the process.
pub(super) struct BufferRing {
    entries: *mut BufRingEntry,
    mask: u16,
    tail: u16,
    base: *mut u8,
    pub(super) size: u32,
    /// Buffers are consumed piece by piece (see the module docs).
    pub(super) incremental: bool,
    uses: Box<[Use]>,
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
        let incremental = register(ring, entries, slots, IOU_PBUF_RING_INC).is_ok();
        if !incremental {
            register(ring, entries, slots, 0)?;
        }
        let mut buffers = BufferRing {
            entries,
            mask: slots - 1,
            tail: 0,
            base: memory.as_mut_ptr(),
            size,
            incremental,
            uses: vec![Use::default(); usize::from(count)].into_boxed_slice(),
        };
        for id in 0..count {
            buffers.publish(id);
        }
        Ok(buffers)
    }

    /// A receive put `len` bytes into ring buffer `id`; `flags`: its completion's. Returns
    /// where in the buffer they start. Each piece is handed back once with `give_back`.
    pub(super) fn received(&mut self, id: u16, len: u32, flags: u32) -> u32 {
        let more = self.incremental && flags & IORING_CQE_F_BUF_MORE != 0;
        let used = &mut self.uses[usize::from(id)];
        let at = used.next;
        used.next += len;
        used.out += 1;
        used.full = !more;
        debug_assert!(used.next <= self.size, "a piece past its buffer's end");
        at
    }

    /// The `len` bytes at `at` that a receive put in ring buffer `id`, for the record layer:
    /// only while that piece is ours (until it is given back).
    pub(super) fn piece_mut(&mut self, id: u16, at: u32, len: u32) -> &mut [u8] {
        assert!(at + len <= self.size, "a piece inside its buffer");
        // SAFETY: the range lies inside buffer `id` (checked), whose memory was initialised
        // at registration and is never freed; the kernel writes only past the pieces it
        // completed (or into a buffer given back), and `&mut self` keeps this the one
        // reference into it until then.
        #[allow(unsafe_code)]
        unsafe {
            std::slice::from_raw_parts_mut(self.start(id).add(at as usize), len as usize)
        }
    }

    pub(super) fn start(&self, id: u16) -> *mut u8 {
        // SAFETY: ids handed out by the kernel are ones we provided, all inside the memory.
        #[allow(unsafe_code)]
        unsafe {
            self.base.add(usize::from(id) * self.size as usize)
        }
    }

    /// Hands a piece of buffer `id` back; the buffer goes back to the kernel with its last
    /// piece, once the kernel has moved past it.
    pub(super) fn give_back(&mut self, id: u16) {
        let used = &mut self.uses[usize::from(id)];
        debug_assert!(used.out > 0, "a piece given back twice");
        used.out -= 1;
        if used.out > 0 || !used.full {
            return;
        }
        *used = Use::default();
        self.publish(id);
    }

    /// Puts buffer `id` in the ring, whole: one entry and a tail store, no system call.
    fn publish(&mut self, id: u16) {
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

/// Registers `slots` entries at `entries` as buffer group [`GROUP`] of `ring`.
fn register(ring: &IoUring, entries: *mut BufRingEntry, slots: u16, flags: u16) -> io::Result<()> {
    let reg = BufReg {
        ring_addr: entries as u64,
        ring_entries: u32::from(slots),
        bgid: GROUP,
        flags,
        resv: [0; 3],
    };
    // SAFETY: `reg` is a valid io_uring_buf_reg for the call's duration; the entries it names
    // are page-aligned, zeroed, `slots` long and never freed (the kernel may use them for the
    // ring's life).
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.as_raw_fd(),
            IORING_REGISTER_PBUF_RING,
            std::ptr::from_ref(&reg),
            1,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Heap buffers: for reads when the kernel ring is empty, and for the unsent rest of a send
/// the reader could not take at once. Each is lent for one read or one rest and its sends.
/// Ids stay valid for good; up to `keep` of them keep their memory for reuse. The
/// memory is never initialised by us: only the kernel (a receive) or a copy of bytes already
/// received writes it, and it is only ever read through raw pointers up to what was written.
/// (Zeroed when allocated, so the TLS record layer may also work in it as a byte slice.)
pub(super) struct Spill {
    buffers: Vec<Box<[u8]>>,
    /// The buffer after each one in a direction's queue (see `queue`).
    links: Vec<u32>,
    /// Free ids whose buffer kept its memory.
    kept: Vec<u32>,
    /// Free ids whose memory was given back (an empty box: no allocation).
    empty: Vec<u32>,
    pub(super) size: usize,
    keep: usize,
}

impl Spill {
    /// Buffers of `size` bytes, up to `keep` of them kept for reuse once free. TLS tunnels
    /// seal every upstream message into one, so with many busy wss tunnels hundreds are in
    /// use at once: keeping only a few would free and fault in (and zero) fresh pages for
    /// most messages (measured: 1.5 page faults per message at 200 tunnels with 16 kept).
    pub(super) fn new(size: usize, keep: usize) -> Self {
        Spill {
            buffers: Vec::new(),
            links: Vec::new(),
            kept: Vec::new(),
            empty: Vec::new(),
            size,
            keep: keep.max(SPILL_KEEP),
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
                self.links.push(u32::MAX);
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

    /// Chains buffer `next` after buffer `id`.
    pub(super) fn link(&mut self, id: u32, next: u32) {
        self.links[id as usize] = next;
    }

    /// The buffer chained after `id`.
    pub(super) fn next(&self, id: u32) -> u32 {
        self.links[id as usize]
    }

    /// Buffer ids handed out so far.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.buffers.len()
    }

    pub(super) fn put(&mut self, id: u32) {
        if self.kept.len() < self.keep {
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

    fn tail(ring: &BufferRing) -> u16 {
        // SAFETY: the entries are alive as long as the ring; only the tail is read.
        #[allow(unsafe_code)]
        unsafe {
            AtomicU16::from_ptr(BufRingEntry::tail(ring.entries).cast_mut()).load(Ordering::Acquire)
        }
    }

    #[test]
    fn a_buffer_goes_back_once_the_kernel_is_past_it_and_every_piece_is_back() {
        let ring = IoUring::new(8).expect("io_uring");
        let mut buffers = BufferRing::register(&ring, 64, 2).expect("a buffer ring");
        assert_eq!(tail(&buffers), 2);
        if !buffers.incremental {
            assert_eq!(buffers.received(1, 64, 0), 0);
            buffers.give_back(1);
            assert_eq!(tail(&buffers), 3);
            return;
        }
        let more = IORING_CQE_F_BUF_MORE;
        assert_eq!(buffers.received(0, 10, more), 0);
        assert_eq!(buffers.received(0, 20, more), 10);
        buffers.give_back(0);
        buffers.give_back(0);
        assert_eq!(tail(&buffers), 2, "the kernel may still fill the rest");
        assert_eq!(buffers.received(0, 34, 0), 30);
        assert_eq!(buffers.piece_mut(0, 30, 34).len(), 34);
        assert_eq!(tail(&buffers), 2, "a piece is still out");
        buffers.give_back(0);
        assert_eq!(tail(&buffers), 3, "back whole, once");
        assert_eq!(
            buffers.received(0, 5, more),
            0,
            "a buffer back starts afresh"
        );
    }

    #[test]
    fn spill_buffers_are_reused_and_only_the_kept_keep_memory() {
        let mut spill = Spill::new(64, 0);
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
