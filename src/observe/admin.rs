//! The admin listener: `GET /metrics` (Prometheus text) and `GET /healthz` for operators. It
//! runs on its own thread with blocking I/O, away from the workers' rings: a scrape never
//! competes with traffic for a worker.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::debug;

use super::metrics::{self, Snapshot};
use crate::proxy::Shared;

const MAX_HEAD: usize = 8192;

/// Binds `addr` and serves it on a new thread; returns the bound address.
pub fn spawn(addr: SocketAddr, shared: Arc<Shared>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("wsplice-admin".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = serve(stream, &shared) {
                    debug!("admin request failed: {e}");
                }
            }
        })?;
    Ok(bound)
}

fn serve(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let (method, path) = loop {
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
            _ => {
                return respond(
                    &mut stream,
                    "400 Bad Request",
                    "text/plain",
                    "bad request\n",
                );
            }
        }
    };
    let get = method == "GET" || method == "HEAD";
    match path.as_str() {
        "/metrics" if get => {
            let body = metrics::render(&shared.metrics, &snapshot(shared));
            respond(
                &mut stream,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
        }
        "/healthz" if get => {
            if shared.stopping.load(Ordering::Relaxed) {
                respond(
                    &mut stream,
                    "503 Service Unavailable",
                    "text/plain",
                    "draining\n",
                )
            } else {
                respond(&mut stream, "200 OK", "text/plain", "ok\n")
            }
        }
        "/metrics" | "/healthz" => respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "use GET\n",
        ),
        _ => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            "try /metrics or /healthz\n",
        ),
    }
}

fn snapshot(shared: &Shared) -> Snapshot {
    let r = &shared.reloads;
    Snapshot {
        reloads_succeeded: r.succeeded.load(Ordering::Relaxed),
        reloads_failed: r.failed.load(Ordering::Relaxed),
        last_reload_unix: r.last_success_unix.load(Ordering::Relaxed),
        table_version: r.version.load(Ordering::Relaxed),
        draining: shared.stopping.load(Ordering::Relaxed),
    }
}

fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}
