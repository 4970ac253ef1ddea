//! Per-worker buffers for request heads and plain responses: a free list, so a worker reuses
//! them instead of allocating per connection. Thread-local. (Tunnels read into
//! kernel-selected buffers instead; see [`crate::tunnel`].)

use std::cell::RefCell;

/// A free list of equally sized buffers, owned by one worker thread.
#[derive(Debug)]
pub struct BufferPool {
    free: RefCell<Vec<Vec<u8>>>,
    size: usize,
    keep: usize,
}

impl BufferPool {
    /// Buffers of `size` bytes; at most `keep` free ones are kept for reuse.
    pub fn new(size: usize, keep: usize) -> Self {
        BufferPool {
            free: RefCell::new(Vec::new()),
            size,
            keep,
        }
    }

    /// An empty buffer with capacity of at least the pool's size.
    pub fn get(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.size))
    }

    /// Returns a buffer for reuse; one that grew, or one too many, is freed instead.
    pub fn put(&self, mut buf: Vec<u8>) {
        let mut free = self.free.borrow_mut();
        if buf.capacity() == self.size && free.len() < self.keep {
            buf.clear();
            free.push(buf);
        }
    }

    /// Free buffers currently held.
    pub fn idle(&self) -> usize {
        self.free.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_buffers_up_to_keep() {
        let pool = BufferPool::new(64, 1);
        let a = pool.get();
        let b = pool.get();
        assert_eq!(a.capacity(), 64);
        let ptr = a.as_ptr();
        pool.put(a);
        pool.put(b);
        assert_eq!(pool.idle(), 1);
        let again = pool.get();
        assert_eq!(again.as_ptr(), ptr);
    }

    #[test]
    fn drops_grown_buffers() {
        let pool = BufferPool::new(8, 4);
        let mut a = pool.get();
        a.extend_from_slice(&[0; 100]);
        pool.put(a);
        assert_eq!(pool.idle(), 0);
    }
}
