//! Keep-alive for plain requests: one client connection carries requests in turn, each
//! routed on its own; pipelined requests are answered in order; a `101` ends the keep-alive
//! phase; `timeouts.keepalive` and a stop close an idle one; a response without a length or
//! a request with `Connection: close` ends it.

mod common;

use std::time::{Duration, Instant};

use common::{Proxy, TestConfig, echo_upstream, read_response, status_of, upstreams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn echo_proxy(config: &TestConfig) -> Proxy {
    let (up, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    Proxy::start(config, &upstreams("backend", &[up]))
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether the proxy closes `stream` within `limit` (end of stream, or a reset).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(limit, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_carries_requests_in_turn() {
    let (first, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let (second, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let config = TestConfig::default().route("/other", "other");
    let files = upstreams("backend", &[first]) + &upstreams("other", &[second]);
    let proxy = Proxy::start(&config, &files);
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    // Each request is routed on its own.
    for (path, server) in [
        ("/first", first),
        ("/other/second", second),
        ("/third", first),
    ] {
        client.write_all(&get(path)).await.unwrap();
        let response = read_response(&mut client, Duration::from_secs(10)).await;
        assert_eq!(status_of(&response), 200, "{}", text(&response));
        let response = text(&response);
        assert!(!response.contains("Connection: close"), "{response}");
        assert!(
            response.contains(&format!("X-Upstream: {server}\r\n")),
            "{response}"
        );
        assert!(response.ends_with(&format!("GET {path}\n")), "{response}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let proxy = echo_proxy(&TestConfig::default()).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let mut all = get("/one");
    all.extend(get("/two"));
    all.extend(b"GET /three HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    client.write_all(&all).await.unwrap();
    let got = text(&common::read_to_close(&mut client, Duration::from_secs(10)).await);
    let one = got.find("GET /one\n").expect(&got);
    let two = got.find("GET /two\n").expect(&got);
    let three = got.find("GET /three\n").expect(&got);
    assert!(one < two && two < three, "{got}");
    assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 3, "{got}");
    assert_eq!(got.matches("Connection: close").count(), 1, "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_client_reuses_its_connection() {
    let proxy = echo_proxy(&TestConfig::default()).await;
    let urls: Vec<String> = ["/a", "/b", "/c"].iter().map(|p| proxy.url(p)).collect();
    let urls: Vec<String> = urls
        .iter()
        .map(|u| u.replacen("ws://", "http://", 1))
        .collect();
    let out = std::process::Command::new("curl")
        .args(["-sv", "--max-time", "10"])
        .args(&urls)
        .output()
        .expect("curl (scripts/test.sh installs it)");
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for path in ["/a", "/b", "/c"] {
        assert!(stdout.contains(&format!("GET {path}\n")), "{stdout}");
    }
    assert_eq!(
        stderr.matches("Connected to").count(),
        1,
        "curl opened more than one connection:\n{stderr}"
    );
    assert!(stderr.contains("Re-using existing"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_ends_the_keep_alive_phase() {
    let proxy = echo_proxy(&TestConfig::default()).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(&get("/plain")).await.unwrap();
    let response = read_response(&mut client, Duration::from_secs(10)).await;
    assert_eq!(status_of(&response), 200, "{}", text(&response));
    let (mut ws, _) = tokio_tungstenite::client_async(proxy.url("/ws"), client)
        .await
        .unwrap();
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text("after a plain request"))
        .await
        .unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert_eq!(
        echo.unwrap().unwrap().unwrap(),
        Message::text("after a plain request")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_closes_after_the_keepalive_timeout() {
    let config = TestConfig::default().timeout("keepalive", "1s");
    let proxy = echo_proxy(&config).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(&get("/x")).await.unwrap();
    let response = read_response(&mut client, Duration::from_secs(10)).await;
    assert_eq!(status_of(&response), 200);
    let idle = Instant::now();
    assert!(closed_within(&mut client, Duration::from_secs(10)).await);
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_and_keepalive_off_end_the_connection() {
    let proxy = echo_proxy(&TestConfig::default()).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let got = text(&common::read_to_close(&mut client, Duration::from_secs(10)).await);
    assert!(got.contains("Connection: close\r\n"), "{got}");

    // HTTP/1.0 is not kept alive.
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(b"GET /x HTTP/1.0\r\n\r\n").await.unwrap();
    let got = text(&common::read_to_close(&mut client, Duration::from_secs(10)).await);
    assert!(got.contains("Connection: close\r\n"), "{got}");

    let off = TestConfig::default().timeout("keepalive", "0s");
    let proxy = echo_proxy(&off).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(&get("/x")).await.unwrap();
    let got = text(&common::read_to_close(&mut client, Duration::from_secs(10)).await);
    assert!(got.contains("Connection: close\r\n"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_without_a_length_closes_the_connection() {
    let up = common::raw_upstream::start(|mut s, _, _| async move {
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil close").await;
    })
    .await;
    let proxy = Proxy::start(&TestConfig::default(), &upstreams("backend", &[up]));
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(&get("/x")).await.unwrap();
    let got = text(&common::read_to_close(&mut client, Duration::from_secs(10)).await);
    assert!(got.contains("Connection: close\r\n"), "{got}");
    assert!(got.ends_with("until close"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_closes_idle_keep_alive_connections_at_once() {
    let mut proxy = echo_proxy(&TestConfig::default()).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(&get("/x")).await.unwrap();
    let response = read_response(&mut client, Duration::from_secs(10)).await;
    assert_eq!(status_of(&response), 200);
    proxy.signal("TERM");
    assert!(closed_within(&mut client, Duration::from_secs(5)).await);
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        proxy.log()
    );
}
