//! A real app behind wsplice: two Socket.IO 4.8 servers (Node, from npm) and 40 clients with
//! the default transports, long-polling first and then the upgrade to WebSocket. Every
//! polling request of a session must reach the server that opened it ("Session ID unknown"
//! otherwise), which round robin cannot promise: `balance = "hash"` on the client address and
//! `sticky_cookie` must. The peers live in tests/socketio (scripts/test.sh runs `npm ci`).
//!
//! Every wait is bounded, and generously: a loaded 2-core CI machine may be ten times slower
//! than a quiet one, and a slow run must not read as a broken session.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
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

/// Clients per sticky run: each of the 20 source addresses of mode "ip" twice, enough to see
/// both servers used and any session that strays.
const CLIENTS: usize = 40;
/// How long one client may take to upgrade and echo three times (about 1 s on a quiet
/// machine, for all clients together).
const CLIENT_DEADLINE: Duration = Duration::from_secs(60);
/// How long a server may take to start and print its port.
const START_LIMIT: Duration = Duration::from_secs(30);

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
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let Ok(line) = rx.recv_timeout(START_LIMIT) else {
            let _ = child.kill();
            panic!("server {name} printed no port within {START_LIMIT:?}");
        };
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
    /// Errors that are the client deadline running out, not a broken session.
    late: u64,
    text: String,
}

/// Runs `count` clients against the proxy in `mode` ("ip" or "cookie"); with `first_break`,
/// only until one session breaks.
async fn clients(proxy: &Proxy, count: usize, mode: &str, first_break: bool) -> Outcome {
    let url = format!("http://{}", proxy.addr);
    let run = tokio::process::Command::new("node")
        .arg("clients.js")
        .arg(&url)
        .arg(count.to_string())
        .arg(mode)
        .arg(CLIENT_DEADLINE.as_millis().to_string())
        .arg(if first_break { "first-break" } else { "all" })
        .current_dir(peers())
        .kill_on_drop(true)
        .output();
    // Past the clients' own deadline, with room for node to start on a loaded machine.
    let limit = CLIENT_DEADLINE + START_LIMIT;
    let out = tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("clients.js did not report within {limit:?}"))
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
        late: n("late"),
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

    // Round robin sends a session's polling requests to both servers: Socket.IO fails. One
    // broken session shows it (a client running out of time would not).
    let proxy = start_proxy(&a, &b, "");
    let rr = clients(&proxy, 20, "cookie", true).await;
    eprintln!("round robin: {}", rr.text.trim());
    assert!(
        rr.errors > rr.late,
        "round robin should break sessions: {rr:?}"
    );
    drop(proxy);

    for (balance, mode) in [
        ("balance = \"hash\"\nhash_key = \"client_ip\"", "ip"),
        ("sticky_cookie = \"wsplice_srv\"", "cookie"),
    ] {
        let proxy = start_proxy(&a, &b, balance);
        let got = clients(&proxy, CLIENTS, mode, false).await;
        eprintln!("{}: {}", balance.replace('\n', "; "), got.text.trim());
        assert_eq!(got.errors, 0, "{balance}: {}", got.text);
        let all = CLIENTS as u64;
        assert_eq!((got.upgraded, got.echoed), (all, all), "{balance}: {got:?}");
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
