//! How a direction's bytes leave: a piece of a read cut short, by its ring buffer's end or
//! by its receive's cap, waits for the rest (the kernel says bytes are still in the socket)
//! and goes out with it, in one send (one TCP segment) instead of two.
#![allow(clippy::disallowed_methods)] // the peers are plain threads, not a worker

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::super::testing::{MULTISHOT, pair, wait_until};
use super::super::{Report, Tunnels};
use super::RECV_CAP;
use crate::observe::metrics::WorkerMetrics;

/// Ring buffers of one receive's cap, so the first buffer's end and the first receive's cap
/// fall on the same byte.
const BUFFER: u32 = RECV_CAP;
/// Bytes that leave 1,000 of the first buffer (and of a first receive's cap).
const FIRST: usize = BUFFER as usize - 1000;
/// A write that arrives whole (one loopback segment) but does not fit in those 1,000.
const LAST: usize = 3000;

fn byte(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)) as u8
}

/// A client whose writes the test asks for, and an upstream that checks every byte it
/// reads and half-closes at the end of the stream.
struct Peers {
    writes: mpsc::Sender<Option<usize>>,
    read: Arc<AtomicU64>,
    threads: [JoinHandle<()>; 2],
}

impl Peers {
    /// Waits for both peers to finish: the writer once told no more, the reader at the
    /// end of the stream.
    fn join(self) {
        drop(self.writes);
        for thread in self.threads {
            thread.join().unwrap();
        }
    }
}

fn peers(listener: &TcpListener) -> (Peers, [OwnedFd; 2]) {
    let (mut client, proxy_client) = pair(listener);
    let (mut upstream, proxy_upstream) = pair(listener);
    let (writes, asked) = mpsc::channel::<Option<usize>>();
    let writer = std::thread::spawn(move || {
        let mut at = 0u64;
        for write in asked {
            let Some(n) = write else {
                client.shutdown(Shutdown::Write).unwrap();
                continue;
            };
            let bytes: Vec<u8> = (at..at + n as u64).map(byte).collect();
            client.write_all(&bytes).unwrap();
            at += n as u64;
        }
    });
    let read = Arc::new(AtomicU64::default());
    let counted = read.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0u64;
        loop {
            let n = upstream.read(&mut buf).unwrap();
            if n == 0 {
                upstream.shutdown(Shutdown::Write).unwrap();
                return;
            }
            for (k, &b) in buf[..n].iter().enumerate() {
                assert_eq!(b, byte(at + k as u64), "byte {}", at + k as u64);
            }
            at += n as u64;
            counted.store(at, Ordering::SeqCst);
        }
    });
    let peers = Peers {
        writes,
        read,
        threads: [writer, reader],
    };
    (peers, [proxy_client.into(), proxy_upstream.into()])
}

/// Sends the engine made for the client's last write of [`LAST`] bytes, after [`FIRST`]
/// bytes went through: on the same tunnel (its receive's cap and the ring buffer end
/// together), or on one that ended before (only the buffer ends: the receive runs on).
/// None where tunnels receive one read at a time (kernels before 6.17).
fn sends_for_the_last_write(same_tunnel: bool) -> Option<u64> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let metrics = Arc::new(WorkerMetrics::default());
        let tunnels =
            Rc::new(Tunnels::new(0, metrics.clone(), 16, BUFFER, 4, 0, MULTISHOT).unwrap());
        if !tunnels.multishot() {
            eprintln!("skipped: no capped multishot receives on this kernel");
            return None;
        }
        let ended: Rc<RefCell<Vec<Report>>> = Rc::default();
        let into = ended.clone();
        tokio::task::spawn_local(tunnels.clone().run(
            move |_, report| into.borrow_mut().push(report),
            |_| panic!("nothing detaches"),
        ));
        let (first, fds) = peers(&listener);
        tunnels.open(fds, [0, 0], None, 0);
        first.writes.send(Some(FIRST)).unwrap();
        wait_until("the first bytes upstream", || {
            first.read.load(Ordering::SeqCst) == FIRST as u64
        })
        .await;
        let last = if same_tunnel {
            first
        } else {
            first.writes.send(None).unwrap();
            wait_until("the first tunnel to end", || ended.borrow().len() == 1).await;
            first.join();
            let (second, fds) = peers(&listener);
            tunnels.open(fds, [0, 0], None, 1);
            second
        };
        let before = metrics.sends.get();
        let at = last.read.load(Ordering::SeqCst);
        last.writes.send(Some(LAST)).unwrap();
        wait_until("the last write upstream", || {
            last.read.load(Ordering::SeqCst) == at + LAST as u64
        })
        .await;
        let sends = metrics.sends.get() - before;
        // The end of stream still follows the held bytes.
        last.writes.send(None).unwrap();
        let count = if same_tunnel { 1 } else { 2 };
        wait_until("the tunnel to end", || ended.borrow().len() == count).await;
        last.join();
        let report = ended.borrow_mut().pop().unwrap();
        assert_eq!(report.client_to_upstream, at + LAST as u64);
        Some(sends)
    })
}

#[test]
fn a_piece_cut_by_the_receive_cap_goes_out_with_its_rest() {
    if let Some(sends) = sends_for_the_last_write(true) {
        assert_eq!(
            sends, 1,
            "{LAST} bytes that came together went out in {sends} sends"
        );
    }
}

#[test]
fn a_piece_cut_by_its_buffer_end_goes_out_with_its_rest() {
    if let Some(sends) = sends_for_the_last_write(false) {
        assert_eq!(
            sends, 1,
            "{LAST} bytes that came together went out in {sends} sends"
        );
    }
}
