//! WebSocket traffic through the real binary: real tokio-tungstenite clients and upstreams.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Proxy, TestConfig, echo_upstream, upstreams};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

const STEP: Duration = Duration::from_secs(10);

async fn next(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
) -> Message {
    tokio::time::timeout(STEP, ws.next())
        .await
        .expect("echo within 10 s")
        .expect("stream open")
        .expect("valid message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoes_text_and_binary_of_every_size() {
    let (up, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(&TestConfig::default(), &upstreams("backend", &[up]));
    let (mut ws, response) = tokio_tungstenite::connect_async(proxy.url("/websocket"))
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    for size in [0usize, 1, 125, 126, 65535, 65536, 1 << 20] {
        let data = common::pseudo_random(size, size as u64 + 1);
        ws.send(Message::binary(data.clone())).await.unwrap();
        assert_eq!(
            next(&mut ws).await,
            Message::binary(data.clone()),
            "binary {size}"
        );
        let text: String = data.iter().map(|b| char::from(b'a' + b % 26)).collect();
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text(text), "text {size}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_message_ping_pong_and_close_code() {
    let (up, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(&TestConfig::default(), &upstreams("backend", &[up]));
    let (mut ws, _) = tokio_tungstenite::connect_async(proxy.url("/websocket"))
        .await
        .unwrap();

    ws.send(Message::Frame(Frame::message(
        "frag".as_bytes().to_vec(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        "men".as_bytes().to_vec(),
        OpCode::Data(Data::Continue),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        "ted".as_bytes().to_vec(),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(next(&mut ws).await, Message::text("fragmented"));

    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        Message::Pong(b"are you there".to_vec().into())
    );

    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Library(4001),
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    match next(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Library(4001)),
        other => panic!("expected the close code back, got {other:?}"),
    }
}

/// A client may send its first frame in the same write as the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_in_the_same_write_as_the_handshake_is_echoed() {
    let (up, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(&TestConfig::default(), &upstreams("backend", &[up]));
    let mut bytes = common::upgrade_request("/websocket").into_bytes();
    let payload = b"early bird";
    let mask = [1u8, 2, 3, 4];
    bytes.extend_from_slice(&[0x81, 0x80 | payload.len() as u8]);
    bytes.extend_from_slice(&mask);
    bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let mut expected_frame = vec![0x81, payload.len() as u8];
    expected_frame.extend_from_slice(payload);
    let mut got = Vec::new();
    let found = tokio::time::timeout(STEP, async {
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n")
                && got.len() >= i + 4 + expected_frame.len()
            {
                return (i + 4, got.clone());
            }
        }
    })
    .await
    .expect("101 and echo within 10 s");
    let (head_len, got) = found;
    assert!(got.starts_with(b"HTTP/1.1 101"));
    assert_eq!(&got[head_len..], &expected_frame[..]);
}

/// 1,000 tunnels open at once over two upstreams: every one echoes, and round robin splits
/// them evenly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_tunnels_round_robin() {
    const N: usize = 1000;
    let (a, seen_a) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let (b, seen_b) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(&TestConfig::default(), &upstreams("backend", &[a, b]));
    let url = proxy.url("/websocket");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::new();
    for i in 0..N {
        let url = url.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            let text = format!("message {i}");
            ws.send(Message::text(text.clone())).await.unwrap();
            assert_eq!(next(&mut ws).await, Message::text(text));
            // All tunnels are open at the same time here.
            barrier.wait().await;
            let text = format!("again {i}");
            ws.send(Message::text(text.clone())).await.unwrap();
            assert_eq!(next(&mut ws).await, Message::text(text));
            ws.close(None).await.unwrap();
        }));
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await
    .expect("1,000 tunnels within 60 s");
    let (na, nb) = (
        seen_a.upgrades.load(Ordering::Relaxed),
        seen_b.upgrades.load(Ordering::Relaxed),
    );
    assert_eq!(na + nb, N);
    assert!(na.abs_diff(nb) <= 1, "split {na}/{nb}");
}
