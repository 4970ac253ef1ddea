//! Unix-socket upstreams (`"unix:/path"` in a group's servers) through the real binary: plain
//! requests, WebSocket echo, a bulk tunnel that goes to splice, failover from a missing or
//! refusing socket to the next server, sticky cookies, and the server's name in the access
//! log and the metrics.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Proxy, TestConfig, echo_upstream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio_tungstenite::tungstenite::Message;

/// A config with the admin endpoint and an access log file (`access.log` in the proxy's
/// folder).
fn observed(workers: usize) -> String {
    format!(
        "admin = \"127.0.0.1:0\"\naccess_log = \"access.log\"\n{}",
        TestConfig::default().workers(workers).toml()
    )
}

fn group(servers: &[String], extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[backend]\nservers = [{}]\n{extra}", list.join(", "))
}

fn unix(path: &Path) -> String {
    format!("unix:{}", path.display())
}

/// Polls the proxy's access log until a line contains every one of `needles` (10 s at most).
async fn access_line(proxy: &Proxy, needles: &[&str]) -> Option<String> {
    let path = proxy.dir.path().join("access.log");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
        if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return Some(line.to_string());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn get(proxy: &Proxy, path: &str, extra: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{extra}Connection: close\r\n\r\n");
    let response = common::raw_exchange(proxy.addr, request.as_bytes()).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_plain_requests_reach_a_unix_socket_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("chat.sock");
    let seen = echo_upstream::start_unix(&socket).unwrap();
    let proxy = Proxy::start_raw(&observed(2), &group(&[unix(&socket)], ""));

    let response = get(&proxy, "/hello", "").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let name = unix(&socket);
    assert!(
        response.contains(&format!("hello from upstream {name}: GET /hello")),
        "{response}"
    );

    let (mut ws, _) = tokio_tungstenite::connect_async(proxy.url("/chat"))
        .await
        .expect("upgrade through wsplice");
    for i in 0..20 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo within 10 s")
            .unwrap()
            .unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    ws.close(None).await.unwrap();
    // The close handshake, then the client's end: the tunnel ends and is logged.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while ws.next().await.is_some() {}
    })
    .await;
    drop(ws);
    assert_eq!(seen.upgrades.load(std::sync::atomic::Ordering::Relaxed), 1);

    let upstream = format!(" upstream={name} ");
    let tunnel = access_line(&proxy, &[upstream.as_str(), "status=101"]).await;
    assert!(tunnel.is_some(), "no tunnel line naming {name}");
    let plain = access_line(&proxy, &[upstream.as_str(), "status=200"]).await;
    assert!(plain.is_some(), "no plain line naming {name}");
}

/// A raw upstream on a unix socket that switches and echoes every byte.
fn start_raw_echo(path: &Path) {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut byte = [0u8; 1];
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                stream
                    .write_all(common::raw_upstream::SWITCHING)
                    .await
                    .unwrap();
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
}

/// A few MiB each way through a tunnel to a unix socket arrive intact, and both directions
/// went to splice(2): it moves bytes between a TCP and a unix stream socket alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_tunnel_to_a_unix_socket_splices_and_stays_intact() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("bulk.sock");
    start_raw_echo(&socket);
    let proxy = Proxy::start_raw(&observed(1), &group(&[unix(&socket)], ""));
    let stream = common::raw_tunnel::open(proxy.addr).await;
    let data = common::pseudo_random(6 << 20, 77);
    let (mut r, mut w) = stream.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(64 * 1024) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::with_capacity(data.len());
    tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut got))
        .await
        .expect("echo within 30 s")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the echo differs from what was sent");
    let spliced = common::wait_metric(
        proxy.admin_addr(),
        "wsplice_spliced_directions_total",
        |v| v >= 2.0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(spliced, 2.0, "both directions spliced");
    let upstream = format!(" upstream={} ", unix(&socket));
    assert!(
        access_line(&proxy, &[upstream.as_str(), "status=101"])
            .await
            .is_some()
    );
}

/// A socket path that is bound but not listening: connects to it are refused.
fn refusing_socket(path: &Path) -> socket2::Socket {
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&socket2::SockAddr::unix(path).unwrap())
        .unwrap();
    socket
}

/// A missing socket (ENOENT) and a refusing one (ECONNREFUSED) fail like a refused TCP
/// server: the connection goes on to the next server, each failure is counted under the
/// server's `unix:` name and marks it down (max_fails = 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_refusing_socket_fails_over_to_the_next_server() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.sock");
    let refusing: PathBuf = dir.path().join("refusing.sock");
    let _bound = refusing_socket(&refusing);
    let (tcp, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let servers = [unix(&missing), unix(&refusing), tcp.to_string()];
    let proxy = Proxy::start_raw(&observed(1), &group(&servers, ""));

    let response = get(&proxy, "/one", "").await;
    assert!(
        response.contains(&format!("hello from upstream {tcp}")),
        "{response}"
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(proxy.url("/chat"))
        .await
        .expect("upgrade through wsplice");
    ws.send(Message::text("hi")).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("echo within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("hi"));

    let admin = proxy.admin_addr();
    for name in [unix(&missing), unix(&refusing)] {
        let key = format!("wsplice_upstream_connect_failures_total{{upstream=\"{name}\"}}");
        let failures =
            common::wait_metric(admin, &key, |v| v >= 1.0, Duration::from_secs(10)).await;
        assert!(failures >= 1.0, "{key}: {failures}");
        let marked = format!("upstream={name}");
        assert!(
            proxy.wait_log(&marked, Duration::from_secs(10)).await,
            "{}",
            proxy.log()
        );
    }
    assert!(proxy.log().contains("marked down"), "{}", proxy.log());
    let upstream = format!(" upstream={tcp} ");
    assert!(
        access_line(&proxy, &[upstream.as_str(), "status=200"])
            .await
            .is_some()
    );
}

/// A sticky cookie names a unix server by its path: a client that sends it back reaches the
/// same socket, whichever way round robin turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_cookie_leads_back_to_the_same_unix_server() {
    let dir = tempfile::tempdir().unwrap();
    let paths = [dir.path().join("a.sock"), dir.path().join("b.sock")];
    for path in &paths {
        echo_upstream::start_unix(path).unwrap();
    }
    let servers: Vec<String> = paths.iter().map(|p| unix(p)).collect();
    let proxy = Proxy::start(
        &TestConfig::default().workers(1),
        &group(&servers, "sticky_cookie = \"srv\"\n"),
    );
    let first = get(&proxy, "/", "").await;
    let cookie = first
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: "))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no Set-Cookie: {first}"))
        .to_string();
    let served_by = |response: &str| {
        response
            .lines()
            .find_map(|l| l.strip_prefix("X-Upstream: "))
            .map(str::to_string)
    };
    let chosen = served_by(&first).expect("X-Upstream");
    assert!(servers.contains(&chosen), "{chosen}");
    for _ in 0..4 {
        let again = get(&proxy, "/", &format!("Cookie: {cookie}\r\n")).await;
        assert_eq!(
            served_by(&again).as_deref(),
            Some(chosen.as_str()),
            "{again}"
        );
        assert!(!again.contains("Set-Cookie"), "{again}");
    }
}

/// A socket whose accept queue is full (the app server is not accepting): a non-blocking
/// connect to it fails at once (EAGAIN) rather than waiting, and the connection goes on to
/// the next server, as nginx does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_with_a_full_accept_queue_fails_over_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.sock");
    let listener =
        socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(&socket2::SockAddr::unix(&full).unwrap())
        .unwrap();
    listener.listen(0).unwrap();
    // Fills the queue: one connection waits for an accept that never comes.
    let _waiting = tokio::net::UnixStream::connect(&full).await.unwrap();
    let (tcp, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let servers = [unix(&full), tcp.to_string()];
    let proxy = Proxy::start_raw(&observed(1), &group(&servers, "max_fails = 0\n"));
    for i in 0..3 {
        let response = tokio::time::timeout(Duration::from_secs(10), get(&proxy, "/x", ""))
            .await
            .expect("answered within 10 s");
        assert!(
            response.contains(&format!("hello from upstream {tcp}")),
            "request {i}: {response}"
        );
    }
    let key = format!(
        "wsplice_upstream_connect_failures_total{{upstream=\"{}\"}}",
        unix(&full)
    );
    let failures = common::wait_metric(
        proxy.admin_addr(),
        &key,
        |v| v >= 2.0,
        Duration::from_secs(10),
    )
    .await;
    assert!(failures >= 2.0, "{key}: {failures}\n{}", proxy.log());
}
