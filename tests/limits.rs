//! Per-client limits through the binary: `limits.max_connections_per_ip` and
//! `limits.handshake_rate_per_ip` answer 429 with `Retry-After` to one address while others
//! are served, recover when the address has room again, are counted in `/metrics`, and never
//! forward a refused request; the table stays the size it had at start whatever the number
//! of addresses. Clients come from many loopback addresses (all of 127.0.0.0/8 is local on
//! Linux) by binding before connecting.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Proxy, TestConfig, echo_upstream, status_of, upstreams, wait_metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const GET: &[u8] = b"GET /hello HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
const GET_KEEP_ALIVE: &[u8] = b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n";

/// Starts wsplice with an admin endpoint and `extra` lines in its `[limits]` table.
async fn start(extra: &str) -> (Proxy, SocketAddr, std::sync::Arc<echo_upstream::Seen>) {
    let (up, seen) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let config = TestConfig::default()
        .toml()
        .replacen(
            "upstreams = \"upstreams.toml\"\n",
            "upstreams = \"upstreams.toml\"\nadmin = \"127.0.0.1:0\"\n",
            1,
        )
        .replacen("[limits]\n", &format!("[limits]\n{extra}\n"), 1);
    let proxy = Proxy::start_raw(&config, &upstreams("backend", &[up]));
    assert!(
        proxy
            .wait_log("admin endpoint on", Duration::from_secs(5))
            .await
    );
    let admin = proxy.admin_addr();
    (proxy, admin, seen)
}

/// Connects to `addr` from `source` (port chosen by the kernel).
async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    let ip: IpAddr = source.parse().unwrap();
    socket.bind(SocketAddr::new(ip, 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Reads one response head (and whatever came with it): until its blank line, the close,
/// or 5 s.
async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    out
}

/// Sends `request` from `source` and returns the connection with the response head.
async fn exchange_from(source: &str, addr: SocketAddr, request: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut stream = connect_from(source, addr).await;
    stream.write_all(request).await.unwrap();
    let head = read_head(&mut stream).await;
    (stream, head)
}

/// A WebSocket upgrade from `source`: the open tunnel and its status.
async fn upgrade_from(source: &str, addr: SocketAddr) -> (TcpStream, u16) {
    let request = common::upgrade_request("/ws");
    let (stream, head) = exchange_from(source, addr, request.as_bytes()).await;
    (stream, status_of(&head))
}

/// A short, valid, closing 429 that tells the client when to try again.
fn assert_429(head: &[u8]) {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    assert!(
        text.starts_with("http/1.1 429 too many requests\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nretry-after: 1\r\n"), "{text}");
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_per_ip_is_429_for_that_address_only() {
    let (proxy, admin, seen) = start("max_connections_per_ip = 3").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let (tunnel, status) = upgrade_from("127.0.0.1", proxy.addr).await;
        assert_eq!(status, 101);
        held.push(tunnel);
    }
    let (mut fourth, head) = exchange_from("127.0.0.1", proxy.addr, GET).await;
    assert_429(&head);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), fourth.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection closes after the 429");
    assert_eq!(
        seen.requests.load(Ordering::Relaxed),
        0,
        "nothing forwarded"
    );

    // Another address is not affected, even with three tunnels of its own open.
    let mut others = Vec::new();
    for _ in 0..3 {
        let (tunnel, status) = upgrade_from("127.0.0.2", proxy.addr).await;
        assert_eq!(status, 101, "127.0.0.2 is served");
        others.push(tunnel);
    }

    // Once one of 127.0.0.1's tunnels closes, it has room again.
    drop(held.pop());
    let mut served = false;
    for _ in 0..100 {
        let (_, head) = exchange_from("127.0.0.1", proxy.addr, GET).await;
        if status_of(&head) == 200 {
            served = true;
            break;
        }
        assert_429(&head);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        served,
        "127.0.0.1 is served again after a connection closed"
    );

    let limited = wait_metric(
        admin,
        "wsplice_limited_total{limit=\"connections\"}",
        |v| v >= 1.0,
        Duration::from_secs(5),
    )
    .await;
    assert!(limited >= 1.0);
    let answered = wait_metric(
        admin,
        "wsplice_responses_total{status=\"429\"}",
        |v| v >= limited,
        Duration::from_secs(5),
    )
    .await;
    assert!(
        answered >= limited,
        "{answered} 429s for {limited} refusals"
    );
    assert!(proxy.log().contains("over limits.max_connections_per_ip"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_handshake_rate_per_ip_is_429_until_the_bucket_refills() {
    let (proxy, admin, seen) = start("handshake_rate_per_ip = \"5/s\"").await;
    // Twenty at once: the first five (one second's worth) pass, most of the rest do not.
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let addr = proxy.addr;
            tokio::spawn(async move { exchange_from("127.0.0.3", addr, GET).await.1 })
        })
        .collect();
    let mut passed = 0;
    let mut refused = 0;
    for task in burst {
        let head = task.await.unwrap();
        match status_of(&head) {
            200 => passed += 1,
            _ => {
                assert_429(&head);
                refused += 1;
            }
        }
    }
    assert!(passed >= 5, "the burst allowance passes: {passed}");
    assert!(
        refused >= 1,
        "some of the burst is refused: {passed} passed"
    );
    assert_eq!(
        seen.requests.load(Ordering::Relaxed),
        passed,
        "no refused request reached the upstream"
    );

    // Other addresses have their own allowance.
    let (_, head) = exchange_from("127.0.0.4", proxy.addr, GET).await;
    assert_eq!(status_of(&head), 200);

    // Each request on a keep-alive connection counts; the 429 ends the connection.
    let mut stream = connect_from("127.0.0.5", proxy.addr).await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        if stream.write_all(GET_KEEP_ALIVE).await.is_err() {
            break;
        }
        let response = common::read_response(&mut stream, Duration::from_secs(5)).await;
        if response.is_empty() {
            break;
        }
        statuses.push(status_of(&response));
        if status_of(&response) == 429 {
            assert_429(&response);
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(
        statuses.iter().filter(|&&s| s == 200).count() >= 5,
        "{statuses:?}"
    );

    // After about a second (one request's worth after 200 ms), 127.0.0.3 passes again.
    let mut served = false;
    for _ in 0..100 {
        let (_, head) = exchange_from("127.0.0.3", proxy.addr, GET).await;
        if status_of(&head) == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "the address passes again once its bucket refilled");

    let limited = wait_metric(
        admin,
        "wsplice_limited_total{limit=\"rate\"}",
        |v| v >= f64::from(refused + 1),
        Duration::from_secs(5),
    )
    .await;
    assert!(limited >= f64::from(refused + 1), "{limited}");
    let connections = common::scrape(admin).await["wsplice_limited_total{limit=\"connections\"}"];
    assert_eq!(connections, 0.0);
}

/// Two hundred addresses each hold a tunnel: all are served (each is under its own limit),
/// the table keeps the size it was given at start, and every bucket is empty again once they
/// close (each count given back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_addresses_leave_the_table_its_size() {
    let (proxy, admin, seen) =
        start("max_connections_per_ip = 2\nhandshake_rate_per_ip = \"10/s\"").await;
    let before = common::scrape(admin).await;
    let buckets = before["wsplice_client_limit_buckets"];
    assert!(buckets >= 4096.0, "{buckets}");
    let mut tunnels = Vec::new();
    for i in 1..=200 {
        let source = format!("127.0.1.{i}");
        let (tunnel, status) = upgrade_from(&source, proxy.addr).await;
        assert_eq!(status, 101, "{source}");
        tunnels.push(tunnel);
    }
    assert_eq!(seen.upgrades.load(Ordering::Relaxed), 200);
    let during = common::scrape(admin).await;
    assert_eq!(during["wsplice_client_limit_buckets"], buckets);
    let busy = during["wsplice_client_limit_buckets_busy"];
    // Addresses that happen to share a bucket share it (then count together).
    assert!(busy > 190.0 && busy <= 200.0, "{busy} buckets busy");
    drop(tunnels);
    let busy = wait_metric(
        admin,
        "wsplice_client_limit_buckets_busy",
        |v| v == 0.0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(busy, 0.0, "every closed connection gave its count back");
    let after = common::scrape(admin).await;
    assert_eq!(after["wsplice_client_limit_buckets"], buckets);
}
