//! Per-worker relay buffers. Tunnels receive into kernel-selected buffers (io_uring provided
//! buffers with buffer select): a buffer is taken only when bytes arrive and handed back once
//! they are written on, so an idle tunnel pins no buffer at all. Plain requests and the rare
//! moment the group runs dry use an ordinary pool of owned buffers. Both are thread-local.

use std::cell::RefCell;
use std::io;
use std::os::fd::RawFd;

use io_uring::{cqueue, opcode, squeue, types};
use tokio_uring::{OneshotOutputTransform, UnsubmittedOneshot};

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

/// A group of equally sized receive buffers lent to the kernel (IORING_OP_PROVIDE_BUFFERS).
/// The memory is leaked on purpose: the kernel may hold any buffer until the ring goes away,
/// and a worker's ring lives as long as the process.
#[derive(Debug)]
pub struct KernelBuffers {
    base: *mut u8,
    size: usize,
    count: u16,
    group: u16,
}

/// What one receive into a kernel-selected buffer brought.
#[derive(Debug)]
pub enum Received {
    /// `len` bytes in buffer `id`; hand it back with [`KernelBuffers::give_back`].
    Data {
        id: u16,
        len: usize,
    },
    Eof,
    /// Bytes are waiting but every buffer of the group is out: read them another way.
    NoBuffer,
    Failed(io::Error),
}

impl KernelBuffers {
    /// Lends `count` buffers of `size` bytes to this thread's ring as buffer group `group`.
    pub async fn provide(size: usize, count: u16, group: u16) -> io::Result<&'static Self> {
        let memory: &'static mut [u8] = Vec::leak(vec![0u8; size * usize::from(count)]);
        let buffers: &'static KernelBuffers = Box::leak(Box::new(KernelBuffers {
            base: memory.as_mut_ptr(),
            size,
            count,
            group,
        }));
        let sqe = opcode::ProvideBuffers::new(buffers.base, size as i32, count, group, 0).build();
        let res = UnsubmittedOneshot::new((), Completion, sqe).submit().await;
        res.map(|_| buffers)
    }

    /// Receives from `fd` into a buffer the kernel picks when bytes arrive.
    pub async fn recv(&'static self, fd: RawFd) -> Received {
        let sqe = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), self.size as u32)
            .buf_group(self.group)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT);
        UnsubmittedOneshot::new((), ReceiveInto(self), sqe)
            .submit()
            .await
    }

    /// Start of buffer `id`.
    fn start(&self, id: u16) -> *mut u8 {
        assert!(id < self.count);
        // SAFETY: `id < count`, so the offset stays inside the leaked allocation.
        #[allow(unsafe_code)]
        unsafe {
            self.base.add(usize::from(id) * self.size)
        }
    }

    /// Writes the first `len` bytes of buffer `id` to `fd`, all of them.
    /// The buffer is ours until `give_back` (the kernel reported it filled), and its memory
    /// lives as long as the process, so the kernel may read it for as long as the send runs.
    pub async fn send(&'static self, fd: RawFd, id: u16, len: usize) -> io::Result<()> {
        assert!(len <= self.size);
        let start = self.start(id);
        let mut at = 0;
        while at < len {
            // SAFETY: `at < len <= size`, inside buffer `id` of the leaked allocation.
            #[allow(unsafe_code)]
            let ptr = unsafe { start.add(at) };
            let sqe = opcode::Send::new(types::Fd(fd), ptr, (len - at) as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build();
            match UnsubmittedOneshot::new((), Completion, sqe)
                .submit()
                .await?
            {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => at += n as usize,
            }
        }
        Ok(())
    }

    /// Returns buffer `id` to the kernel. The completion needs no waiting for: tokio-uring
    /// keeps the finished op until the kernel reports it.
    pub fn give_back(&'static self, id: u16) {
        let sqe = opcode::ProvideBuffers::new(self.start(id), self.size as i32, 1, self.group, id)
            .build();
        drop(UnsubmittedOneshot::new((), Completion, sqe).submit());
    }
}

/// Maps a completion to `io::Result<i32>`.
struct Completion;

impl OneshotOutputTransform for Completion {
    type Output = io::Result<i32>;
    type StoredData = ();

    fn transform_oneshot_output(self, _: (), cqe: cqueue::Entry) -> Self::Output {
        if cqe.result() >= 0 {
            Ok(cqe.result())
        } else {
            Err(io::Error::from_raw_os_error(-cqe.result()))
        }
    }
}

/// Maps a buffer-select receive's completion to [`Received`].
struct ReceiveInto(&'static KernelBuffers);

impl OneshotOutputTransform for ReceiveInto {
    type Output = Received;
    type StoredData = ();

    fn transform_oneshot_output(self, _: (), cqe: cqueue::Entry) -> Received {
        let id = cqueue::buffer_select(cqe.flags());
        match (cqe.result(), id) {
            (n, Some(id)) if n > 0 => Received::Data {
                id,
                len: n as usize,
            },
            (n, id) => {
                if let Some(id) = id {
                    self.0.give_back(id);
                }
                match n {
                    0 => Received::Eof,
                    n if -n == libc::ENOBUFS => Received::NoBuffer,
                    n => Received::Failed(io::Error::from_raw_os_error(-n)),
                }
            }
        }
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
