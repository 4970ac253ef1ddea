//! The client side of one benchmark connection: connect (over TLS in the wss cells),
//! upgrade (checking the `101` and its `Sec-WebSocket-Accept`), then read server frames out
//! of one reused buffer.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::client::TlsStream;

use crate::tls;
use crate::ws::{self, Header, Rng};

/// Upgrades in flight at once while opening many connections, so a proxy's listen backlog
/// is never what is measured.
pub const OPEN_CONCURRENCY: usize = 256;
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Why a benchmark connection failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("TLS handshake: {0}")]
    Tls(String),
    #[error("upgrade refused or invalid: {0}")]
    Upgrade(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("echo mismatch on connection {conn}: message {seq} came back different")]
    Mismatch { conn: u64, seq: u64 },
    #[error("connection closed by the peer {0}")]
    Closed(&'static str),
    #[error("timed out {0}")]
    Timeout(&'static str),
}

/// An upgraded connection and the bytes that followed the `101` head.
#[derive(Debug)]
pub struct Conn {
    pub stream: Stream,
    pub reader: FrameReader,
}

/// A connection's byte stream: plain TCP, or TLS over it (the wss cells).
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The read half of a [`Stream::split`].
#[derive(Debug)]
pub enum ReadHalf<'a> {
    Plain(tokio::net::tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut TlsStream<TcpStream>>),
}

/// The write half of a [`Stream::split`].
#[derive(Debug)]
pub enum WriteHalf<'a> {
    Plain(tokio::net::tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut TlsStream<TcpStream>>),
}

impl Stream {
    /// Halves to read and write at once from one task. A plain stream splits for free (as
    /// before TLS came); a TLS stream's halves take turns on one session.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(&mut **s);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }
}

/// Forwards the poll functions of a two-variant enum to whichever variant it holds.
macro_rules! forward_io {
    ($name:ident $(<$l:lifetime>)?) => {
        impl$(<$l>)? AsyncRead for $name$(<$l>)? {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    $name::Tls(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
    (write $name:ident $(<$l:lifetime>)?) => {
        impl$(<$l>)? AsyncWrite for $name$(<$l>)? {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    $name::Tls(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_flush(cx),
                    $name::Tls(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $name::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    $name::Tls(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

forward_io!(Stream);
forward_io!(write Stream);
forward_io!(ReadHalf<'a>);
forward_io!(write WriteHalf<'a>);

/// Writes all of `bytes` and, over TLS, pushes out the records rustls may still hold (a
/// plain socket's flush does nothing), so the peer has everything before an answer is
/// awaited.
pub async fn send<W: AsyncWrite + Unpin>(stream: &mut W, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Connects to `addr` (with a TLS handshake first when `tls` is given) and upgrades `path`;
/// checks the status and the accept key.
pub async fn connect(
    addr: SocketAddr,
    tls: Option<&tls::Client>,
    path: &str,
    rng: &mut Rng,
) -> Result<Conn, LoadError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| LoadError::Connect { addr, source })?;
    tcp.set_nodelay(true)?;
    let (mut stream, host) = match tls {
        None => (Stream::Plain(tcp), addr.to_string()),
        Some(tls) => {
            let stream = tls
                .handshake(tcp)
                .await
                .map_err(|e| LoadError::Tls(e.to_string()))?;
            (
                Stream::Tls(Box::new(stream)),
                format!("{}:{}", tls.host, addr.port()),
            )
        }
    };
    let key = rng.key();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    send(&mut stream, request.as_bytes()).await?;

    let mut reader = FrameReader::new(4096);
    let head_len = loop {
        if reader.fill(&mut stream).await? == 0 {
            return Err(LoadError::Upgrade(
                "connection closed before a response head".into(),
            ));
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(reader.pending()) {
            Ok(httparse::Status::Complete(len)) => {
                let header = |name: &str| {
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| h.value)
                };
                if resp.code != Some(101) {
                    return Err(LoadError::Upgrade(format!(
                        "status {} instead of 101",
                        resp.code.unwrap_or(0)
                    )));
                }
                let expected = ws::accept_key(key.as_bytes());
                if header("sec-websocket-accept") != Some(expected.as_bytes()) {
                    return Err(LoadError::Upgrade("wrong Sec-WebSocket-Accept".into()));
                }
                if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case(b"websocket")) {
                    return Err(LoadError::Upgrade("no Upgrade: websocket".into()));
                }
                break len;
            }
            Ok(httparse::Status::Partial) if reader.pending().len() < MAX_RESPONSE_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(LoadError::Upgrade("response head over 16 KiB".into()));
            }
            Err(e) => return Err(LoadError::Upgrade(format!("bad response head: {e}"))),
        }
    };
    reader.consume(head_len);
    Ok(Conn { stream, reader })
}

/// Opens `n` upgraded connections, [`OPEN_CONCURRENCY`] at a time, each within `timeout`.
pub async fn open_many(
    addr: SocketAddr,
    tls: Option<&tls::Client>,
    path: &str,
    n: usize,
    timeout: Duration,
) -> Result<Vec<Conn>, LoadError> {
    let permits = Arc::new(Semaphore::new(OPEN_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let permits = permits.clone();
        let path = path.to_string();
        let tls = tls.cloned();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("never closed");
            let mut rng = Rng::new(0x5EED ^ i as u64);
            match tokio::time::timeout(timeout, connect(addr, tls.as_ref(), &path, &mut rng)).await
            {
                Ok(conn) => conn.map(|c| (i, c)),
                Err(_) => Err(LoadError::Timeout("opening a connection")),
            }
        });
    }
    let mut conns: Vec<Option<Conn>> = (0..n).map(|_| None).collect();
    while let Some(done) = tasks.join_next().await {
        let (i, conn) = done.expect("open task panicked")?;
        conns[i] = Some(conn);
    }
    Ok(conns
        .into_iter()
        .map(|c| c.expect("every task reported"))
        .collect())
}

/// One read buffer per connection; frames are handed out as slices into it.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameReader {
    pub fn new(capacity: usize) -> Self {
        FrameReader {
            buf: vec![0; capacity],
            start: 0,
            end: 0,
        }
    }

    /// Bytes read but not consumed yet.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once from `stream`, making room first; returns the bytes read (0 at EOF).
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, stream: &mut R) -> io::Result<usize> {
        self.make_room(0);
        let n = stream.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// The next complete frame if one is buffered: its header and its (unmasked) payload.
    pub fn next_frame(&mut self) -> Result<Option<(Header, &[u8])>, LoadError> {
        let Some(h) =
            ws::parse_header(self.pending()).map_err(|e| LoadError::Protocol(e.to_string()))?
        else {
            return Ok(None);
        };
        if self.end - self.start < h.frame_len() {
            self.make_room(h.frame_len());
            return Ok(None);
        }
        if h.mask.is_some() {
            return Err(LoadError::Protocol("server frame is masked".into()));
        }
        let at = self.start + h.header_len;
        self.start += h.frame_len();
        let payload = &self.buf[at..at + h.payload_len];
        if self.start == self.end {
            // The slice stays valid: the indices are only reset for the next fill.
            self.start = 0;
            self.end = 0;
        }
        Ok(Some((h, payload)))
    }

    /// Reads until a whole frame is buffered and returns it.
    pub async fn read_frame<R: AsyncRead + Unpin>(
        &mut self,
        stream: &mut R,
    ) -> Result<(Header, &[u8]), LoadError> {
        loop {
            let header =
                ws::parse_header(self.pending()).map_err(|e| LoadError::Protocol(e.to_string()))?;
            if header.is_some_and(|h| self.end - self.start >= h.frame_len()) {
                break;
            }
            if let Some(h) = header {
                self.make_room(h.frame_len());
            }
            if self.fill(stream).await? == 0 {
                return Err(LoadError::Closed("in the middle of a frame or before one"));
            }
        }
        Ok(self.next_frame()?.expect("a whole frame is buffered"))
    }

    /// Ensures free space after `end` (and room for a frame of `frame_len` bytes).
    fn make_room(&mut self, frame_len: usize) {
        if self.start > 0 && (self.buf.len() - self.end < self.buf.len() / 4 || frame_len > 0) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let need = frame_len.max(self.end + 1);
        if need > self.buf.len() {
            self.buf.resize(need.max(self.buf.len() * 2), 0);
        }
    }
}
