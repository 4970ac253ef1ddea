//! Origin allow-lists per route: an upgrade from a page whose origin the route does not list
//! gets 403 and never reaches the upstream (cross-site WebSocket hijacking); a client that
//! sends no Origin (not a browser) passes unless the route requires one.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Proxy, TestConfig, echo_upstream, raw_exchange, status_of, upstreams};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// An upgrade request for `/ws` with these extra header lines.
fn upgrade(extra: &str) -> Vec<u8> {
    let head = common::upgrade_request("/ws");
    head.replacen("\r\n\r\n", &format!("\r\n{extra}\r\n\r\n"), 1)
        .into_bytes()
}

/// The status the proxy answers `request` with (the connection is not read to its end: a
/// `101` leaves a tunnel open).
async fn answer(proxy: &Proxy, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte));
        match read.await.expect("an answer within 10 s") {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    status_of(&head)
}

async fn start(policy: &str) -> (Proxy, std::sync::Arc<echo_upstream::Seen>) {
    let (up, seen) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let config = format!(
        "admin = \"127.0.0.1:0\"\n{}{policy}\n",
        TestConfig::default().only_route("/ws", "backend").toml()
    );
    let proxy = Proxy::start_raw(&config, &upstreams("backend", &[up]));
    (proxy, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_origins_may_upgrade() {
    let policy = "allowed_origins = [\"https://app.example.com\", \"https://*.example.net\"]";
    let (proxy, seen) = start(policy).await;

    // A browser on a listed page, through a real WebSocket client.
    let mut request = proxy.url("/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Origin", "https://app.example.com".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert_eq!(echo.unwrap().unwrap().unwrap(), Message::text("hi"));
    drop(ws);

    for origin in [
        "Origin: https://chat.example.net",
        "Origin: HTTPS://APP.EXAMPLE.COM",
    ] {
        assert_eq!(answer(&proxy, &upgrade(origin)).await, 101, "{origin}");
    }
    // Not a browser: no Origin at all.
    assert_eq!(answer(&proxy, &upgrade("X-A: b")).await, 101);

    let upgrades = seen.upgrades.load(Ordering::SeqCst);
    for origin in [
        "Origin: https://evil.test",
        "Origin: https://app.example.com.evil.test",
        "Origin: https://a.b.example.net",
        "Origin: http://app.example.com",
        "Origin: null",
        "Origin: https://app.example.com\r\nOrigin: https://app.example.com",
    ] {
        let response = raw_exchange(proxy.addr, &upgrade(origin)).await;
        assert_eq!(status_of(&response), 403, "{origin}");
        assert!(response.ends_with(b"origin not allowed\n"));
    }
    assert_eq!(
        seen.upgrades.load(Ordering::SeqCst),
        upgrades,
        "a refused upgrade reached the upstream"
    );
    let refused = common::wait_metric(
        proxy.admin_addr(),
        "wsplice_responses_total{status=\"403\"}",
        |n| n >= 6.0,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(refused, 6.0);
    assert!(
        proxy
            .wait_log(
                "origin policy: Origin not in the route's allowed_origins",
                Duration::from_secs(10)
            )
            .await,
        "{}",
        proxy.log()
    );

    // The policy is for upgrades: a plain request from any page passes.
    let plain = b"GET /ws HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.test\r\n\r\n";
    assert_eq!(status_of(&raw_exchange(proxy.addr, plain).await), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_may_require_an_origin() {
    let policy = "allowed_origins = [\"https://app.example.com\"]\nrequire_origin = true";
    let (proxy, _) = start(policy).await;
    let response = raw_exchange(proxy.addr, &upgrade("X-A: b")).await;
    assert_eq!(status_of(&response), 403);
    let origin = upgrade("Origin: https://app.example.com");
    assert_eq!(answer(&proxy, &origin).await, 101);
}
