//! systemd readiness through the real binary: with `NOTIFY_SOCKET` set (a path or an abstract
//! `@name`), wsplice sends `READY=1` only once it serves and `STOPPING=1` when a stop begins.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{BIN, TestConfig, echo_upstream, upstreams};
use futures_util::{SinkExt, StreamExt};
use tokio::net::UnixDatagram;
use tokio_tungstenite::tungstenite::Message;

const STEP: Duration = Duration::from_secs(20);

/// wsplice started with `NOTIFY_SOCKET`, its log in `dir/wsplice.log`; killed on drop.
struct Notified {
    child: Child,
    dir: tempfile::TempDir,
}

impl Notified {
    fn start(dir: tempfile::TempDir, upstream: SocketAddr, notify_socket: &str) -> Notified {
        let config = common::write_files(
            dir.path(),
            &TestConfig::default().toml(),
            &upstreams("backend", &[upstream]),
        );
        let log = std::fs::File::create(dir.path().join("wsplice.log")).unwrap();
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", notify_socket)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Notified { child, dir }
    }

    fn log(&self) -> String {
        std::fs::read(self.dir.path().join("wsplice.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    async fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        common::wait_child_exit(&mut self.child, limit).await
    }
}

impl Drop for Notified {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The next notification, or a panic showing wsplice's log.
async fn receive(socket: &UnixDatagram, wsplice: &Notified) -> String {
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(STEP, socket.recv(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        other => panic!(
            "no notification within 20 s ({other:?}); wsplice log:\n{}",
            wsplice.log()
        ),
    }
}

/// The address in `READY=1\nSTATUS=listening on ADDR`.
fn ready_addr(message: &str) -> SocketAddr {
    let status = message
        .strip_prefix("READY=1\nSTATUS=listening on ")
        .unwrap_or_else(|| panic!("not a READY=1 with STATUS: {message:?}"));
    status.parse().unwrap()
}

async fn echo_once(addr: SocketAddr) {
    let url = format!("ws://{addr}/websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text("ready?")).await.unwrap();
    let echo = tokio::time::timeout(STEP, ws.next()).await.unwrap();
    assert_eq!(echo.unwrap().unwrap(), Message::text("ready?"));
}

fn bind_path(dir: &Path) -> (UnixDatagram, String) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    (socket, path.to_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_once_serving_then_stopping_on_sigterm() {
    let (up, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (socket, path) = bind_path(dir.path());
    let mut wsplice = Notified::start(dir, up, &path);

    let addr = ready_addr(&receive(&socket, &wsplice).await);
    let url = format!("ws://{addr}/websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text("ready?")).await.unwrap();
    let echo = tokio::time::timeout(STEP, ws.next()).await.unwrap();
    assert_eq!(echo.unwrap().unwrap(), Message::text("ready?"));

    // The open WebSocket keeps wsplice draining, so the stop notice is sent before it exits.
    wsplice.signal("TERM");
    assert_eq!(
        receive(&socket, &wsplice).await,
        "STOPPING=1\nSTATUS=draining"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    let status = wsplice.wait_exit(STEP).await.expect("exit after the drain");
    assert!(status.success(), "{status:?}\n{}", wsplice.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abstract_notify_socket() {
    use std::os::linux::net::SocketAddrExt;
    let (up, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let name = format!("wsplice-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let std_socket = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
    std_socket.set_nonblocking(true).unwrap();
    let socket = UnixDatagram::from_std(std_socket).unwrap();
    let wsplice = Notified::start(tempfile::tempdir().unwrap(), up, &format!("@{name}"));

    echo_once(ready_addr(&receive(&socket, &wsplice).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_notify_socket_is_logged_and_wsplice_serves() {
    let (up, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nobody-listens.sock");
    let wsplice = Notified::start(dir, up, missing.to_str().unwrap());

    let deadline = tokio::time::Instant::now() + STEP;
    while !wsplice.log().contains("cannot notify the service manager") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no warning within 20 s:\n{}",
            wsplice.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = wsplice.log();
    let addr = log
        .split("listening on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no listening address in:\n{log}"));
    echo_once(addr).await;
}
