//! A WebSocket echo upstream built on tokio-tungstenite, shared by the tests and the demo
//! (`examples/demo_upstream.rs`). It also answers plain HTTP: `GET /headers` returns the
//! request head it received, a request with a body gets the body back, `GET /` and `GET /demo`
//! the demo page (`demo.html`: a WebSocket client that runs in a browser), anything else a
//! greeting naming the upstream. [`start_unix`] serves the same on a unix socket.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The demo page; `{{upstream}}` becomes the address of the upstream that served it.
const DEMO_PAGE: &str = include_str!("demo.html");

/// What an echo upstream has seen.
#[derive(Debug, Default)]
pub struct Seen {
    /// Upgraded WebSocket connections.
    pub upgrades: AtomicUsize,
    /// Plain HTTP requests answered.
    pub requests: AtomicUsize,
}

/// Starts an echo upstream on `addr` (port 0 for any) in the current tokio runtime.
pub async fn start(addr: &str) -> std::io::Result<(SocketAddr, Arc<Seen>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let seen = Arc::new(Seen::default());
    let counters = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = counters.clone();
            tokio::spawn(async move {
                stream.set_nodelay(true)?;
                serve(stream, local.to_string(), seen).await
            });
        }
    });
    Ok((local, seen))
}

/// Starts an echo upstream listening on the unix socket `path`; it names itself
/// `unix:PATH`.
#[allow(dead_code)]
pub fn start_unix(path: &Path) -> std::io::Result<Arc<Seen>> {
    let listener = UnixListener::bind(path)?;
    let me = format!("unix:{}", path.display());
    let seen = Arc::new(Seen::default());
    let counters = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(serve(stream, me.clone(), counters.clone()));
        }
    });
    Ok(seen)
}

async fn serve(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    me: String,
    seen: Arc<Seen>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let head_len = loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    let mut key = None;
    let mut content_length = 0usize;
    let mut chunked = false;
    let mut upgrade = false;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "sec-websocket-key" => key = Some(value.to_string()),
            "upgrade" => upgrade = value.eq_ignore_ascii_case("websocket"),
            "content-length" => content_length = value.parse().unwrap_or(0),
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            _ => {}
        }
    }
    let mut request_line = head.split(' ');
    let method = request_line.next().unwrap_or("").to_string();
    let path = request_line.next().unwrap_or("").to_string();

    if let (true, Some(key)) = (upgrade, key) {
        seen.upgrades.fetch_add(1, Ordering::Relaxed);
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nX-Upstream: {me}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        );
        stream.write_all(response.as_bytes()).await?;
        let rest = buf[head_len..].to_vec();
        let mut ws = WebSocketStream::from_partially_read(stream, rest, Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                ws.send(msg).await.map_err(std::io::Error::other)?;
            }
        }
        return Ok(());
    }

    let mut body = buf[head_len..].to_vec();
    if chunked {
        while find(&body, b"0\r\n\r\n").is_none() {
            if stream.read_buf(&mut body).await? == 0 {
                break;
            }
        }
        body = dechunk(&body);
    } else {
        while body.len() < content_length {
            if stream.read_buf(&mut body).await? == 0 {
                break;
            }
        }
    }
    seen.requests.fetch_add(1, Ordering::Relaxed);
    let page = method == "GET" && matches!(path.split('?').next(), Some("/" | "/demo"));
    let (content_type, reply): (&str, Vec<u8>) = if path == "/headers" {
        ("text/plain", head.into_bytes())
    } else if !body.is_empty() {
        ("text/plain", body)
    } else if page {
        let html = DEMO_PAGE.replace("{{upstream}}", &me);
        ("text/html; charset=utf-8", html.into_bytes())
    } else {
        let greeting = format!("hello from upstream {me}: {method} {path}\n");
        ("text/plain", greeting.into_bytes())
    };
    let response_head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nX-Upstream: {me}\r\nConnection: keep-alive\r\n\r\n",
        reply.len()
    );
    stream.write_all(response_head.as_bytes()).await?;
    stream.write_all(&reply).await?;
    stream.shutdown().await
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a chunked body (no trailers, no extensions needed by the tests).
fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(data, b"\r\n") {
        let size_str = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}
