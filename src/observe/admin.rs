//! The admin listener: `GET /metrics` (Prometheus text) and `GET /healthz` for operators. It
//! runs on threads of its own with blocking I/O, away from the workers' rings: a scrape never
//! competes with traffic for a worker. Each request gets its own thread, up to a bound, and
//! one deadline, so a slow or silent client cannot hold the endpoint.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::metrics::{self, Metrics, Snapshot};

const MAX_HEAD: usize = 8192;
/// The whole of one request, read and answered; a client not done by then is cut.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Requests served at once; a connection beyond them is answered 503 at once.
pub const MAX_CONCURRENT: usize = 16;

/// What the endpoint reports: the counters and the process-wide values beside them.
pub trait Source: Send + Sync + 'static {
    fn metrics(&self) -> &Metrics;
    /// Read once per request; `draining` also decides `/healthz`.
    fn snapshot(&self) -> Snapshot;
}

/// The running endpoint.
pub struct Admin {
    pub addr: SocketAddr,
    /// A duplicate of the listening socket, to stop it.
    listener: TcpListener,
    closed: Arc<AtomicBool>,
}

impl Admin {
    /// Stops answering (requests under way finish): after a binary upgrade the new
    /// process answers on the port, and an old one draining its last tunnels would make
    /// every other health check read "draining".
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = socket2::SockRef::from(&self.listener).shutdown(std::net::Shutdown::Read);
    }
}

/// Binds `addr` and serves it from new threads.
/// The port is bound with SO_REUSEPORT, as the proxy's listeners are: during a binary
/// upgrade the new process serves it while the old one still does.
pub fn spawn(addr: SocketAddr, source: Arc<dyn Source>) -> io::Result<Admin> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    let listener: TcpListener = socket.into();
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        warn!(
            "admin endpoint {bound} is not on a loopback address: whoever reaches it reads /metrics (upstream addresses, traffic) and /healthz; bind it to 127.0.0.1 or firewall the port"
        );
    }
    let admin = Admin {
        addr: bound,
        listener: listener.try_clone()?,
        closed: Arc::new(AtomicBool::new(false)),
    };
    let closed = admin.closed.clone();
    std::thread::Builder::new()
        .name("wsplice-admin".into())
        .spawn(move || accept_loop(listener, source, &closed))?;
    Ok(admin)
}

fn accept_loop(listener: TcpListener, source: Arc<dyn Source>, closed: &AtomicBool) {
    let serving = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(_) if closed.load(Ordering::SeqCst) => return,
            Err(e) => {
                debug!("admin accept failed: {e}");
                continue;
            }
        };
        // Only this thread adds, so the check cannot be overtaken.
        if serving.load(Ordering::Relaxed) >= MAX_CONCURRENT {
            refuse_busy(stream);
            continue;
        }
        serving.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(serving.clone());
        let source = source.clone();
        let spawned = std::thread::Builder::new()
            .name("wsplice-admin-request".into())
            .spawn(move || {
                let _slot = slot;
                if let Err(e) = serve(stream, &*source) {
                    debug!("admin request failed: {e}");
                }
            });
        if let Err(e) = spawned {
            debug!("cannot start an admin request thread: {e}");
        }
    }
}

/// One of the `MAX_CONCURRENT` places, given back when the request's thread ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Answers without reading: a fresh socket's send buffer takes the few bytes at once.
fn refuse_busy(mut stream: TcpStream) {
    debug!("admin endpoint busy: {MAX_CONCURRENT} requests in progress");
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nRetry-After: 1\r\nConnection: close\r\n\r\nbusy\n",
    );
}

/// Time left before `deadline`, or `TimedOut` once it has passed.
fn left(deadline: Instant) -> io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "admin request deadline passed"))
}

fn serve(mut stream: TcpStream, source: &dyn Source) -> io::Result<()> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let (method, path) = loop {
        stream.set_read_timeout(Some(left(deadline)?))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let path = req.path.unwrap_or("");
                let path = path.split('?').next().unwrap_or("");
                break (req.method.unwrap_or("").to_string(), path.to_string());
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => {}
            _ => return respond(&mut stream, deadline, "400 Bad Request", "bad request\n"),
        }
    };
    let get = method == "GET" || method == "HEAD";
    match path.as_str() {
        "/metrics" if get => {
            let body = metrics::render(source.metrics(), &source.snapshot());
            let response =
                format_response("200 OK", "text/plain; version=0.0.4; charset=utf-8", &body);
            write_by(&mut stream, deadline, &response)
        }
        "/healthz" if get => {
            if source.snapshot().draining {
                respond(
                    &mut stream,
                    deadline,
                    "503 Service Unavailable",
                    "draining\n",
                )
            } else {
                respond(&mut stream, deadline, "200 OK", "ok\n")
            }
        }
        "/metrics" | "/healthz" => {
            respond(&mut stream, deadline, "405 Method Not Allowed", "use GET\n")
        }
        _ => respond(
            &mut stream,
            deadline,
            "404 Not Found",
            "try /metrics or /healthz\n",
        ),
    }
}

fn respond(stream: &mut TcpStream, deadline: Instant, status: &str, body: &str) -> io::Result<()> {
    write_by(
        stream,
        deadline,
        &format_response(status, "text/plain", body),
    )
}

fn format_response(status: &str, kind: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Writes all of `bytes` before `deadline`: a client that does not read is cut then too.
fn write_by(stream: &mut TcpStream, deadline: Instant, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.set_write_timeout(Some(left(deadline)?))?;
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
