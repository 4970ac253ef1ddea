//! Which file events reload the upstream file, through the real binary: other files in its
//! folder never delay or trigger a reload, a slow writer is read once complete, a file refused
//! for a host name that did not resolve is tried again unchanged, and a reload keeps the
//! round-robin position and re-times a down server with the new `fail_timeout`.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Proxy, TestConfig, echo_upstream, upstreams};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// A proxy with the admin endpoint on, serving `file` as the upstream file.
async fn start(file: &str) -> (Proxy, SocketAddr) {
    let config = TestConfig::default().toml().replacen(
        "upstreams = \"upstreams.toml\"",
        "upstreams = \"upstreams.toml\"\nadmin = \"127.0.0.1:0\"",
        1,
    );
    let proxy = Proxy::start_raw(&config, file);
    assert!(
        proxy
            .wait_log("admin endpoint on", Duration::from_secs(5))
            .await
    );
    let admin = proxy.admin_addr();
    (proxy, admin)
}

/// (successful reloads, failed reloads, table version) from `/metrics`.
async fn reloads(admin: SocketAddr) -> (f64, f64, f64) {
    let m = common::scrape(admin).await;
    let get = |k: &str| m.get(k).copied().unwrap_or(-1.0);
    (
        get("wsplice_upstream_reloads_total{result=\"success\"}"),
        get("wsplice_upstream_reloads_total{result=\"failure\"}"),
        get("wsplice_upstream_table_version"),
    )
}

/// Polls `/metrics` until `done` holds for the reload counters, for at most `limit`;
/// returns the last counters and how long it took.
async fn wait_reloads(
    admin: SocketAddr,
    limit: Duration,
    done: impl Fn((f64, f64, f64)) -> bool,
) -> ((f64, f64, f64), Option<Duration>) {
    let start = Instant::now();
    loop {
        let now = reloads(admin).await;
        if done(now) {
            return (now, Some(start.elapsed()));
        }
        if start.elapsed() > limit {
            return (now, None);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens a tunnel, checks one echo, and returns which upstream served it.
async fn served_by(url: &str) -> SocketAddr {
    let connect = tokio_tungstenite::connect_async(url);
    let (mut ws, response) = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .expect("handshake in time")
        .expect("handshake");
    let upstream = response.headers()["x-upstream"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    ws.send(Message::text("probe")).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(
        matches!(&echo, Ok(Some(Ok(m))) if *m == Message::text("probe")),
        "{echo:?}"
    );
    let _ = ws.close(None).await;
    upstream
}

/// Appends a line to a file beside the upstream file every 2 ms (open, write, close: the
/// events an access log or a writer's lock file makes) until dropped.
struct BusyNeighbour(Arc<AtomicBool>);

impl BusyNeighbour {
    fn start(path: std::path::PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .unwrap();
                f.write_all(b"GET / 200\n").unwrap();
                drop(f);
                std::thread::park_timeout(Duration::from_millis(2));
            }
        });
        BusyNeighbour(stop)
    }
}

impl Drop for BusyNeighbour {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_neighbour_file_does_not_hold_back_a_reload() {
    let (a, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let (b, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let (proxy, admin) = start(&upstreams("backend", &[a])).await;
    let _log = BusyNeighbour::start(proxy.dir.path().join("access.log"));
    // Let the neighbour's events flow before the change.
    tokio::time::sleep(Duration::from_millis(200)).await;
    std::fs::write(proxy.upstreams_path(), upstreams("backend", &[b])).unwrap();
    let (now, took) = wait_reloads(admin, Duration::from_secs(3), |r| r.2 == 2.0).await;
    assert!(
        took.is_some(),
        "no reload within 3 s: {now:?}\n{}",
        proxy.log()
    );
    assert_eq!(now, (1.0, 0.0, 2.0));
    assert_eq!(served_by(&proxy.url("/")).await, b);
    eprintln!("reload beside a file written every 2 ms took {took:?}");
}

/// The writer truncates the file, writes half, touches its lock file beside it, pauses,
/// writes the rest and closes: only the complete file is read, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_writer_is_read_once_complete() {
    let (a, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let (b, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let (proxy, admin) = start(&upstreams("backend", &[a])).await;
    let content = upstreams("backend", &[b]);
    let (first, rest) = content.split_at(content.len() / 2);
    let mut file = std::fs::File::create(proxy.upstreams_path()).unwrap();
    file.write_all(first.as_bytes()).unwrap();
    file.flush().unwrap();
    std::fs::write(proxy.dir.path().join("upstreams.toml.lock"), "1").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(reloads(admin).await, (0.0, 0.0, 1.0), "{}", proxy.log());
    file.write_all(rest.as_bytes()).unwrap();
    drop(file);
    let (now, took) = wait_reloads(admin, Duration::from_secs(3), |r| r.2 == 2.0).await;
    assert!(took.is_some(), "complete file not taken: {now:?}");
    // Nothing else may follow: give a stray second reload the time it would take.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(reloads(admin).await, (1.0, 0.0, 2.0), "{}", proxy.log());
    assert_eq!(served_by(&proxy.url("/")).await, b);
}

/// A line in /etc/hosts for the life of the value (this test runs as root, as the suite
/// does). Written in place, since /etc/hosts may be a bind mount, and only its own line is
/// taken out again.
struct HostsEntry(String);

impl HostsEntry {
    const HOSTS: &str = "/etc/hosts";

    fn add(name: &str) -> Self {
        let line = format!("127.0.0.1 {name}");
        let mut hosts = std::fs::OpenOptions::new()
            .append(true)
            .open(Self::HOSTS)
            .expect("editing /etc/hosts needs root");
        writeln!(hosts, "{line}").unwrap();
        HostsEntry(line)
    }
}

impl Drop for HostsEntry {
    fn drop(&mut self) {
        #[allow(clippy::disallowed_methods)] // the test's own thread, not a worker
        let Ok(text) = std::fs::read_to_string(Self::HOSTS) else {
            return;
        };
        let kept: String = text
            .lines()
            .filter(|l| *l != self.0)
            .map(|l| format!("{l}\n"))
            .collect();
        let _ = std::fs::write(Self::HOSTS, kept);
    }
}

/// The same text, refused while its host name did not resolve, is taken once it does: on
/// the file's next event (a rewrite of identical bytes) and on SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_refused_for_dns_is_retried_unchanged() {
    let (a, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let (b, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let (proxy, admin) = start(&upstreams("backend", &[a])).await;
    let unique = format!("{}-{}", std::process::id(), b.port());
    let name = format!("wsplice-reload-test-{unique}.invalid");
    let text = format!("[backend]\nservers = [\"{name}:{}\"]\n", b.port());
    let failed = |n: f64| move |r: (f64, f64, f64)| r.1 == n;

    std::fs::write(proxy.upstreams_path(), &text).unwrap();
    let (now, took) = wait_reloads(admin, Duration::from_secs(3), failed(1.0)).await;
    assert!(took.is_some(), "unresolvable name not refused: {now:?}");
    assert!(proxy.log().contains("did not resolve"), "{}", proxy.log());

    let _entry = HostsEntry::add(&name);
    std::fs::write(proxy.upstreams_path(), &text).unwrap();
    let (now, took) = wait_reloads(admin, Duration::from_secs(3), |r| r.2 == 2.0).await;
    assert!(
        took.is_some(),
        "unchanged file not retried after a file event: {now:?}\n{}",
        proxy.log()
    );
    assert_eq!(now, (1.0, 1.0, 2.0));
    assert_eq!(served_by(&proxy.url("/")).await, b);

    // SIGHUP: another name, refused, then taken unchanged once it resolves.
    let name = format!("wsplice-reload-test-{unique}-2.invalid");
    let text = format!("[backend]\nservers = [\"{name}:{}\"]\n", a.port());
    std::fs::write(proxy.upstreams_path(), &text).unwrap();
    let (now, took) = wait_reloads(admin, Duration::from_secs(3), failed(2.0)).await;
    assert!(took.is_some(), "second name not refused: {now:?}");
    let _entry = HostsEntry::add(&name);
    proxy.signal("HUP");
    let (now, took) = wait_reloads(admin, Duration::from_secs(3), |r| r.2 == 3.0).await;
    assert!(
        took.is_some(),
        "SIGHUP did not retry: {now:?}\n{}",
        proxy.log()
    );
    assert_eq!(served_by(&proxy.url("/")).await, a);
}

/// Two servers, one connection, a reload: the next connection goes to the other server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_round_robin_position() {
    let (a, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let (b, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let file = upstreams("backend", &[a, b]);
    let (proxy, admin) = start(&file).await;
    let url = proxy.url("/");
    assert_eq!(served_by(&url).await, a);
    std::fs::write(proxy.upstreams_path(), format!("{file}max_fails = 2\n")).unwrap();
    let (now, took) = wait_reloads(admin, Duration::from_secs(3), |r| r.2 == 2.0).await;
    assert!(took.is_some(), "no reload: {now:?}");
    assert_eq!(
        served_by(&url).await,
        b,
        "the reload restarted the rotation"
    );
    assert_eq!(served_by(&url).await, a);
}

/// A server marked down for `fail_timeout = "1h"` comes back within the new file's "1s".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_server_takes_the_new_fail_timeout() {
    let dead = common::dead_addr();
    let (live, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let file = |timeout: &str| {
        format!(
            "[backend]\nservers = [\"{dead}\", \"{live}\"]\nmax_fails = 1\nfail_timeout = \"{timeout}\"\n"
        )
    };
    let (proxy, admin) = start(&file("1h")).await;
    let url = proxy.url("/");
    assert_eq!(served_by(&url).await, live);
    assert!(
        proxy
            .wait_log("marked down for 1h", Duration::from_secs(2))
            .await,
        "{}",
        proxy.log()
    );
    let (_, revived) = echo_upstream::start(&dead.to_string()).await.unwrap();
    let marked = Instant::now();
    std::fs::write(proxy.upstreams_path(), file("1s")).unwrap();
    let (now, took) = wait_reloads(admin, Duration::from_secs(3), |r| r.2 == 2.0).await;
    assert!(took.is_some(), "no reload: {now:?}");
    while served_by(&url).await != dead {
        assert!(
            marked.elapsed() < Duration::from_secs(4),
            "still skipped after the new fail_timeout of 1s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(revived.upgrades.load(Ordering::Relaxed), 1);
}
