//! The byte tunnel after a `101`: integrity, half-close in each direction, idle timeout.

mod common;

use std::time::{Duration, Instant};

use common::{Proxy, TestConfig, raw_upstream, upstreams};
use futures_util::{SinkExt, StreamExt};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

async fn open_tunnel(proxy: &Proxy) -> TcpStream {
    common::raw_tunnel::open(proxy.addr).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_in_random_chunks_arrive_intact_both_ways() {
    let up = raw_upstream::start(|s, _, rest| raw_upstream::raw_echo(s, rest)).await;
    let proxy = Proxy::start(&TestConfig::default(), &upstreams("backend", &[up]));
    let data = common::pseudo_random(4 << 20, 7);
    let sizes = common::pseudo_random(4096, 11);
    let stream = open_tunnel(&proxy).await;
    let got = echo_through(stream, data.clone(), move |i| {
        1 + (usize::from(sizes[i % sizes.len()]) * 257) % 65536
    })
    .await;
    assert_eq!(got.len(), data.len());
    assert_eq!(Sha1::digest(&got), Sha1::digest(&data));
}

/// With `limits.multishot_receive` (the default, Linux 6.17+) a direction receives with one
/// capped multishot receive and queues what arrives behind its send: bytes still arrive
/// intact both ways in random chunks, a half-close after them, and many tunnels share the
/// ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multishot_receives_relay_bytes_intact_both_ways() {
    relay_intact_after_saying(
        &TestConfig::default().multishot().toml(),
        "receive with capped multishot receives",
    )
    .await;
}

/// The same with one receive per read (`limits.multishot_receive = false`, older kernels,
/// and every `wss://` tunnel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_receive_per_read_relays_bytes_intact_both_ways() {
    let up = raw_upstream::start(|s, _, rest| raw_upstream::raw_echo(s, rest)).await;
    let config = TestConfig::default().one_receive_per_read();
    let proxy = Proxy::start(&config, &upstreams("backend", &[up]));
    random_chunks_both_ways(&proxy).await;
    assert!(
        !proxy.log().contains("multishot receives"),
        "multishot receives were on:\n{}",
        proxy.log()
    );
}

/// `limits.defer_taskrun = false` (what a worker picks where the kernel signals deferred
/// completion work late): the kernel runs that work inline, so tunnels receive once per
/// read whatever `multishot_receive` says, the log says why, and bytes arrive intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inline_ring_receives_once_per_read_and_says_why() {
    let config = TestConfig::default()
        .toml()
        .replace("[limits]\n", "[limits]\ndefer_taskrun = false\n");
    relay_intact_after_saying(
        &config,
        "once per read (capped multishot receives need a ring whose completion work waits for the loop",
    )
    .await;
}

/// A proxy on `config` that logs `said` as it starts relays bytes intact both ways.
async fn relay_intact_after_saying(config: &str, said: &str) {
    let up = raw_upstream::start(|s, _, rest| raw_upstream::raw_echo(s, rest)).await;
    let proxy = Proxy::start_raw(config, &upstreams("backend", &[up]));
    assert!(
        proxy.wait_log(said, Duration::from_secs(10)).await,
        "the proxy never said {said:?} (multishot receives need Linux 6.17+):\n{}",
        proxy.log()
    );
    random_chunks_both_ways(&proxy).await;
}

/// Four tunnels at once, each echoing 1 MiB written in random chunks, then half-closed.
async fn random_chunks_both_ways(proxy: &Proxy) {
    let mut tunnels = Vec::new();
    for seed in 0..4u64 {
        let stream = open_tunnel(proxy).await;
        tunnels.push(tokio::spawn(async move {
            let data = common::pseudo_random(1 << 20, seed + 20);
            let sizes = common::pseudo_random(4096, seed + 30);
            let got = echo_through(stream, data.clone(), move |i| {
                1 + (usize::from(sizes[i % sizes.len()]) * 131) % 32768
            })
            .await;
            assert_eq!(got.len(), data.len(), "tunnel {seed}");
            assert_eq!(Sha1::digest(&got), Sha1::digest(&data), "tunnel {seed}");
        }));
    }
    for t in tunnels {
        t.await.unwrap();
    }
}

/// Each tunnel's sockets sit in its worker ring's file table while it is open, and leave
/// it when it closes (a slot left filled would keep the socket alive without a descriptor),
/// and its descriptors are closed (through the ring). Read from the kernel's own view:
/// `/proc/PID/fdinfo` of a ring lists its filled slots, `/proc/PID/fd` the open sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_sockets_fill_registered_slots_and_leave_them_on_close() {
    let up = raw_upstream::start(|s, _, rest| raw_upstream::raw_echo(s, rest)).await;
    let proxy = Proxy::start(
        &TestConfig::default().workers(1),
        &upstreams("backend", &[up]),
    );
    let pid = proxy.pid();
    let before = open_sockets(pid);
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut stream = open_tunnel(&proxy).await;
        stream.write_all(b"ping").await.unwrap();
        let mut got = [0; 4];
        stream.read_exact(&mut got).await.unwrap();
        streams.push(stream);
    }
    assert!(open_sockets(pid) >= before + 10, "two sockets per tunnel");
    assert_eq!(
        registered_sockets(pid),
        10,
        "each open tunnel's two sockets are registered"
    );
    for mut stream in streams {
        stream.shutdown().await.unwrap();
        common::read_to_close(&mut stream, Duration::from_secs(10)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while registered_sockets(pid) != 0 {
        assert!(
            Instant::now() < deadline,
            "slots still filled after every tunnel closed: {}",
            registered_sockets(pid)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while open_sockets(pid) != before {
        assert!(
            Instant::now() < deadline,
            "{} sockets open after every tunnel closed, {before} before they opened",
            open_sockets(pid)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Handshakes run on the tunnels' ring: one io_uring instance per worker, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_has_one_ring_for_handshakes_and_tunnels() {
    let up = raw_upstream::start(|s, _, rest| raw_upstream::raw_echo(s, rest)).await;
    let proxy = Proxy::start(
        &TestConfig::default().workers(2),
        &upstreams("backend", &[up]),
    );
    let mut stream = open_tunnel(&proxy).await;
    stream.write_all(b"ping").await.unwrap();
    let mut got = [0; 4];
    stream.read_exact(&mut got).await.unwrap();
    let rings: Vec<_> = descriptors(proxy.pid())
        .into_iter()
        .filter(|(_, target)| target.contains("io_uring"))
        .collect();
    assert_eq!(rings.len(), 2, "rings of 2 workers: {rings:?}");
}

/// Each open descriptor of process `pid` (its number) and what it points at.
#[allow(clippy::disallowed_methods)] // small /proc reads on the test's own runtime
fn descriptors(pid: u32) -> Vec<(String, String)> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let target = std::fs::read_link(entry.path()).ok()?;
            let fd = entry.file_name().to_string_lossy().into_owned();
            Some((fd, target.to_string_lossy().into_owned()))
        })
        .collect()
}

/// Socket descriptors process `pid` has open.
fn open_sockets(pid: u32) -> usize {
    descriptors(pid)
        .iter()
        .filter(|(_, target)| target.starts_with("socket:"))
        .count()
}

/// Filled file-table slots of every io_uring ring of process `pid` that has such a table.
#[allow(clippy::disallowed_methods)] // small /proc reads on the test's own runtime
fn registered_sockets(pid: u32) -> usize {
    let mut filled = 0;
    let mut tables = 0;
    for (fd, target) in descriptors(pid) {
        if !target.contains("io_uring") {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else {
            continue;
        };
        let mut lines = info.lines().skip_while(|l| !l.starts_with("UserFiles:"));
        let Some(header) = lines.next() else { continue };
        if header.split_whitespace().nth(1) == Some("0") {
            continue;
        }
        tables += 1;
        filled += lines
            .take_while(|l| l.starts_with(' '))
            .filter(|l| l.contains("socket:["))
            .count();
    }
    assert_eq!(
        tables, 1,
        "one ring with a file table (the worker's tunnels')"
    );
    filled
}

/// Writes `data` into a raw-echo tunnel in chunks of `chunk(i)` bytes, half-closes, and
/// returns everything read back until the tunnel closes.
async fn echo_through(
    stream: TcpStream,
    data: Vec<u8>,
    chunk: impl Fn(usize) -> usize + Send + 'static,
) -> Vec<u8> {
    let (mut r, mut w) = stream.into_split();
    let len = data.len();
    let writer = tokio::spawn(async move {
        let (mut at, mut i) = (0, 0);
        while at < data.len() {
            let end = (at + chunk(i)).min(data.len());
            w.write_all(&data[at..end]).await.unwrap();
            at = end;
            i += 1;
        }
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::with_capacity(len);
    tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut got))
        .await
        .expect("echo within 30 s")
        .unwrap();
    writer.await.unwrap();
    got
}

/// The client half-closes: the upstream sees end of stream after every byte, and its answer
/// still reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_half_close_reaches_upstream_and_reply_still_flows() {
    let up = raw_upstream::start(|mut s, _, mut rest| async move {
        s.write_all(raw_upstream::SWITCHING).await.unwrap();
        s.read_to_end(&mut rest).await.unwrap();
        let reply = format!(
            "got {} bytes, digest {:?}",
            rest.len(),
            Sha1::digest(&rest).as_slice()
        );
        // Reply slowly after the client's end of stream, to show the direction stays open.
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(reply.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
    })
    .await;
    let proxy = Proxy::start(&TestConfig::default(), &upstreams("backend", &[up]));
    let data = common::pseudo_random(300_000, 3);
    let mut stream = open_tunnel(&proxy).await;
    stream.write_all(&data).await.unwrap();
    stream.shutdown().await.unwrap();
    let got = common::read_to_close(&mut stream, Duration::from_secs(10)).await;
    let expected = format!(
        "got {} bytes, digest {:?}",
        data.len(),
        Sha1::digest(&data).as_slice()
    );
    assert_eq!(String::from_utf8_lossy(&got), expected);
}

/// The upstream half-closes first: the client sees end of stream, and can still send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_half_close_reaches_client_and_client_can_still_send() {
    let (tx, rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let tx = std::sync::Mutex::new(Some(tx));
    let up = raw_upstream::start(move |mut s, _, mut rest| {
        let tx = tx.lock().unwrap().take();
        async move {
            s.write_all(raw_upstream::SWITCHING).await.unwrap();
            s.write_all(b"upstream done").await.unwrap();
            s.shutdown().await.unwrap();
            s.read_to_end(&mut rest).await.unwrap();
            if let Some(tx) = tx {
                let _ = tx.send(rest);
            }
        }
    })
    .await;
    let proxy = Proxy::start(&TestConfig::default(), &upstreams("backend", &[up]));
    let mut stream = open_tunnel(&proxy).await;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got))
        .await
        .expect("client sees the upstream's end of stream")
        .unwrap();
    assert_eq!(got, b"upstream done");
    stream.write_all(b"client still talking").await.unwrap();
    stream.shutdown().await.unwrap();
    let received = tokio::time::timeout(Duration::from_secs(10), rx)
        .await
        .expect("upstream gets the client's bytes")
        .unwrap();
    assert_eq!(received, b"client still talking");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_quiet_tunnel_but_not_a_busy_one() {
    let (up, _) = common::echo_upstream::start("127.0.0.1:0").await.unwrap();
    let config = TestConfig::default().timeout("idle", "600ms");
    let proxy = Proxy::start(&config, &upstreams("backend", &[up]));

    let (mut busy, _) = tokio_tungstenite::connect_async(proxy.url("/ws"))
        .await
        .unwrap();
    let (mut quiet, _) = tokio_tungstenite::connect_async(proxy.url("/ws"))
        .await
        .unwrap();
    let opened = Instant::now();

    // The busy tunnel talks every 100 ms for 2 s, well past the idle timeout.
    let busy_task = tokio::spawn(async move {
        for i in 0..20 {
            let text = format!("tick {i}");
            busy.send(Message::text(text.clone())).await.unwrap();
            let echo = tokio::time::timeout(Duration::from_secs(5), busy.next())
                .await
                .expect("busy tunnel still echoes")
                .unwrap()
                .unwrap();
            assert_eq!(echo, Message::text(text));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let end = tokio::time::timeout(Duration::from_secs(5), quiet.next())
        .await
        .expect("the quiet tunnel is closed within 5 s");
    let closed_after = opened.elapsed();
    assert!(
        !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{end:?}"
    );
    assert!(
        closed_after >= Duration::from_millis(550),
        "closed too early: {closed_after:?}"
    );
    busy_task.await.unwrap();
}

/// With a single kernel-selected buffer per worker, concurrent tunnels keep finding the group
/// empty and fall back to pooled buffers: every byte still arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_stay_intact_when_kernel_buffers_run_out() {
    let up = raw_upstream::start(|s, _, rest| raw_upstream::raw_echo(s, rest)).await;
    let config = TestConfig::default().workers(1).limit("receive_buffers", 1);
    let proxy = Proxy::start(&config, &upstreams("backend", &[up]));
    let mut tunnels = Vec::new();
    for seed in 0..8u64 {
        let stream = open_tunnel(&proxy).await;
        tunnels.push(tokio::spawn(async move {
            let data = common::pseudo_random(512 * 1024, seed + 100);
            let got = echo_through(stream, data.clone(), |_| 7919).await;
            assert_eq!(Sha1::digest(&got), Sha1::digest(&data), "tunnel {seed}");
        }));
    }
    for t in tunnels {
        t.await.unwrap();
    }
}

/// An idle tunnel pins no relay buffer: what it costs is its slab entry, so 1,000 more idle
/// tunnels add far less RSS than even one 16 KiB buffer each would (the bound leaves room for
/// allocator noise: a debug build measures 1.6 KiB per tunnel). Each still echoes after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnels_pin_no_buffers() {
    let up = raw_upstream::start(|s, _, rest| raw_upstream::raw_echo(s, rest)).await;
    let proxy = Proxy::start(
        &TestConfig::default().workers(1),
        &upstreams("backend", &[up]),
    );
    let resident = common::resident_bytes;
    // The first tunnels pay for one-time growth (pools, rings); bytes through them cycle
    // the receive buffers.
    let mut held = Vec::new();
    for _ in 0..200 {
        let mut t = open_tunnel(&proxy).await;
        t.write_all(b"warm").await.unwrap();
        let mut back = [0u8; 4];
        t.read_exact(&mut back).await.unwrap();
        held.push(t);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = resident(proxy.pid());
    for _ in 0..1000 {
        held.push(open_tunnel(&proxy).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let per_tunnel = resident(proxy.pid()).saturating_sub(before) / 1000;
    assert!(
        per_tunnel < 4096,
        "{per_tunnel} bytes of RSS per idle tunnel"
    );
    for (i, t) in held.iter_mut().enumerate() {
        let msg = (i as u32).to_be_bytes();
        t.write_all(&msg).await.unwrap();
        let mut back = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), t.read_exact(&mut back))
            .await
            .expect("echo within 10 s")
            .unwrap();
        assert_eq!(back, msg, "tunnel {i}");
    }
}

/// Sustained bulk traffic moves both directions to splice(2) (counted in the metrics), and
/// every byte still arrives, in order; the client's end of stream still travels through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_tunnels_splice_and_stay_intact() {
    let up = raw_upstream::start(|s, _, rest| raw_upstream::raw_echo(s, rest)).await;
    let proxy = Proxy::start_raw(&observed("1h"), &upstreams("backend", &[up]));
    let mut tunnels = Vec::new();
    for seed in 0..2u64 {
        let stream = open_tunnel(&proxy).await;
        tunnels.push(tokio::spawn(async move {
            let data = common::pseudo_random(16 << 20, seed + 300);
            let got = echo_through(stream, data.clone(), |i| 64 * 1024 + i % 3 * 1000).await;
            assert_eq!(got.len(), data.len(), "tunnel {seed}");
            assert_eq!(Sha1::digest(&got), Sha1::digest(&data), "tunnel {seed}");
        }));
    }
    for t in tunnels {
        t.await.unwrap();
    }
    assert_eq!(
        spliced_directions(&proxy, 4).await,
        4,
        "both directions of both tunnels"
    );
}

/// Splicing one direction leaves the other on buffered reads of the same, now non-blocking,
/// sockets: replies that come later and slowly still arrive, and so do more client bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spliced_upload_leaves_slow_replies_flowing() {
    const UPLOAD: usize = 8 << 20;
    let up = raw_upstream::start(|mut s, _, mut rest| async move {
        s.write_all(raw_upstream::SWITCHING).await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        while rest.len() < UPLOAD {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "upload cut short at {}", rest.len());
            rest.extend_from_slice(&buf[..n]);
        }
        for i in 0..3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.write_all(format!("reply {i};").as_bytes()).await.unwrap();
        }
        let mut tail = [0u8; 5];
        s.read_exact(&mut tail).await.unwrap();
        s.write_all(&tail).await.unwrap();
        let digest = Sha1::digest(&rest[..UPLOAD]);
        s.write_all(&digest).await.unwrap();
    })
    .await;
    let proxy = Proxy::start_raw(&observed("1h"), &upstreams("backend", &[up]));
    let mut stream = open_tunnel(&proxy).await;
    let data = common::pseudo_random(UPLOAD, 400);
    for chunk in data.chunks(64 * 1024) {
        stream.write_all(chunk).await.unwrap();
    }
    let mut replies = vec![0u8; "reply 0;reply 1;reply 2;".len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut replies))
        .await
        .expect("replies within 10 s")
        .unwrap();
    assert_eq!(replies, b"reply 0;reply 1;reply 2;");
    stream.write_all(b"tail!").await.unwrap();
    let mut back = [0u8; 5 + 20];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
        .await
        .expect("tail and digest within 10 s")
        .unwrap();
    assert_eq!(&back[..5], b"tail!");
    assert_eq!(&back[5..], Sha1::digest(&data).as_slice());
    assert_eq!(spliced_directions(&proxy, 1).await, 1, "the upload only");
}

/// Each message that arrives whole leaves in one send each way, and
/// `wsplice_tunnel_sends_total` counts them: 5 round trips of 100 bytes are 10 sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_leaves_in_one_send_each_way_and_sends_are_counted() {
    let up = raw_upstream::start(|s, _, rest| raw_upstream::raw_echo(s, rest)).await;
    let proxy = Proxy::start_raw(&observed("1h"), &upstreams("backend", &[up]));
    let mut stream = open_tunnel(&proxy).await;
    for round in 0..5u8 {
        let message = [round; 100];
        stream.write_all(&message).await.unwrap();
        let mut back = [0u8; 100];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
            .await
            .expect("the echo within 10 s")
            .unwrap();
        assert_eq!(back, message);
    }
    let key = "wsplice_tunnel_sends_total";
    let sends = common::wait_metric(
        proxy.admin_addr(),
        key,
        |v| v >= 10.0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(sends, 10.0, "5 messages each way");
}

/// `wsplice_spliced_directions_total` from the proxy's admin endpoint.
/// Polled until it reaches `want` (for up to 10 s): a direction switches once the proxy has
/// read 256 KiB of it, which may be after the client's last write returned.
async fn spliced_directions(proxy: &Proxy, want: u64) -> u64 {
    let key = "wsplice_spliced_directions_total";
    let at_least = |v: f64| v >= want as f64;
    common::wait_metric(proxy.admin_addr(), key, at_least, Duration::from_secs(10)).await as u64
}

/// A one-worker config with the admin endpoint and an access log file (`access.log` in the
/// proxy's folder), and `timeouts.idle`.
fn observed(idle: &str) -> String {
    format!(
        "admin = \"127.0.0.1:0\"\naccess_log = \"access.log\"\n{}",
        TestConfig::default()
            .workers(1)
            .timeout("idle", idle)
            .toml()
    )
}

/// TCP urgent data on a spliced direction (splice stops at the urgent mark, a plain read
/// skips the byte): the tunnel gets past it instead of stalling, and bytes after it arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_data_does_not_stall_a_spliced_direction() {
    let up = raw_upstream::start(|s, _, rest| raw_upstream::raw_echo(s, rest)).await;
    let proxy = Proxy::start_raw(&observed("1h"), &upstreams("backend", &[up]));
    let stream = open_tunnel(&proxy).await;
    let (mut r, mut w) = stream.into_split();
    let bulk = common::pseudo_random(2 << 20, 500);
    let expected = [bulk.clone(), b"after the mark".to_vec()].concat();
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; expected.len()];
        tokio::time::timeout(Duration::from_secs(10), r.read_exact(&mut got))
            .await
            .expect("every byte within 10 s")
            .unwrap();
        assert!(got == expected, "bytes differ");
    });
    for chunk in bulk.chunks(64 * 1024) {
        w.write_all(chunk).await.unwrap();
    }
    assert!(
        spliced_directions(&proxy, 1).await >= 1,
        "the upload is spliced"
    );
    socket2::SockRef::from(w.as_ref())
        .send_out_of_band(b"!")
        .unwrap();
    w.write_all(b"after the mark").await.unwrap();
    reader.await.unwrap();
}

/// Sends `len` bulk bytes through `stream` and reads their echo, so both directions splice.
async fn bulk_echo(stream: &mut TcpStream, len: usize) {
    let data = common::pseudo_random(len, 600);
    let (mut r, mut w) = stream.split();
    let write = async {
        for chunk in data.chunks(64 * 1024) {
            w.write_all(chunk).await.unwrap();
        }
    };
    let mut got = vec![0u8; len];
    let read = tokio::time::timeout(Duration::from_secs(10), r.read_exact(&mut got));
    let ((), read) = tokio::join!(write, read);
    read.expect("echo within 10 s").unwrap();
    assert!(got == data, "echo differs");
}

/// A spliced tunnel that goes quiet is closed by the idle timeout like any other, and its
/// log line counts every byte that went through the pipes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_spliced_tunnel() {
    let up = raw_upstream::start(|s, _, rest| raw_upstream::raw_echo(s, rest)).await;
    let proxy = Proxy::start_raw(&observed("600ms"), &upstreams("backend", &[up]));
    let mut stream = open_tunnel(&proxy).await;
    bulk_echo(&mut stream, 1 << 20).await;
    assert_eq!(spliced_directions(&proxy, 2).await, 2);
    let quiet_since = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("closed within 5 s")
        .unwrap();
    let closed_after = quiet_since.elapsed();
    assert!(rest.is_empty());
    assert!(
        closed_after >= Duration::from_millis(550),
        "closed too early: {closed_after:?}"
    );
    let line = access_line(&proxy, "status=101").await;
    assert!(line.contains("end=\"idle timeout\""), "{line}");
    assert!(
        line.contains("client_to_upstream=1048576 upstream_to_client=1048576"),
        "{line}"
    );
}

/// An upstream that resets the connection in the middle of a spliced upload ends the
/// tunnel: the client is closed, and the log line blames the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_ends_a_spliced_tunnel_with_an_upstream_error() {
    let up = raw_upstream::start(|mut s, _, mut rest| async move {
        s.write_all(raw_upstream::SWITCHING).await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        while rest.len() < 1 << 20 {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            rest.extend_from_slice(&buf[..n]);
        }
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    })
    .await;
    let proxy = Proxy::start_raw(&observed("1h"), &upstreams("backend", &[up]));
    let stream = open_tunnel(&proxy).await;
    let (mut r, mut w) = stream.into_split();
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        // Until the proxy closes the client: at most 64 MiB.
        for _ in 0..1024 {
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
    });
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut sink))
        .await
        .expect("the client is closed within 10 s");
    writer.await.unwrap();
    assert!(spliced_directions(&proxy, 1).await >= 1);
    let line = access_line(&proxy, "status=101").await;
    assert!(line.contains("end=\"error: upstream:"), "{line}");
}

/// The first access log line that contains `needle`, waiting up to 5 s for it.
async fn access_line(proxy: &Proxy, needle: &str) -> String {
    let path = proxy.dir.path().join("access.log");
    for _ in 0..250 {
        let log = tokio::fs::read_to_string(&path).await.unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no access log line with {needle:?} in 5 s");
}
