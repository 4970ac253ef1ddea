//! A real app behind wsplice: two Socket.IO 4.8 servers (Node, from npm) and 100 clients with
//! the default transports, long-polling first and then the upgrade to WebSocket. Every
//! polling request of a session must reach the server that opened it ("Session ID unknown"
//! otherwise), which round robin cannot promise: `balance = "hash"` on the client address and
//! `sticky_cookie` must. The peers live in tests/socketio (scripts/test.sh runs `npm ci`).

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Proxy, TestConfig};

fn peers() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/socketio");
    assert!(
        dir.join("node_modules/socket.io").is_dir(),
        "tests/socketio/node_modules is missing: run scripts/test.sh (it runs npm ci there)"
    );
    dir
}

/// A Socket.IO server process, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(name: &str) -> Server {
        let mut child = Command::new("node")
            .arg("server.js")
            .arg(name)
            .current_dir(peers())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node (scripts/test.sh checks for it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("server {name} printed {line:?}"));
        Server { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `clients.js` reports.
#[derive(Debug)]
struct Outcome {
    upgraded: u64,
    echoed: u64,
    mixed: u64,
    servers_used: usize,
    errors: u64,
    text: String,
}

/// Runs `count` clients against the proxy in `mode` ("ip" or "cookie"), within 90 s.
async fn clients(proxy: &Proxy, count: usize, mode: &str) -> Outcome {
    let url = format!("http://{}", proxy.addr);
    let run = tokio::process::Command::new("node")
        .arg("clients.js")
        .arg(&url)
        .arg(count.to_string())
        .arg(mode)
        .current_dir(peers())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("clients done within 90 s")
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "{e}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr).into_owned()
        )
    });
    let n = |k: &str| v[k].as_u64().unwrap();
    Outcome {
        upgraded: n("upgraded"),
        echoed: n("echoed"),
        mixed: n("mixed"),
        servers_used: v["perServer"].as_object().unwrap().len(),
        errors: n("errorCount"),
        text,
    }
}

fn start_proxy(a: &Server, b: &Server, balance: &str) -> Proxy {
    let config = TestConfig::default().only_route("/socket.io/", "chat");
    let upstreams = format!(
        "[chat]\nservers = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n{balance}\n",
        a.port, b.port
    );
    Proxy::start(&config, &upstreams)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_on_two_servers_needs_and_gets_stickiness() {
    let (a, b) = (Server::start("A"), Server::start("B"));

    // Round robin sends a session's polling requests to both servers: Socket.IO fails.
    let proxy = start_proxy(&a, &b, "");
    let rr = clients(&proxy, 20, "cookie").await;
    eprintln!("round robin: {}", rr.text.trim());
    assert!(rr.errors > 0, "round robin should break sessions: {rr:?}");
    drop(proxy);

    for (balance, mode) in [
        ("balance = \"hash\"\nhash_key = \"client_ip\"", "ip"),
        ("sticky_cookie = \"wsplice_srv\"", "cookie"),
    ] {
        let proxy = start_proxy(&a, &b, balance);
        let got = clients(&proxy, 100, mode).await;
        eprintln!("{}: {}", balance.replace('\n', "; "), got.text.trim());
        assert_eq!(got.errors, 0, "{balance}: {}", got.text);
        assert_eq!((got.upgraded, got.echoed), (100, 100), "{balance}: {got:?}");
        assert_eq!(
            got.mixed, 0,
            "{balance}: a client reached both servers: {got:?}"
        );
        assert_eq!(
            got.servers_used, 2,
            "{balance}: one server took all: {got:?}"
        );
    }
}
