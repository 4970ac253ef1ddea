//! The benchmark's upstream: a WebSocket echo (any path) and sink (`/sink`) server that does
//! one read and one write per batch of frames, so the load, not the upstream, is measured.
//! The sink checks every byte against the bulk pattern and reports its running byte count.

use std::io;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::ws::{self, OP_CLOSE, OP_PING, OP_PONG};

const MAX_HEAD: usize = 16 * 1024;
const ECHO_BUF: usize = 16 * 1024;
const SINK_BUF: usize = 256 * 1024;
/// How often, at most, the sink tells the client how many bytes it has: rare enough to add
/// almost no reverse traffic, often enough to time a bulk run to the millisecond.
const SINK_REPORT_EVERY: Duration = Duration::from_millis(1);

/// Accepts connections on `listener` forever, one task each.
pub async fn serve(listener: TcpListener) -> io::Result<()> {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors or an aborted connection: keep serving the others.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = connection(stream).await;
        });
    }
}

/// An upstream running on its own thread(s) until dropped.
#[derive(Debug)]
pub struct Upstream {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Upstream {
    /// Starts the upstream on `addr` with `threads` runtime threads (1: a single-threaded
    /// runtime, the cheapest per message).
    pub fn start(addr: SocketAddr, threads: usize) -> io::Result<Upstream> {
        let runtime = crate::runtime(threads)?;
        let listener = runtime.block_on(TcpListener::bind(addr))?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel();
        let thread = thread::Builder::new()
            .name("bench-upstream".into())
            .spawn(move || {
                runtime.block_on(async {
                    tokio::select! {
                        _ = serve(listener) => {}
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(Upstream {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn connection(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; ECHO_BUF];
    let mut end = 0;
    let (head_len, sink, key) = loop {
        if end == buf.len() {
            if buf.len() >= MAX_HEAD {
                return respond(&mut stream, "431 Request Header Fields Too Large").await;
            }
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[end..]).await?;
        if n == 0 {
            return Ok(());
        }
        end += n;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..end]) {
            Ok(httparse::Status::Complete(len)) => {
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| h.value)
                };
                let upgrade =
                    header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"));
                let key = header("sec-websocket-key")
                    .filter(|_| upgrade)
                    .map(ws::accept_key);
                let sink = req.path.is_some_and(|p| p.starts_with("/sink"));
                break (len, sink, key);
            }
            Ok(httparse::Status::Partial) => {}
            Err(_) => return respond(&mut stream, "400 Bad Request").await,
        }
    };
    let Some(accept) = key else {
        return respond(&mut stream, "200 OK").await;
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(response.as_bytes()).await?;
    buf.copy_within(head_len..end, 0);
    end -= head_len;
    if sink {
        buf.resize(SINK_BUF.max(end), 0);
        sink_loop(stream, buf, end).await
    } else {
        echo_loop(stream, buf, end).await
    }
}

async fn respond(stream: &mut TcpStream, status: &str) -> io::Result<()> {
    let body = "wsplice-bench upstream\n";
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Echoes every data frame with its opcode and FIN bit, answers pings, and returns the close
/// frame before closing. All frames complete in one read are answered with one write.
async fn echo_loop(mut stream: TcpStream, mut buf: Vec<u8>, mut end: usize) -> io::Result<()> {
    let mut out = Vec::with_capacity(ECHO_BUF);
    let mut start = 0;
    loop {
        let mut closing = false;
        while let Some(h) = ws::parse_header(&buf[start..end]).map_err(invalid)? {
            if end - start < h.frame_len() {
                if buf.len() - start < h.frame_len() {
                    buf.resize(start + h.frame_len(), 0);
                }
                break;
            }
            let payload = &mut buf[start + h.header_len..start + h.frame_len()];
            if let Some(mask) = h.mask {
                ws::apply_mask(payload, mask);
            }
            match h.opcode {
                OP_PONG => {}
                OP_PING => {
                    ws::write_header(&mut out, true, OP_PONG, payload.len(), None);
                    out.extend_from_slice(payload);
                }
                op => {
                    ws::write_header(&mut out, h.fin, op, payload.len(), None);
                    out.extend_from_slice(payload);
                    closing = op == OP_CLOSE;
                }
            }
            start += h.frame_len();
            if closing {
                break;
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if closing {
            return stream.shutdown().await;
        }
        if start == end {
            start = 0;
            end = 0;
        } else if start > 0 && buf.len() - end < ECHO_BUF / 4 {
            buf.copy_within(start..end, 0);
            end -= start;
            start = 0;
        }
        if end == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[end..]).await?;
        if n == 0 {
            return Ok(());
        }
        end += n;
    }
}

/// Reads and checks raw bytes; whenever it has caught up with the socket, and at most every
/// [`SINK_REPORT_EVERY`], it writes its running byte count (u64 little-endian) back. A byte
/// that breaks the pattern closes the connection, which the client reports as an error.
async fn sink_loop(mut stream: TcpStream, mut buf: Vec<u8>, first: usize) -> io::Result<()> {
    let pattern = ws::bulk_pattern(buf.len());
    let mut count: u64 = 0;
    let mut reported: u64 = 0;
    let mut last_report = Instant::now();
    let mut filled = first;
    loop {
        if filled > 0 {
            let at = (count % 251) as usize;
            if buf[..filled] != pattern[at..at + filled] {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bulk byte mismatch near offset {count}"),
                ));
            }
            count += filled as u64;
            filled = 0;
        }
        match stream.try_read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                filled = n;
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if count != reported && last_report.elapsed() >= SINK_REPORT_EVERY {
            stream.write_all(&count.to_le_bytes()).await?;
            reported = count;
            last_report = Instant::now();
        }
        if count == reported {
            stream.readable().await?;
        } else {
            // Readiness waits are cancel-safe: nothing is lost if the timer wins.
            let _ = tokio::time::timeout(SINK_REPORT_EVERY, stream.readable()).await;
        }
    }
}

fn invalid(e: ws::FrameError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}
