//! The admin endpoint cannot be held: slow and silent clients do not delay `/healthz`, a
//! request has one deadline however slowly it trickles, a connection beyond the bound gets
//! 503 at once, and binding it beyond loopback is warned about at start.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Proxy, TestConfig, echo_upstream, upstreams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// wsplice's `admin::REQUEST_DEADLINE` and `admin::MAX_CONCURRENT`.
const DEADLINE: Duration = Duration::from_secs(5);
const MAX_CONCURRENT: usize = 16;

async fn start(admin: &str) -> Proxy {
    let (up, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let config = TestConfig::default().toml().replacen(
        "upstreams = \"upstreams.toml\"",
        &format!("upstreams = \"upstreams.toml\"\nadmin = \"{admin}\""),
        1,
    );
    let proxy = Proxy::start_raw(&config, &upstreams("backend", &[up]));
    assert!(
        proxy
            .wait_log("admin endpoint on", Duration::from_secs(5))
            .await,
        "{}",
        proxy.log()
    );
    proxy
}

/// `GET /healthz`, which must answer within `limit`.
async fn healthz_within(admin: SocketAddr, limit: Duration) -> (u16, String) {
    tokio::time::timeout(limit, common::admin_get(admin, "/healthz"))
        .await
        .unwrap_or_else(|_| panic!("/healthz took over {limit:?}"))
}

/// A client that sends a request head one byte at a time, every `gap`, never finishing it;
/// returns how long until wsplice closed the connection (or `None` within `limit`).
async fn trickle(admin: SocketAddr, gap: Duration, limit: Duration) -> Option<Duration> {
    let mut stream = TcpStream::connect(admin).await.unwrap();
    let start = Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nX-Slow: ";
    let mut bytes = head.iter().chain(std::iter::repeat(&b'a'));
    let mut buf = [0u8; 64];
    while start.elapsed() < limit {
        if stream.write_all(&[*bytes.next().unwrap()]).await.is_err() {
            return Some(start.elapsed());
        }
        // Waiting for the close is the pace of the trickle.
        match tokio::time::timeout(gap, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => panic!("an answer to a head that never ended"),
            Err(_) => {}
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_silent_clients_do_not_hold_healthz() {
    let proxy = start("127.0.0.1:0").await;
    let admin = proxy.admin_addr();
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(TcpStream::connect(admin).await.unwrap());
    }
    let trickling: Vec<_> = (0..5)
        .map(|_| tokio::spawn(trickle(admin, Duration::from_millis(200), DEADLINE * 2)))
        .collect();
    for _ in 0..3 {
        assert_eq!(
            healthz_within(admin, Duration::from_secs(1)).await,
            (200, "ok\n".to_string())
        );
    }
    let metrics = tokio::time::timeout(Duration::from_secs(1), common::scrape(admin)).await;
    assert!(
        metrics
            .expect("/metrics in time")
            .contains_key("wsplice_draining")
    );
    for t in trickling {
        assert!(
            t.await.unwrap().is_some(),
            "a trickling client was never cut"
        );
    }
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_client_is_cut_at_the_deadline() {
    let proxy = start("127.0.0.1:0").await;
    let cut = trickle(proxy.admin_addr(), Duration::from_millis(500), DEADLINE * 2)
        .await
        .expect("cut within twice the deadline");
    assert!(
        cut >= DEADLINE - Duration::from_millis(500) && cut < DEADLINE + Duration::from_secs(2),
        "cut after {cut:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_bound_a_connection_gets_503_at_once() {
    let proxy = start("127.0.0.1:0").await;
    let admin = proxy.admin_addr();
    let mut silent = Vec::new();
    for _ in 0..MAX_CONCURRENT {
        silent.push(TcpStream::connect(admin).await.unwrap());
    }
    // Sends nothing, so the refusal closes cleanly rather than resetting unread bytes.
    let mut extra = TcpStream::connect(admin).await.unwrap();
    let answer = common::read_to_close(&mut extra, Duration::from_secs(1)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer:?}");
    assert!(answer.ends_with("busy\n"), "{answer:?}");

    // Once the silent ones are cut at the deadline, requests are served again.
    let start = Instant::now();
    loop {
        let mut probe = TcpStream::connect(admin).await.unwrap();
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let answer = common::read_to_close(&mut probe, Duration::from_secs(1)).await;
        if answer.starts_with(b"HTTP/1.1 200 ") {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE + Duration::from_secs(3),
            "not served again after the deadline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(silent);
}

const WARNING: &str = "is not on a loopback address";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_endpoint_beyond_loopback_is_warned_about() {
    let open = start("0.0.0.0:0").await;
    assert!(open.log().contains(WARNING), "{}", open.log());
    let local = start("127.0.0.1:0").await;
    assert!(!local.log().contains(WARNING), "{}", local.log());
}
