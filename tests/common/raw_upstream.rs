//! A scripted upstream for tests that need exact bytes: it reads one request head, then hands
//! the stream, the head and any bytes that followed it to the test's handler.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Starts an upstream on 127.0.0.1:0 whose connections run `handler(stream, head, rest)`.
pub async fn start<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream, Vec<u8>, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                if let Some((head, rest)) = read_head(&mut stream).await {
                    handler(stream, head, rest).await;
                }
            });
        }
    });
    addr
}

/// Reads one request head; returns it and the bytes that came after it, or `None` if the
/// connection ended first.
pub async fn read_head(stream: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let head_len = loop {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let rest = buf.split_off(head_len);
    Some((buf, rest))
}

/// The `101` for [`super::upgrade_request`]: its accept value is that of the key there.
pub const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

/// Answers `101`, then echoes raw bytes until the client's end of stream, then closes.
pub async fn raw_echo(mut stream: TcpStream, rest: Vec<u8>) {
    if stream.write_all(SWITCHING).await.is_err() || stream.write_all(&rest).await.is_err() {
        return;
    }
    let (mut r, mut w) = stream.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}
