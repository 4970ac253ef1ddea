//! Tunnels relayed by one engine over real loopback sockets, detached mid-stream and
//! adopted by a second engine: every byte arrives once, in order, and half-closes pass.
#![allow(clippy::disallowed_methods)] // the peers are plain threads, not a worker

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::super::testing::{MULTISHOT, pair, wait_until};
use super::super::{Report, Tunnels};
use super::Detached;
use crate::observe::metrics::WorkerMetrics;

/// Byte `i` of the stream with `seed`: no run repeats, so a lost, doubled or swapped
/// piece shows.
fn byte(seed: u64, i: u64) -> u8 {
    ((i.wrapping_mul(2_654_435_761) >> 13) ^ seed ^ (i >> 9)) as u8
}

/// Writes the first half of the stream, waits for `gate` (the handoff starting), writes the
/// rest, then half-closes: no tunnel can end before the handoff.
fn writer(mut to: TcpStream, seed: u64, total: u64, gate: Arc<Gate>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut at = 0u64;
        // Bulk streams write in large pieces, so the proxy's reads count towards splicing.
        let piece = if total > 1 << 24 {
            64 * 1024
        } else {
            3000 + (seed as usize % 7) * 1000
        };
        let mut chunk = vec![0u8; piece];
        while at < total {
            let n = (total - at).min(chunk.len() as u64) as usize;
            for (k, b) in chunk[..n].iter_mut().enumerate() {
                *b = byte(seed, at + k as u64);
            }
            to.write_all(&chunk[..n]).unwrap();
            at += n as u64;
            if at >= total / 2 && !gate.open.load(Ordering::SeqCst) {
                gate.halfway.fetch_add(1, Ordering::SeqCst);
                while !gate.open.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        to.shutdown(Shutdown::Write).unwrap();
    })
}

/// Reads to end of stream (after `stall`), checking every byte; returns how many.
fn reader(mut from: TcpStream, seed: u64, stall: Duration) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        std::thread::sleep(stall);
        from.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut at = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from.read(&mut buf).unwrap();
            if n == 0 {
                return at;
            }
            for (k, &b) in buf[..n].iter().enumerate() {
                assert_eq!(
                    b,
                    byte(seed, at + k as u64),
                    "stream {seed} at byte {}",
                    at + k as u64
                );
            }
            at += n as u64;
        }
    })
}

/// Opened when the handoff starts; counts the writers waiting for it.
#[derive(Default)]
struct Gate {
    open: AtomicBool,
    halfway: AtomicUsize,
}

fn engine() -> Rc<Tunnels<usize>> {
    let metrics = Arc::new(WorkerMetrics::default());
    Rc::new(Tunnels::new(0, metrics, 64, 16 * 1024, 16, 8, MULTISHOT).unwrap())
}

/// `count` tunnels, each streaming `total` bytes both ways; `stall` tunnels' upstream starts
/// reading late (so bytes wait in heap buffers when the handoff comes). Returns what the
/// adopting engine reported per tunnel, and how many directions were handed over with
/// bytes in a heap buffer and with a pipe.
fn hand_over_mid_stream(
    count: usize,
    total: u64,
    stall: usize,
) -> (Vec<(usize, Report)>, usize, usize) {
    let gate = Arc::new(Gate::default());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut threads = Vec::new();
    let mut fds: Vec<[OwnedFd; 2]> = Vec::new();
    for t in 0..count {
        let (client, proxy_client) = pair(&listener);
        let (upstream, proxy_upstream) = pair(&listener);
        let seed = t as u64 * 2;
        if t < stall && total <= 1 << 20 {
            // Small socket buffers (not for bulk, which they would slow to a crawl), so a stalled reader's bytes soon wait in the proxy.
            socket2::SockRef::from(&upstream)
                .set_recv_buffer_size(32 * 1024)
                .unwrap();
            socket2::SockRef::from(&proxy_upstream)
                .set_send_buffer_size(32 * 1024)
                .unwrap();
        }
        let late = if t < stall {
            Duration::from_millis(300)
        } else {
            Duration::ZERO
        };
        threads.push((
            writer(client.try_clone().unwrap(), seed, total, gate.clone()),
            reader(upstream.try_clone().unwrap(), seed, late),
        ));
        threads.push((
            writer(upstream, seed + 1, total, gate.clone()),
            reader(client, seed + 1, Duration::ZERO),
        ));
        fds.push([proxy_client.into(), proxy_upstream.into()]);
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let (ended, held, piped) = local.block_on(&runtime, async move {
        let (old, new) = (engine(), engine());
        let detached: Rc<RefCell<Vec<Detached<usize>>>> = Rc::default();
        let ended: Rc<RefCell<Vec<(usize, Report)>>> = Rc::default();
        let into = detached.clone();
        tokio::task::spawn_local(old.clone().run(
            |t, r: Report| {
                eprintln!(
                    "tunnel {t} ended in the old engine: {} {} {}",
                    r.end, r.client_to_upstream, r.upstream_to_client
                );
                std::process::abort();
            },
            move |d| into.borrow_mut().push(d),
        ));
        let into = ended.clone();
        tokio::task::spawn_local(new.clone().run(
            move |t, report| into.borrow_mut().push((t, report)),
            |_| panic!("detached from the new engine"),
        ));
        for (t, pair) in fds.into_iter().enumerate() {
            old.open(pair, [0, 0], None, t);
        }
        wait_until("every socket in the old ring's file table", || {
            old.registered() == 2 * count
        })
        .await;
        // Every writer whose reader reads is halfway (a stalled upstream's client may be
        // stuck before that, its bytes piling up in the proxy).
        let halfway = || gate.halfway.load(Ordering::SeqCst) >= 2 * count - stall;
        wait_until("the writers to get halfway", halfway).await;
        // Writers go on as the handoff starts: bytes arrive while tunnels come to rest.
        gate.open.store(true, Ordering::SeqCst);
        old.detach_all();
        wait_until("every tunnel to detach", || {
            detached.borrow().len() == count
        })
        .await;
        assert!(old.is_empty());
        // The old ring lets go of the sockets that left (or the new process could not
        // close them).
        wait_until("the old ring's file table to empty", || {
            old.registered() == 0
        })
        .await;
        let dirs = detached
            .borrow()
            .iter()
            .flat_map(|d| &d.dirs)
            .map(|d| (!d.held.is_empty(), d.pipe.is_some()))
            .collect::<Vec<_>>();
        let held = dirs.iter().filter(|d| d.0).count();
        let piped = dirs.iter().filter(|d| d.1).count();
        // Through the wire, as between two processes: bytes encoded, descriptors passed
        // (the sender's copies closed).
        let (a, b) = crate::os::fd_passing::seqpacket_pair().unwrap();
        let (mut bytes, mut fds) = (Vec::new(), Vec::new());
        for tunnel in detached.borrow_mut().drain(..) {
            let tunnel = tunnel.map(|t| (t as u64).to_le_bytes().to_vec());
            let mut earlier = [Vec::new(), Vec::new()];
            for (d, part) in tunnel.held_parts() {
                crate::os::fd_passing::send(&a, part, &[]).unwrap();
                assert!(crate::os::fd_passing::recv(&b, &mut bytes, &mut fds).unwrap());
                earlier[d].extend_from_slice(&bytes);
            }
            let mut message = Vec::new();
            let raw = tunnel.encode(&mut message);
            crate::os::fd_passing::send(&a, &message, &raw).unwrap();
            drop(tunnel);
            assert!(crate::os::fd_passing::recv(&b, &mut bytes, &mut fds).unwrap());
            let tunnel = Detached::decode(&bytes, std::mem::take(&mut fds), &mut earlier).unwrap();
            let tunnel = tunnel.map(|p| u64::from_le_bytes(p.try_into().unwrap()) as usize);
            new.adopt(tunnel);
        }
        wait_until("every tunnel to end", || ended.borrow().len() == count).await;
        wait_until("the new ring's file table to empty", || {
            new.registered() == 0
        })
        .await;
        (ended.take(), held, piped)
    });
    for (write, read) in threads {
        write.join().unwrap();
        assert_eq!(read.join().unwrap(), total);
    }
    (ended, held, piped)
}

#[test]
fn tunnels_handed_over_mid_stream_lose_no_byte() {
    let total = 600_000;
    let (ended, held, _) = hand_over_mid_stream(12, total, 4);
    assert_eq!(ended.len(), 12);
    assert!(
        held > 0,
        "no direction had bytes waiting in a buffer at the handoff"
    );
    for (t, report) in &ended {
        assert!(
            matches!(report.end, super::super::End::Closed),
            "{t}: {}",
            report.end
        );
        assert_eq!(report.client_to_upstream, total, "tunnel {t}");
        assert_eq!(report.upstream_to_client, total, "tunnel {t}");
    }
}

#[test]
fn spliced_tunnels_keep_their_pipes_across_a_handoff() {
    // Bulk streams switch to splice after 256 KiB, well before the handoff.
    let total = 32 * 1024 * 1024;
    let (ended, _, piped) = hand_over_mid_stream(2, total, 1);
    assert_eq!(ended.len(), 2);
    assert!(piped > 0, "no direction was spliced at the handoff");
}

/// A tunnel opened once detaching began leaves at once, with no operation whose completion
/// would wake the loop: the loop must still hand it on.
#[test]
fn a_tunnel_opened_while_detaching_leaves_an_idle_engine() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (_client, proxy_client) = pair(&listener);
    let (_upstream, proxy_upstream) = pair(&listener);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let old = engine();
        let detached: Rc<RefCell<Vec<Detached<usize>>>> = Rc::default();
        let into = detached.clone();
        tokio::task::spawn_local(old.clone().run(
            |_, _| panic!("ended instead of leaving"),
            move |d| into.borrow_mut().push(d),
        ));
        old.detach_all();
        // Let the loop park on an empty ring first.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let fds = [proxy_client.into(), proxy_upstream.into()];
        old.open(fds, [0, 0], None, 7);
        wait_until("the tunnel to leave", || detached.borrow().len() == 1).await;
        assert_eq!(detached.borrow()[0].payload, 7);
    });
}

/// A tunnel detached for a handoff that is over is kept: it relays on in the engine that is
/// still detaching, and is not detached again.
#[test]
fn a_kept_tunnel_relays_on_while_the_engine_detaches() {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut client, proxy_client) = pair(&listener);
    let (mut upstream, proxy_upstream) = pair(&listener);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let ended = local.block_on(&runtime, async move {
        let old = engine();
        let detached: Rc<RefCell<Vec<Detached<usize>>>> = Rc::default();
        let ended: Rc<RefCell<Vec<(usize, Report)>>> = Rc::default();
        let (into, done) = (detached.clone(), ended.clone());
        tokio::task::spawn_local(old.clone().run(
            move |t, r| done.borrow_mut().push((t, r)),
            move |d| into.borrow_mut().push(d),
        ));
        let fds = [proxy_client.into(), proxy_upstream.into()];
        old.open(fds, [0, 0], None, 3);
        old.detach_all();
        wait_until("the tunnel to leave", || detached.borrow().len() == 1).await;
        let tunnel = detached.borrow_mut().pop().unwrap();
        old.keep(tunnel);
        let relay = tokio::task::spawn_blocking(move || {
            client.write_all(b"kept").unwrap();
            let mut got = [0; 4];
            upstream.read_exact(&mut got).unwrap();
            upstream.write_all(&got).unwrap();
            client.read_exact(&mut got).unwrap();
            drop((client, upstream));
            got
        });
        assert_eq!(&relay.await.unwrap(), b"kept");
        wait_until("the tunnel to end", || ended.borrow().len() == 1).await;
        assert!(detached.borrow().is_empty(), "detached again");
        ended.take()
    });
    assert_eq!(ended[0].0, 3);
    assert_eq!(ended[0].1.client_to_upstream, 4);
}
