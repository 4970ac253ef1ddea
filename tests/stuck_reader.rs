//! Clients that stop reading must not starve the other tunnels of their worker: a blocked
//! send gives its receive buffer back to the ring, so with more stuck readers than
//! `limits.receive_buffers` (256 by default) other tunnels still read into ring buffers, not
//! into heap buffers borrowed per message.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{Proxy, TestConfig, raw_tunnel, raw_upstream, upstreams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// More stuck readers than the default 256 receive buffers.
const STUCK: usize = 300;
/// Bytes each stuck client writes for the upstream to echo back at it: far more than its
/// small receive window and the proxy's send buffer towards it hold (the proxy reads about
/// 100 KiB of the echo before its send blocks), and less than the 256 KiB of bulk reads
/// that would move a direction to splice(2).
const PUSH: usize = 240 * 1024;
/// SO_RCVBUF of a stuck client (the kernel doubles it) and the MSS it advertises.
const STUCK_RCVBUF: usize = 4096;
const STUCK_MSS: u32 = 536;
/// Messages echoed through the one tunnel that still reads.
const MESSAGES: usize = 2000;
/// Stuck clients that read at last, to check what they were sent.
const CHECKED: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_readers_do_not_push_other_tunnels_onto_heap_buffers() {
    stuck_readers(TestConfig::default().one_receive_per_read()).await;
}

/// The same with multishot receives: each is capped, so a stuck reader's direction holds
/// little more than with one receive per read (uncapped, the proxy read 66 MB of echo for
/// these 300 readers, nearly all of it, before cancellations took effect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_readers_hold_little_with_multishot_receives_too() {
    stuck_readers(TestConfig::default().multishot()).await;
}

async fn stuck_readers(config: TestConfig) {
    let up = raw_upstream::start(|s, _, rest| raw_upstream::raw_echo(s, rest)).await;
    let config = format!("admin = \"127.0.0.1:0\"\n{}", config.workers(1).toml());
    let proxy = Proxy::start_raw(&config, &upstreams("backend", &[up]));
    assert!(
        proxy
            .wait_log("admin endpoint on", Duration::from_secs(10))
            .await
    );
    let admin = proxy.admin_addr();

    let mut stuck = Vec::with_capacity(STUCK);
    for _ in 0..STUCK {
        stuck.push(raw_tunnel::open_narrow(proxy.addr, STUCK_RCVBUF, STUCK_MSS).await);
    }
    // One client at a time, so that each stuck direction blocks while the ring still has
    // buffers (as readers that go quiet one by one do): pushed all at once, transfers in
    // progress would empty the ring, and directions would block on borrowed heap buffers
    // instead, leaving ring buffers free even without the fix. The client's own send
    // buffer takes the whole push at once, so "blocked" is read from the proxy: the next
    // client starts once this one's echo has spilled.
    let data = common::pseudo_random(PUSH, 42);
    let mut pushed = Vec::with_capacity(STUCK);
    for client in &mut stuck {
        let spilled = spilled(admin).await;
        pushed.push(push(client, &data).await);
        wait_spilled(admin, spilled + 1.0).await;
    }
    let echoed = settled(
        admin,
        "wsplice_relayed_bytes_total{direction=\"upstream->client\"}",
    )
    .await;
    let before = scrape(admin).await;
    eprintln!(
        "after the push: {} heap reads, {} spilled sends",
        before["wsplice_tunnel_heap_reads_total"], before["wsplice_tunnel_spilled_sends_total"]
    );
    assert_eq!(
        before["wsplice_spliced_directions_total"], 0.0,
        "a stuck tunnel went to splice(2); the test means to hold relay buffers"
    );
    assert!(
        echoed < (STUCK * PUSH) as f64 * 0.75,
        "the proxy read {echoed} bytes of echo for the stuck clients: they are not stuck"
    );

    let mut client = raw_tunnel::open(proxy.addr).await;
    for i in 0..MESSAGES {
        let message = format!("message {i:>8}");
        client.write_all(message.as_bytes()).await.unwrap();
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut back))
            .await
            .expect("echo within 5 s")
            .unwrap();
        assert_eq!(back, message.as_bytes(), "message {i}");
    }

    let after = scrape(admin).await;
    let heap_reads =
        after["wsplice_tunnel_heap_reads_total"] - before["wsplice_tunnel_heap_reads_total"];
    let spilled = after["wsplice_tunnel_spilled_sends_total"];
    eprintln!(
        "the proxy read {echoed} echoed bytes for {STUCK} stuck readers; {spilled} sends spilled; \
         {MESSAGES} messages echoed with {heap_reads} heap reads"
    );
    assert!(
        heap_reads <= 20.0,
        "{heap_reads} heap reads for {MESSAGES} messages: stuck readers hold the receive buffers"
    );
    assert!(
        spilled >= STUCK as f64,
        "only {spilled} sends spilled: the stuck readers did not block the proxy's sends"
    );

    // Readers that come back get every byte pushed at them, in order: the rest of a
    // blocked send waited in a heap buffer.
    for (i, (client, pushed)) in stuck.iter_mut().zip(&pushed).enumerate().take(CHECKED) {
        client.shutdown().await.unwrap();
        let got = common::read_to_close(client, Duration::from_secs(10)).await;
        assert!(
            got == data[..*pushed],
            "stuck client {i}: {} of {pushed} bytes, or differ",
            got.len()
        );
    }
}

/// Writes `data` into `client` until all is written or the proxy stops taking it (no
/// progress for 250 ms: the whole path is backed up); returns the bytes written.
async fn push(client: &mut TcpStream, data: &[u8]) -> usize {
    let mut written = 0;
    while written < data.len() {
        match tokio::time::timeout(Duration::from_millis(250), client.write(&data[written..])).await
        {
            Ok(Ok(n)) if n > 0 => written += n,
            Ok(result) => panic!("write to a stuck client: {result:?}"),
            Err(_) => break,
        }
    }
    written
}

async fn spilled(admin: SocketAddr) -> f64 {
    scrape(admin).await["wsplice_tunnel_spilled_sends_total"]
}

/// Waits (up to 10 s) until at least `n` tunnel sends have spilled.
async fn wait_spilled(admin: SocketAddr, n: f64) {
    for _ in 0..2000 {
        if spilled(admin).await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("fewer than {n} spilled sends after 10 s: a stuck reader did not block the proxy");
}

/// One scrape of the admin endpoint.
async fn scrape(admin: SocketAddr) -> HashMap<String, f64> {
    tokio::time::timeout(Duration::from_secs(10), common::scrape(admin))
        .await
        .expect("metrics within 10 s")
}

/// Waits until `metric` stops changing (the same value five polls in a row, 100 ms apart)
/// and returns it: the proxy moves what it can and then waits on the stuck clients.
async fn settled(admin: SocketAddr, metric: &str) -> f64 {
    let (mut last, mut same) = (f64::NAN, 0);
    for _ in 0..300 {
        let value = scrape(admin).await[metric];
        if value == last {
            same += 1;
            if same == 5 {
                return value;
            }
        } else {
            (last, same) = (value, 0);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{metric} still changing after 30 s: {last}");
}
