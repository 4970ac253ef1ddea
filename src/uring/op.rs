//! The handshake side's operations, run on the worker's one ring: the tunnels' ring
//! ([`crate::tunnel`]). An accept, a read, a connect or a write is a future, as with
//! tokio-uring, but its entry goes in with the tunnels' own entries, in the relay loop's
//! enter, and its completion comes off the same queue. One ring per worker means one enter
//! and one wake per turn for handshakes and tunnels together, where two rings (tokio-uring's
//! and the tunnels') each paid their own, and tokio-uring entered its ring on every park of
//! the thread even with nothing to submit.
//!
//! The contract with the loop that drives the ring: before it enters, it moves the entries
//! queued here into its submission queue ([`queued_into`]); every completion whose user data
//! carries [`TAG`] goes to [`complete`]; and before it sleeps it leaves its waker with
//! [`park`], so that an entry queued while it sleeps wakes it. The table is thread-local:
//! an operation completes on the thread that started it, whichever of its loops reaped it.
//!
//! An operation's data (its buffer, its address) stays where the kernel reads or writes it
//! until the completion comes, even if the future is dropped first: the data then moves,
//! boxed, into the operation's slot, and is freed with the completion. Only the data's heap
//! contents are pointed at, so the future itself may move.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use io_uring::{cqueue, squeue};

/// The bit of `user_data` that marks an operation of this table; the slot's index is below.
pub const TAG: u64 = 1 << 62;

/// What the kernel reported for one operation.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    /// The count or descriptor, or a negated errno.
    pub result: i32,
}

impl Completion {
    pub fn result(self) -> io::Result<i32> {
        if self.result >= 0 {
            Ok(self.result)
        } else {
            Err(io::Error::from_raw_os_error(-self.result))
        }
    }

    /// The result as a count (bytes moved, operations cancelled).
    pub fn count(self) -> io::Result<usize> {
        self.result().map(|n| n as usize)
    }
}

enum Slot {
    Free,
    /// In flight, with the task to wake.
    Waiting(Option<Waker>),
    Done(Completion),
    /// In flight, its future gone: the data waits here for the kernel to be done.
    Abandoned(#[allow(dead_code)] Box<dyn Any>),
}

#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Entries waiting for the loop's next enter.
    queued: Vec<squeue::Entry>,
    /// The sleeping loop.
    parked: Option<Waker>,
}

impl Table {
    fn take_slot(&mut self, slot: Slot) -> u32 {
        match self.free.pop() {
            Some(index) => {
                self.slots[index as usize] = slot;
                index
            }
            None => {
                self.slots.push(slot);
                u32::try_from(self.slots.len() - 1).expect("fewer than 2^32 operations")
            }
        }
    }

    fn release(&mut self, index: u32) {
        self.slots[index as usize] = Slot::Free;
        self.free.push(index);
    }
}

thread_local! {
    static TABLE: RefCell<Table> = RefCell::default();
}

/// An operation: its entry is queued on the first poll, and it resolves to its completion and
/// its data.
#[must_use = "an operation does nothing until awaited"]
pub struct Op<D: 'static> {
    data: Option<D>,
    sqe: Option<squeue::Entry>,
    slot: Option<u32>,
}

// The operation never relies on its own address: the kernel points only into `data`'s heap
// allocation (see `submit`).
impl<D> Unpin for Op<D> {}

/// The operation of `sqe`, keeping `data` until the kernel is done with it. Its user data is
/// set here.
///
/// # Safety
/// The memory `sqe` reads or writes must lie in `data`'s heap allocation (which stays put
/// however `data` moves) or otherwise outlive the operation, and nothing else may touch the
/// memory the kernel writes until the completion. Its descriptor must stay open until the
/// operation completes (else the kernel may act on whatever file reuses the number).
#[allow(unsafe_code)]
pub unsafe fn submit<D: 'static>(data: D, sqe: squeue::Entry) -> Op<D> {
    Op {
        data: Some(data),
        sqe: Some(sqe),
        slot: None,
    }
}

impl<D: 'static> Future for Op<D> {
    type Output = (Completion, D);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let (out, wake) = TABLE.with_borrow_mut(|table| match this.slot {
            None => {
                let sqe = this
                    .sqe
                    .take()
                    .expect("an operation polled after it completed");
                let index = table.take_slot(Slot::Waiting(Some(cx.waker().clone())));
                table.queued.push(sqe.user_data(TAG | u64::from(index)));
                this.slot = Some(index);
                (Poll::Pending, table.parked.take())
            }
            Some(index) => match &mut table.slots[index as usize] {
                Slot::Done(done) => {
                    let done = *done;
                    table.release(index);
                    this.slot = None;
                    let data = this.data.take().expect("an operation's data");
                    (Poll::Ready((done, data)), None)
                }
                Slot::Waiting(waker) => {
                    match waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => *waker = Some(cx.waker().clone()),
                    }
                    (Poll::Pending, None)
                }
                Slot::Free | Slot::Abandoned(_) => unreachable!("a live operation's slot"),
            },
        });
        if let Some(sleeping) = wake {
            sleeping.wake();
        }
        out
    }
}

impl<D: 'static> Drop for Op<D> {
    fn drop(&mut self) {
        let (Some(index), Some(data)) = (self.slot, self.data.take()) else {
            return;
        };
        let mut data = Some(data);
        let _ = TABLE.try_with(|table| {
            let mut table = table.borrow_mut();
            let data = data.take();
            if matches!(table.slots[index as usize], Slot::Done(_)) {
                table.release(index);
            } else {
                table.slots[index as usize] = Slot::Abandoned(Box::new(data));
            }
        });
        // The thread is ending with the operation in flight: the kernel may still use the
        // data, so it is never freed.
        std::mem::forget(data);
    }
}

/// Hands a completion carrying [`TAG`] to its operation.
pub fn complete(cqe: &cqueue::Entry) {
    let index = (cqe.user_data() & !TAG) as u32;
    let done = Completion {
        result: cqe.result(),
    };
    let (waker, abandoned) = TABLE.with_borrow_mut(|table| {
        match std::mem::replace(&mut table.slots[index as usize], Slot::Done(done)) {
            Slot::Waiting(waker) => (waker, None),
            Slot::Abandoned(data) => {
                table.release(index);
                (None, Some(data))
            }
            Slot::Free | Slot::Done(_) => unreachable!("a completion for no operation"),
        }
    });
    drop(abandoned);
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// Moves the entries queued since the last call onto the end of `into`.
pub fn queued_into(into: &mut Vec<squeue::Entry>) {
    TABLE.with_borrow_mut(|table| into.append(&mut table.queued));
}

/// Leaves the loop's waker for the next entry queued; `true` if some already are (then the
/// loop must not sleep).
pub fn park(waker: &Waker) -> bool {
    TABLE.with_borrow_mut(|table| {
        if !table.queued.is_empty() {
            return true;
        }
        match &table.parked {
            Some(w) if w.will_wake(waker) => {}
            _ => table.parked = Some(waker.clone()),
        }
        false
    })
}

/// Operations started on this thread and not yet completed (for tests).
#[cfg(test)]
pub fn in_flight() -> usize {
    TABLE.with_borrow(|table| table.slots.len() - table.free.len())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::rc::Rc;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use io_uring::{IoUring, opcode, types};

    use super::*;

    /// What a ring's loop does for this table, once: submit what is queued, wait for one
    /// completion and hand it over.
    fn drive(ring: &mut IoUring) {
        let mut entries = Vec::new();
        queued_into(&mut entries);
        for sqe in &entries {
            // SAFETY: the entries came through `submit`, whose callers keep their memory.
            #[allow(unsafe_code)]
            unsafe {
                ring.submission().push(sqe).unwrap();
            }
        }
        ring.submit_and_wait(1).unwrap();
        let cqe = ring.completion().next().expect("a completion");
        assert_ne!(cqe.user_data() & TAG, 0);
        complete(&cqe);
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A receive into a buffer that also holds `alive`, so the test sees when it is freed.
    fn receive(socket: &UnixStream, alive: &Rc<()>) -> Op<(Vec<u8>, Rc<()>)> {
        let mut buf = vec![0u8; 16];
        let sqe = opcode::Recv::new(types::Fd(socket.as_raw_fd()), buf.as_mut_ptr(), 16).build();
        // SAFETY: the receive writes into `buf`'s heap allocation, which is the op's data;
        // the socket outlives the operation in every test.
        #[allow(unsafe_code)]
        unsafe {
            submit((buf, alive.clone()), sqe)
        }
    }

    #[test]
    fn an_operation_completes_with_its_result_and_its_data() {
        let mut ring = IoUring::new(8).unwrap();
        let (ours, peer) = UnixStream::pair().unwrap();
        let alive = Rc::new(());
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut op = receive(&ours, &alive);
        assert!(Pin::new(&mut op).poll(&mut cx).is_pending());
        std::io::Write::write_all(&mut &peer, b"hello").unwrap();
        drive(&mut ring);
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "the completion wakes the task"
        );
        let Poll::Ready((done, (buf, _))) = Pin::new(&mut op).poll(&mut cx) else {
            panic!("completed, yet pending");
        };
        assert_eq!(done.result().unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(in_flight(), 0);
    }

    /// A future dropped in flight leaves its buffer where the kernel writes until the
    /// completion comes; then the buffer is freed and the slot reused.
    #[test]
    fn a_dropped_operation_keeps_its_data_until_the_kernel_is_done() {
        let mut ring = IoUring::new(8).unwrap();
        let (ours, peer) = UnixStream::pair().unwrap();
        let alive = Rc::new(());
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut op = receive(&ours, &alive);
        assert!(Pin::new(&mut op).poll(&mut cx).is_pending());
        drop(op);
        assert_eq!(
            Rc::strong_count(&alive),
            2,
            "freed while the kernel may write"
        );
        assert_eq!(in_flight(), 1);
        std::io::Write::write_all(&mut &peer, b"late").unwrap();
        drive(&mut ring);
        assert_eq!(Rc::strong_count(&alive), 1, "kept after its completion");
        assert_eq!(in_flight(), 0);
    }

    /// An entry queued while the loop sleeps wakes it; one queued before it parks keeps it
    /// from sleeping.
    #[test]
    fn queued_entries_wake_the_parked_loop() {
        let mut ring = IoUring::new(8).unwrap();
        let (ours, peer) = UnixStream::pair().unwrap();
        let alive = Rc::new(());
        let sleeping = Arc::new(Wakes::default());
        let loop_waker = Waker::from(sleeping.clone());
        assert!(!park(&loop_waker), "nothing queued yet");
        let mut op = receive(&ours, &alive);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut op).poll(&mut cx).is_pending());
        assert_eq!(
            sleeping.0.load(Ordering::SeqCst),
            1,
            "the loop was not woken"
        );
        assert!(park(&loop_waker), "the loop would sleep on a queued entry");
        std::io::Write::write_all(&mut &peer, b"x").unwrap();
        drive(&mut ring);
        assert!(Pin::new(&mut op).poll(&mut cx).is_ready());
    }
}
