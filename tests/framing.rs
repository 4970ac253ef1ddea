//! Plain exchanges end where their bodies end: a chunked request body is relayed up to its
//! last chunk and trailers and not a byte further, a response ends at its length (none for
//! `HEAD`, 204, 304) even when the upstream keeps the connection open, and a slow head is read
//! whole.

mod common;

use std::time::Duration;

use common::{Proxy, TestConfig, raw_exchange, record_upstream, status_of, upstreams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
/// With `Connection: close`, what follows the body is not a next request: it is dropped.
const CHUNKED_HEAD: &[u8] =
    b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
const BODY: &[u8] = b"5\r\nhello\r\n1;ext=\"v\"\r\n!\r\n0\r\nX-Checksum: 1\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// An upstream that reads a whole chunked request before it answers [`OK`], then reads on
/// for a while, as a keep-alive server would, and reports every byte after the head.
async fn chunked_upstream() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = common::raw_upstream::start(move |mut stream, _head, mut after| {
        let tx = tx.clone();
        async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while !after.ends_with(b"0\r\nX-Checksum: 1\r\n\r\n") {
                    let mut chunk = [0u8; 4096];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => after.extend_from_slice(&chunk[..n]),
                    }
                }
            })
            .await;
            let _ = stream.write_all(OK).await;
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut chunk).await {
                    after.extend_from_slice(&chunk[..n]);
                }
            })
            .await;
            let _ = tx.send(after);
        }
    })
    .await;
    (addr, rx)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Vec<u8>>) -> Vec<u8> {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the upstream's bytes within 10 s")
        .expect("upstream task alive")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_ends_at_its_last_chunk_and_trailers() {
    let (up, mut seen) = chunked_upstream().await;
    let proxy = Proxy::start(&TestConfig::default(), &upstreams("backend", &[up]));

    // Body and a smuggled request in the same packet as the head.
    let request = [CHUNKED_HEAD, BODY, SMUGGLED].concat();
    let response = raw_exchange(proxy.addr, &request).await;
    assert!(response.ends_with(b"\r\n\r\nok"), "{}", text(&response));
    assert_eq!(text(&next(&mut seen).await), text(BODY));

    // The same, trickled in after the head, a few bytes at a time.
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.set_nodelay(true).unwrap();
    client.write_all(CHUNKED_HEAD).await.unwrap();
    for piece in [BODY, SMUGGLED].concat().chunks(3) {
        tokio::time::sleep(Duration::from_millis(2)).await;
        // The proxy may close once the answer is through: the rest is not wanted.
        if client.write_all(piece).await.is_err() {
            break;
        }
    }
    let response = common::read_to_close(&mut client, Duration::from_secs(10)).await;
    assert!(response.ends_with(b"\r\n\r\nok"), "{}", text(&response));
    assert_eq!(text(&next(&mut seen).await), text(BODY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_refused_with_400() {
    let (up, mut seen) = chunked_upstream().await;
    let proxy = Proxy::start(&TestConfig::default(), &upstreams("backend", &[up]));

    // In the head's packet: refused before anything goes upstream.
    let bad = b"5\r\nhello\r\nzz\r\nsecret\r\n0\r\n\r\n";
    let response = raw_exchange(proxy.addr, &[CHUNKED_HEAD, bad].concat()).await;
    assert_eq!(status_of(&response), 400, "{}", text(&response));
    let logged = proxy
        .wait_log(
            "malformed chunked request body: invalid chunk size",
            Duration::from_secs(10),
        )
        .await;
    assert!(logged, "{}", proxy.log());

    // After the head went up: the upstream gets nothing past the last good read.
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.write_all(CHUNKED_HEAD).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    client.write_all(b"5\r\nhello\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    client
        .write_all(b"5\r\nworld\n\r\n0\r\n\r\n")
        .await
        .unwrap();
    let response = common::read_to_close(&mut client, Duration::from_secs(10)).await;
    assert_eq!(status_of(&response), 400, "{}", text(&response));
    assert_eq!(text(&next(&mut seen).await), "5\r\nhello\r\n");
}

/// A keep-alive upstream that ignores `Connection: close`: the proxy must close after the
/// response's body, not when the upstream or `timeouts.idle` does.
async fn held_response(request: &[u8], answer: &[u8], want: &[u8]) {
    let mut up = record_upstream::start(answer.to_vec(), Duration::from_secs(5)).await;
    let proxy = Proxy::start(&TestConfig::default(), &upstreams("backend", &[up.addr]));
    let response = raw_exchange(proxy.addr, request).await;
    assert_eq!(text(&response), text(want));
    let record = up.next().await;
    assert!(record.closed_by_proxy, "the proxy waited for the upstream");
    assert_eq!(text(&record.after), "");
}

fn closing(head: &str, body: &str) -> Vec<u8> {
    format!("{head}\r\nConnection: close\r\n\r\n{body}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_ends_at_its_length() {
    let get = b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
    let want = closing("HTTP/1.1 200 OK\r\nContent-Length: 5", "hello");
    held_response(get, answer, &want).await;

    let chunked =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nEXTRA";
    let want = closing(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked",
        "5\r\nhello\r\n0\r\n\r\n",
    );
    held_response(get, chunked, &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_204_and_304_responses_have_no_body() {
    let head = b"HEAD /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
    let want = closing("HTTP/1.1 200 OK\r\nContent-Length: 100", "");
    held_response(head, answer, &want).await;

    let get = b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    for status in ["204 No Content", "304 Not Modified"] {
        let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 100\r\n\r\n");
        let want = closing(&format!("HTTP/1.1 {status}\r\nContent-Length: 100"), "");
        held_response(get, answer.as_bytes(), &want).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_with_an_untrustworthy_length_is_a_502() {
    for fields in [
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: five",
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
    ] {
        let answer = format!("HTTP/1.1 200 OK\r\n{fields}\r\n\r\nhello");
        let up = record_upstream::start(answer.into_bytes(), Duration::from_secs(5)).await;
        let proxy = Proxy::start(&TestConfig::default(), &upstreams("backend", &[up.addr]));
        let response = raw_exchange(proxy.addr, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status_of(&response), 502, "{fields}: {}", text(&response));
        assert!(!text(&response).contains("hello"), "{}", text(&response));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16_kib_head_in_1_byte_writes_is_served() {
    let (up, _) = common::echo_upstream::start("127.0.0.1:0").await.unwrap();
    let config = TestConfig::default().limit("max_request_head", 32768);
    let proxy = Proxy::start(&config, &upstreams("backend", &[up]));
    let mut head = b"GET /slow HTTP/1.1\r\nHost: x\r\n".to_vec();
    let pad = format!("X-Pad: {}\r\n", "a".repeat(400));
    while head.len() < 16 * 1024 {
        head.extend_from_slice(pad.as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    client.set_nodelay(true).unwrap();
    for byte in &head {
        client.write_all(std::slice::from_ref(byte)).await.unwrap();
    }
    let response = common::read_response(&mut client, Duration::from_secs(10)).await;
    assert_eq!(status_of(&response), 200, "{}", text(&response));
    assert!(response.ends_with(b"GET /slow\n"), "{}", text(&response));
}
