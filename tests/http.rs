//! Plain HTTP through the proxy, the head rewrite as the upstream sees it, every error status,
//! and upstream failover.

mod common;

use std::time::Duration;

use common::{Proxy, TestConfig, echo_upstream, raw_exchange, raw_upstream, status_of, upstreams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn body_of(response: &[u8]) -> &[u8] {
    let i = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    &response[i + 4..]
}

async fn echo_proxy(config: TestConfig) -> Proxy {
    let (up, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    Proxy::start(&config, &upstreams("backend", &[up]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_get_passes_and_closes() {
    let proxy = echo_proxy(TestConfig::default()).await;
    let response = raw_exchange(
        proxy.addr,
        b"GET /hello?x=1 HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&response), 200);
    let text = String::from_utf8_lossy(&response);
    assert!(text.contains("Connection: close\r\n"), "{text}");
    assert!(text.ends_with("GET /hello?x=1\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sees_the_nginx_recipe_head() {
    let proxy = echo_proxy(TestConfig::default()).await;
    let response = raw_exchange(
        proxy.addr,
        b"GET /headers HTTP/1.0\r\nHost: example.test\r\nX-Forwarded-For: 10.1.1.1\r\nX-Real-IP: 6.6.6.6\r\nKeep-Alive: 300\r\nConnection: keep-alive, X-Secret\r\nX-Secret: drop me\r\nAccept: */*\r\n\r\n",
    )
    .await;
    let seen = String::from_utf8_lossy(body_of(&response)).into_owned();
    assert_eq!(
        seen,
        "GET /headers HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\nConnection: close\r\nX-Forwarded-For: 127.0.0.1\r\nX-Real-IP: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_with_content_length_and_chunked() {
    let proxy = echo_proxy(TestConfig::default()).await;
    let body = common::pseudo_random(200_000, 5)
        .iter()
        .map(|b| b'a' + b % 26)
        .collect::<Vec<u8>>();

    let mut request = format!(
        "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let response = raw_exchange(proxy.addr, &request).await;
    assert_eq!(status_of(&response), 200);
    assert_eq!(body_of(&response), &body[..]);

    let mut request =
        b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for chunk in body.chunks(7000) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let response = raw_exchange(proxy.addr, &request).await;
    assert_eq!(status_of(&response), 200);
    assert_eq!(body_of(&response), &body[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_head_is_400() {
    let proxy = echo_proxy(TestConfig::default()).await;
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n",
    ] {
        let response = raw_exchange(proxy.addr, bad).await;
        assert_eq!(
            status_of(&response),
            400,
            "{:?}",
            String::from_utf8_lossy(bad)
        );
        assert!(String::from_utf8_lossy(&response).contains("Connection: close"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrouted_path_is_404() {
    let proxy = echo_proxy(TestConfig::default().only_route("/websocket", "backend")).await;
    let response = raw_exchange(proxy.addr, common::upgrade_request("/other").as_bytes()).await;
    assert_eq!(status_of(&response), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_prefix_route_wins() {
    let (a, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let (b, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let config = TestConfig::default().route("/chat", "chat");
    let files = format!("{}{}", upstreams("backend", &[a]), upstreams("chat", &[b]));
    let proxy = Proxy::start(&config, &files);
    let chat = raw_exchange(proxy.addr, b"GET /chat/room HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(String::from_utf8_lossy(&chat).contains(&format!("X-Upstream: {b}")));
    let other = raw_exchange(proxy.addr, b"GET /news HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(String::from_utf8_lossy(&other).contains(&format!("X-Upstream: {a}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_is_431() {
    let proxy = echo_proxy(TestConfig::default().limit("max_request_head", 1024)).await;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nCookie: {}\r\n\r\n",
        "x".repeat(2000)
    );
    let response = raw_exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(status_of(&response), 431);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_head_is_408() {
    let proxy = echo_proxy(TestConfig::default().timeout("handshake", "300ms")).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let response = common::read_to_close(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(status_of(&response), 408);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_upstreams_down_is_502_and_logged() {
    let proxy = Proxy::start(
        &TestConfig::default(),
        &upstreams("backend", &[common::dead_addr(), common::dead_addr()]),
    );
    let response = raw_exchange(proxy.addr, common::upgrade_request("/ws").as_bytes()).await;
    assert_eq!(status_of(&response), 502);
    assert!(
        proxy
            .wait_log("refused or failed", Duration::from_secs(5))
            .await
    );
}

/// An upstream whose accept queue is full never completes the TCP handshake: the connect
/// timeout fires, and with every server timing out the client gets 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_upstreams_timing_out_is_504() {
    let blackhole =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    blackhole
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    blackhole.listen(0).unwrap();
    let addr = blackhole.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        fillers.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    let proxy = Proxy::start(
        &TestConfig::default().timeout("connect", "300ms"),
        &upstreams("backend", &[addr]),
    );
    let started = std::time::Instant::now();
    let response = raw_exchange(proxy.addr, common::upgrade_request("/ws").as_bytes()).await;
    assert_eq!(status_of(&response), 504);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_without_response_is_504() {
    let up = raw_upstream::start(|s, _, _| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(s);
    })
    .await;
    let proxy = Proxy::start(
        &TestConfig::default().timeout("response", "300ms"),
        &upstreams("backend", &[up]),
    );
    let response = raw_exchange(proxy.addr, common::upgrade_request("/ws").as_bytes()).await;
    assert_eq!(status_of(&response), 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_is_503_and_service_resumes() {
    let (up, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(
        &TestConfig::default().limit("max_connections", 2),
        &upstreams("backend", &[up]),
    );
    let (a, _) = tokio_tungstenite::connect_async(proxy.url("/ws"))
        .await
        .unwrap();
    let (b, _) = tokio_tungstenite::connect_async(proxy.url("/ws"))
        .await
        .unwrap();
    let response = raw_exchange(proxy.addr, common::upgrade_request("/ws").as_bytes()).await;
    assert_eq!(status_of(&response), 503);
    drop((a, b));
    let mut ok = false;
    for _ in 0..100 {
        if tokio_tungstenite::connect_async(proxy.url("/ws"))
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "service resumes once connections close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_server_is_skipped_for_the_next_one() {
    let (live, seen) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(
        &TestConfig::default(),
        &upstreams("backend", &[common::dead_addr(), live]),
    );
    for i in 0..10 {
        let (mut ws, _) = tokio_tungstenite::connect_async(proxy.url("/ws"))
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        ws.close(None).await.unwrap();
    }
    assert_eq!(seen.upgrades.load(std::sync::atomic::Ordering::Relaxed), 10);
}

/// A refused upgrade is passed to the client and the connection ends: bytes the client sent
/// after its head never reach the upstream, so nothing can be smuggled through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrade_is_passed_on_and_never_tunnelled() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let up = raw_upstream::start(move |mut s, _, rest| {
        let tx = tx.clone();
        async move {
            s.write_all(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\nnope")
                .await
                .unwrap();
            let mut more = rest;
            let _ = tokio::time::timeout(Duration::from_millis(500), s.read_to_end(&mut more)).await;
            let _ = tx.send(more);
        }
    })
    .await;
    let proxy = Proxy::start(&TestConfig::default(), &upstreams("backend", &[up]));
    let mut request = common::upgrade_request("/ws").into_bytes();
    request.extend_from_slice(b"GET /admin HTTP/1.1\r\nHost: internal\r\n\r\n");
    let response = raw_exchange(proxy.addr, &request).await;
    let text = String::from_utf8_lossy(&response);
    assert_eq!(status_of(&response), 426, "{text}");
    assert!(
        text.contains("Connection: close\r\n") && text.ends_with("nope"),
        "{text}"
    );
    let smuggled = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        smuggled.is_empty(),
        "upstream got {:?}",
        String::from_utf8_lossy(&smuggled)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_leaves_early_gets_nothing_and_is_not_logged_as_error() {
    let proxy = echo_proxy(TestConfig::default()).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"GET / HT").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(got.is_empty());
}

/// `Expect: 100-continue`: the interim response reaches the client, the body then flows up,
/// and the final response follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_passes_the_interim_response() {
    let up = raw_upstream::start(|mut s, _, mut body| async move {
        s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.unwrap();
        while body.len() < 5 {
            let mut chunk = [0u8; 64];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            body.extend_from_slice(&chunk[..n]);
        }
        let reply = format!(
            "HTTP/1.1 201 Created\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(reply.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
    })
    .await;
    let proxy = Proxy::start(&TestConfig::default(), &upstreams("backend", &[up]));
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let mut interim = Vec::new();
    while !interim.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(stream.read(&mut byte).await.unwrap(), 1);
        interim.push(byte[0]);
    }
    assert_eq!(interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.unwrap();
    let response = common::read_response(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(
        status_of(&response),
        201,
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    assert_eq!(body_of(&response), b"hello");
}
