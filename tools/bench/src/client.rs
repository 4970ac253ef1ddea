//! The client side of one benchmark connection: connect, upgrade (checking the `101` and its
//! `Sec-WebSocket-Accept`), then read server frames out of one reused buffer.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

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
    pub stream: TcpStream,
    pub reader: FrameReader,
}

/// Connects to `addr` and upgrades `path`; checks the status and the accept key.
pub async fn connect(addr: SocketAddr, path: &str, rng: &mut Rng) -> Result<Conn, LoadError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|source| LoadError::Connect { addr, source })?;
    stream.set_nodelay(true)?;
    let key = rng.key();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;

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
    path: &str,
    n: usize,
    timeout: Duration,
) -> Result<Vec<Conn>, LoadError> {
    let permits = Arc::new(Semaphore::new(OPEN_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let permits = permits.clone();
        let path = path.to_string();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("never closed");
            let mut rng = Rng::new(0x5EED ^ i as u64);
            match tokio::time::timeout(timeout, connect(addr, &path, &mut rng)).await {
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
