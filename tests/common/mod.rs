//! Shared test harness: starts the real `wsplice` binary on port 0 with a generated config,
//! real upstreams on port 0, and raw-socket helpers. Everything is torn down on drop.
#![allow(dead_code)]

pub mod echo_upstream;
pub mod limited;
pub mod raw_tunnel;
pub mod raw_upstream;
pub mod record_upstream;
pub mod refused;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const BIN: &str = env!("CARGO_BIN_EXE_wsplice");

/// A config for tests: listen on port 0, two workers, one route per (path, group).
#[derive(Clone)]
pub struct TestConfig {
    pub workers: usize,
    pub timeouts: Vec<(&'static str, String)>,
    pub limits: Vec<(&'static str, i64)>,
    /// `limits.multishot_receive`, where set (on by default).
    pub multishot: Option<bool>,
    pub routes: Vec<(String, String)>,
}

impl Default for TestConfig {
    fn default() -> Self {
        TestConfig {
            workers: 2,
            timeouts: Vec::new(),
            limits: Vec::new(),
            multishot: None,
            routes: vec![("/".into(), "backend".into())],
        }
    }
}

impl TestConfig {
    pub fn timeout(mut self, name: &'static str, value: &str) -> Self {
        self.timeouts.push((name, value.to_string()));
        self
    }

    pub fn limit(mut self, name: &'static str, value: i64) -> Self {
        self.limits.push((name, value));
        self
    }

    /// Tunnels receive with capped multishot receives (`limits.multishot_receive`, the
    /// default; said, for tests that are about them), on a ring that defers its completion
    /// work (`limits.defer_taskrun = true`) even where the kernel signals that work late
    /// (see README, How it works), so that the multishot path is tested on every kernel
    /// that has it.
    pub fn multishot(mut self) -> Self {
        self.multishot = Some(true);
        self
    }

    /// Tunnels receive once per read (`limits.multishot_receive = false`).
    pub fn one_receive_per_read(mut self) -> Self {
        self.multishot = Some(false);
        self
    }

    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    pub fn route(mut self, path: &str, group: &str) -> Self {
        self.routes.push((path.into(), group.into()));
        self
    }

    pub fn only_route(mut self, path: &str, group: &str) -> Self {
        self.routes = vec![(path.into(), group.into())];
        self
    }

    pub fn toml(&self) -> String {
        let mut s = format!(
            "listen = [\"127.0.0.1:0\"]\nworkers = {}\nupstreams = \"upstreams.toml\"\n\n[timeouts]\n",
            self.workers
        );
        for (k, v) in &self.timeouts {
            s += &format!("{k} = \"{v}\"\n");
        }
        s += "\n[limits]\n";
        for (k, v) in &self.limits {
            s += &format!("{k} = {v}\n");
        }
        if let Some(on) = self.multishot {
            s += &format!("multishot_receive = {on}\n");
            if on {
                s += "defer_taskrun = true\n";
            }
        }
        for (path, group) in &self.routes {
            s += &format!("\n[[route]]\npath = \"{path}\"\nupstream = \"{group}\"\n");
        }
        s
    }
}

/// An upstream file with one group.
pub fn upstreams(group: &str, servers: &[SocketAddr]) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{group}]\nservers = [{}]\n", list.join(", "))
}

/// A running wsplice process.
pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    log: Arc<Mutex<String>>,
}

impl Proxy {
    /// Writes the two files into a fresh directory and starts wsplice on them.
    pub fn start(config: &TestConfig, upstreams: &str) -> Proxy {
        Self::start_raw(&config.toml(), upstreams)
    }

    pub fn start_raw(config: &str, upstreams: &str) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let config_path = write_files(dir.path(), config, upstreams);
        let mut command = Command::new(BIN);
        command.arg("--config").arg(&config_path);
        Self::spawn(command, dir, "")
    }

    /// Runs `command` (wsplice, perhaps through a wrapper) and waits for its "listening on"
    /// line; `what` says how it was started, for the panic message if it never listens.
    pub fn spawn(mut command: Command, dir: tempfile::TempDir, what: &str) -> Proxy {
        let mut child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wsplice");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                panic!(
                    "wsplice did not start{what} ({status:?}):\n{}",
                    log.lock().unwrap()
                );
            }
        };
        Proxy {
            child,
            addr,
            dir,
            log,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Everything wsplice logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The admin endpoint's address, from the start-up log (the config asks for port 0).
    pub fn admin_addr(&self) -> SocketAddr {
        let log = self.log();
        let rest = log
            .split("admin endpoint on http://")
            .nth(1)
            .expect("admin line");
        rest.split_whitespace().next().unwrap().parse().unwrap()
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name ("TERM", "HUP", ...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; `None` if it is still running after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        wait_child_exit(&mut self.child, limit).await
    }

    /// Path of the upstream file, for reload tests.
    pub fn upstreams_path(&self) -> PathBuf {
        self.dir.path().join("upstreams.toml")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes `wsplice.toml` and `upstreams.toml` into `dir`; returns the config's path.
pub fn write_files(dir: &Path, config: &str, upstreams: &str) -> PathBuf {
    let config_path = dir.join("wsplice.toml");
    std::fs::write(&config_path, config).unwrap();
    std::fs::write(dir.join("upstreams.toml"), upstreams).unwrap();
    config_path
}

/// Runs `wsplice --check` (or other args) on the two files.
#[allow(clippy::disallowed_methods)] // a synchronous test helper, no runtime to block
pub fn run_wsplice(config: &str, upstreams: &str, extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_files(dir.path(), config, upstreams);
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&config_path).args(extra);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: a wsplice that unexpectedly starts serving is killed after 10 s.
    for _ in 0..200 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

/// Sends raw bytes and reads the reply: until the proxy closes, or until one whole response
/// has arrived that leaves the connection open (keep-alive); at most 10 s.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_response(&mut stream, Duration::from_secs(10)).await
}

/// Reads one final response (after any 1xx): until the proxy closes, or until a response
/// without `Connection: close` is complete by its `Content-Length` or last chunk; at most
/// `limit`.
pub async fn read_response(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 16384];
        while !persistent_response_complete(&out) {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    out
}

/// Whether `buf` holds interim responses and a whole final response whose connection stays
/// open.
pub fn persistent_response_complete(mut buf: &[u8]) -> bool {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(len)) = response.parse(buf) else {
            return false;
        };
        let status = response.code.unwrap_or(0);
        if (100..200).contains(&status) && status != 101 {
            buf = &buf[len..];
            continue;
        }
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
        };
        if status == 101 || header("connection").is_some_and(|c| c.contains("close")) {
            return false;
        }
        let body = &buf[len..];
        return match (header("content-length"), header("transfer-encoding")) {
            (Some(n), _) => n.trim().parse::<usize>().is_ok_and(|n| body.len() >= n),
            (None, Some(te)) if te.ends_with("chunked") => body.ends_with(b"0\r\n\r\n"),
            _ => status == 204 || status == 304,
        };
    }
}

/// Reads until end of stream, an error, or `limit`.
pub async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 16384];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    out
}

/// The status code of an HTTP/1.1 response.
pub fn status_of(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"))
}

/// A minimal valid WebSocket upgrade request head.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// An address nothing listens on, for the rest of the test process: its port stays bound
/// (never listening), so connects to it are refused, and an outgoing connection cannot get
/// it as its local port (a loopback self-connect would "succeed"). SO_REUSEADDR lets a test
/// that wants the server back listen there (tokio's listeners set it too).
pub fn dead_addr() -> SocketAddr {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    std::mem::forget(socket);
    addr
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// GET `path` from the admin endpoint: the status and the body.
pub async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n");
    let response = raw_exchange(addr, request.as_bytes()).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status_of(&response), body)
}

/// Samples of one scrape, keyed by `name{label="value",...}` with labels sorted.
pub async fn scrape(admin: SocketAddr) -> std::collections::HashMap<String, f64> {
    let (status, body) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let mut out = std::collections::HashMap::new();
    for sample in parsed.samples {
        let mut labels: Vec<String> = sample
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        labels.sort();
        let key = if labels.is_empty() {
            sample.metric.clone()
        } else {
            format!("{}{{{}}}", sample.metric, labels.join(","))
        };
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => continue,
        };
        out.insert(key, value);
    }
    out
}

/// Polls the metric `key` until `done` holds for its value (a missing sample reads 0), for up
/// to `limit`; returns the last value read. Counters move when the proxy gets to the bytes, not
/// when a test wrote them, so a test never asserts one right after acting.
pub async fn wait_metric(
    admin: SocketAddr,
    key: &str,
    done: impl Fn(f64) -> bool,
    limit: Duration,
) -> f64 {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let value = scrape(admin).await.get(key).copied().unwrap_or(0.0);
        if done(value) || tokio::time::Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The series of the expiry gauge of the certificate read from `file` that names `name`.
pub fn certificate_expiry_key(file: &Path, name: &str) -> String {
    format!(
        "wsplice_certificate_expiry_timestamp_seconds{{file=\"{}\",name=\"{name}\"}}",
        file.display()
    )
}

/// Waits (up to 10 s) until `proxy` serves the certificate from `file` naming `name` that
/// expires at `until` (Unix seconds), as its expiry gauge says; returns the last reading.
pub async fn wait_certificate_expiry(proxy: &Proxy, file: &Path, name: &str, until: i64) -> i64 {
    let key = certificate_expiry_key(file, name);
    let limit = Duration::from_secs(10);
    wait_metric(proxy.admin_addr(), &key, |v| v as i64 == until, limit).await as i64
}

/// The resident set of process `pid`, in bytes (from `/proc/PID/statm`).
#[allow(clippy::disallowed_methods)] // a small /proc read on the test's own runtime
pub fn resident_bytes(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Waits up to `limit` for `child` to exit; its status, or `None` if it is still running.
pub async fn wait_child_exit(
    child: &mut Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}
