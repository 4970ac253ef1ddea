//! Active health checks through the real binary: a server whose `/healthz` fails goes down
//! after `fall` checks (metric 0, no new traffic) and comes back after `rise`; a tcp check
//! follows a listener that closes and opens again; the state survives a reload; a unix
//! socket server is checked too; and checks come from one place, not once per worker.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Proxy, TestConfig, raw_exchange, wait_metric};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};

const LIMIT: Duration = Duration::from_secs(10);

/// An upstream that answers `GET /healthz` with `status` (counting them in `checks`) and
/// anything else 200 with its name in `X-Upstream`, closing after each response.
struct Upstream {
    name: String,
    status: Arc<AtomicU16>,
    checks: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    async fn tcp(addr: &str) -> (SocketAddr, Upstream) {
        let listener = TcpListener::bind(addr).await.unwrap();
        let local = listener.local_addr().unwrap();
        let (status, checks) = (Arc::new(AtomicU16::new(200)), Arc::new(AtomicUsize::new(0)));
        let (s, c, name) = (status.clone(), Arc::clone(&checks), local.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(answer(stream, name.clone(), s.clone(), c.clone()));
            }
        });
        let name = local.to_string();
        (
            local,
            Upstream {
                name,
                status,
                checks,
                task,
            },
        )
    }

    fn unix(path: &Path) -> Upstream {
        let listener = UnixListener::bind(path).unwrap();
        let name = format!("unix:{}", path.display());
        let (status, checks) = (Arc::new(AtomicU16::new(200)), Arc::new(AtomicUsize::new(0)));
        let (s, c, me) = (status.clone(), Arc::clone(&checks), name.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(answer(stream, me.clone(), s.clone(), c.clone()));
            }
        });
        Upstream {
            name,
            status,
            checks,
            task,
        }
    }

    fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn checks(&self) -> usize {
        self.checks.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    me: String,
    status: Arc<AtomicU16>,
    checks: Arc<AtomicUsize>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let code = if text.starts_with("GET /healthz ") {
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        assert!(text.contains("\r\nHost: "), "{text}");
        checks.fetch_add(1, Ordering::SeqCst);
        status.load(Ordering::SeqCst)
    } else {
        200
    };
    let response = format!(
        "HTTP/1.1 {code} X\r\nX-Upstream: {me}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Starts wsplice and waits for its admin endpoint.
async fn start(config: &str, upstreams: &str) -> Proxy {
    let proxy = Proxy::start_raw(config, upstreams);
    assert!(proxy.wait_log("admin endpoint on", LIMIT).await);
    proxy
}

fn config(workers: usize) -> String {
    format!(
        "admin = \"127.0.0.1:0\"\n{}",
        TestConfig::default().workers(workers).toml()
    )
}

fn group(servers: &[&str], check: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[backend]\nservers = [{}]\nhealth_check = {check}\n",
        list.join(", ")
    )
}

fn up_key(server: &str) -> String {
    format!("wsplice_upstream_up{{group=\"backend\",server=\"{server}\"}}")
}

/// Which upstream served one plain request through the proxy.
async fn served_by(proxy: &Proxy) -> String {
    let response = raw_exchange(
        proxy.addr,
        b"GET /who HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&response).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix("X-Upstream: "))
        .unwrap_or_else(|| panic!("no X-Upstream: {text}"))
        .to_string()
}

/// Polls until a request is served by `server` (10 s at most).
async fn reaches(proxy: &Proxy, server: &str) -> bool {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while tokio::time::Instant::now() < deadline {
        if served_by(proxy).await == server {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn a_failing_server_goes_down_after_fall_checks_and_comes_back_after_rise() {
    let (a_addr, a) = Upstream::tcp("127.0.0.1:0").await;
    let (b_addr, b) = Upstream::tcp("127.0.0.1:0").await;
    let (a_name, b_name) = (a_addr.to_string(), b_addr.to_string());
    let check =
        "{ path = \"/healthz\", interval = \"100ms\", timeout = \"1s\", rise = 2, fall = 3 }";
    let proxy = start(&config(2), &group(&[&a_name, &b_name], check)).await;
    let admin = proxy.admin_addr();
    assert_eq!(
        wait_metric(admin, &up_key(&a_name), |v| v == 1.0, LIMIT).await,
        1.0
    );
    assert!(reaches(&proxy, &a_name).await);

    a.set(503);
    let before = a.checks();
    assert_eq!(
        wait_metric(admin, &up_key(&a_name), |v| v == 0.0, LIMIT).await,
        0.0
    );
    // A check already answering when the status changed may be the first of the three.
    assert!(
        a.checks() - before >= 2,
        "down after fewer than fall = 3 failed checks"
    );
    assert!(
        proxy
            .wait_log(&format!("upstream backend server {a_name} is down"), LIMIT)
            .await,
        "{}",
        proxy.log()
    );
    assert!(proxy.log().contains("HTTP 503"), "{}", proxy.log());
    assert_eq!(scrape_up(&proxy, &b_name).await, 1.0);
    for _ in 0..8 {
        assert_eq!(served_by(&proxy).await, b_name, "a down server got traffic");
    }

    a.set(200);
    assert_eq!(
        wait_metric(admin, &up_key(&a_name), |v| v == 1.0, LIMIT).await,
        1.0
    );
    assert!(
        proxy
            .wait_log(&format!("upstream backend server {a_name} is up"), LIMIT)
            .await
    );
    assert!(reaches(&proxy, &a_name).await, "traffic did not come back");
    drop(b);
}

async fn scrape_up(proxy: &Proxy, server: &str) -> f64 {
    common::scrape(proxy.admin_addr())
        .await
        .get(&up_key(server))
        .copied()
        .unwrap_or(-1.0)
}

#[tokio::test]
async fn a_tcp_check_follows_a_listener_that_closes_and_opens_again() {
    let (a_addr, a) = Upstream::tcp("127.0.0.1:0").await;
    let (b_addr, _b) = Upstream::tcp("127.0.0.1:0").await;
    let (a_name, b_name) = (a_addr.to_string(), b_addr.to_string());
    let check = "{ tcp = true, interval = \"100ms\", timeout = \"1s\", rise = 2, fall = 2 }";
    let proxy = start(&config(2), &group(&[&a_name, &b_name], check)).await;
    let admin = proxy.admin_addr();
    assert!(reaches(&proxy, &a_name).await);
    assert_eq!(a.checks(), 0, "a tcp check sends no request");

    drop(a);
    assert_eq!(
        wait_metric(admin, &up_key(&a_name), |v| v == 0.0, LIMIT).await,
        0.0
    );
    for _ in 0..6 {
        assert_eq!(served_by(&proxy).await, b_name);
    }

    let (_, _a) = Upstream::tcp(&a_name).await;
    assert_eq!(
        wait_metric(admin, &up_key(&a_name), |v| v == 1.0, LIMIT).await,
        1.0
    );
    assert!(reaches(&proxy, &a_name).await);
}

#[tokio::test]
async fn health_state_survives_a_reload() {
    let (a_addr, a) = Upstream::tcp("127.0.0.1:0").await;
    let (b_addr, _b) = Upstream::tcp("127.0.0.1:0").await;
    let (a_name, b_name) = (a_addr.to_string(), b_addr.to_string());
    let check = "{ path = \"/healthz\", interval = \"100ms\", rise = 2, fall = 2 }";
    let proxy = start(&config(2), &group(&[&a_name, &b_name], check)).await;
    let admin = proxy.admin_addr();
    a.set(503);
    assert_eq!(
        wait_metric(admin, &up_key(&a_name), |v| v == 0.0, LIMIT).await,
        0.0
    );

    // The next checks are an hour away: a server whose state was lost would be up again
    // (servers start up) until then.
    let slow = "{ path = \"/healthz\", interval = \"1h\", rise = 2, fall = 2 }";
    std::fs::write(proxy.upstreams_path(), group(&[&a_name, &b_name], slow)).unwrap();
    assert!(proxy.wait_log("upstreams reloaded", LIMIT).await);
    for _ in 0..8 {
        assert_eq!(scrape_up(&proxy, &a_name).await, 0.0, "{}", proxy.log());
        assert_eq!(served_by(&proxy).await, b_name, "a down server got traffic");
    }
}

#[tokio::test]
async fn a_unix_socket_server_is_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    let a = Upstream::unix(&dir.path().join("a.sock"));
    let (b_addr, _b) = Upstream::tcp("127.0.0.1:0").await;
    let b_name = b_addr.to_string();
    let check = "{ path = \"/healthz\", interval = \"100ms\", rise = 1, fall = 1 }";
    let proxy = start(&config(1), &group(&[&a.name, &b_name], check)).await;
    let admin = proxy.admin_addr();
    assert!(reaches(&proxy, &a.name).await);
    assert_eq!(
        wait_metric(admin, &up_key(&a.name), |v| v == 1.0, LIMIT).await,
        1.0
    );
    a.set(500);
    assert_eq!(
        wait_metric(admin, &up_key(&a.name), |v| v == 0.0, LIMIT).await,
        0.0
    );
    for _ in 0..6 {
        assert_eq!(served_by(&proxy).await, b_name);
    }
    assert!(a.checks() >= 1);
}

#[tokio::test]
async fn checks_come_from_one_place_whatever_the_number_of_workers() {
    let (a_addr, a) = Upstream::tcp("127.0.0.1:0").await;
    let a_name = a_addr.to_string();
    let check = "{ path = \"/healthz\", interval = \"200ms\" }";
    let _proxy = start(&config(2), &group(&[&a_name], check)).await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while a.checks() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no health check");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A measuring window, not a wait for the proxy: 2 s hold 10 intervals of 200 ms.
    let (start, first) = (tokio::time::Instant::now(), a.checks());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let checks = a.checks() - first;
    let intervals = start.elapsed().as_secs_f64() / 0.2;
    println!("{checks} health checks in {intervals:.1} intervals with 2 workers");
    assert!(
        (checks as f64) <= intervals + 2.0,
        "{checks} checks in {intervals:.1} intervals: more than one place checks"
    );
    assert!(checks >= 4, "{checks} checks in {intervals:.1} intervals");
}

/// A group that sends PROXY headers sends its checks one too (v2 `LOCAL`, as HAProxy's
/// checks do): a server that refuses connections without the header stays up.
#[tokio::test]
async fn checks_to_a_proxy_protocol_group_carry_a_local_header() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let local_checks = Arc::new(AtomicUsize::new(0));
    let seen = local_checks.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                // A v2 header first, or the connection is refused (closed), as nginx's
                // `listen ... proxy_protocol` does.
                let mut fixed = [0u8; 16];
                if stream.read_exact(&mut fixed).await.is_err()
                    || &fixed[..12] != b"\r\n\r\n\0\r\nQUIT\n"
                {
                    return;
                }
                let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
                let mut block = vec![0u8; len];
                if stream.read_exact(&mut block).await.is_err() {
                    return;
                }
                let local = fixed[12] == 0x20;
                let status = Arc::new(AtomicU16::new(200));
                let checks = Arc::new(AtomicUsize::new(0));
                answer(&mut stream, "pp".into(), status, checks.clone()).await;
                if local && checks.load(Ordering::SeqCst) == 1 {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    let name = addr.to_string();
    let check =
        "{ path = \"/healthz\", interval = \"100ms\", timeout = \"1s\", rise = 1, fall = 1 }";
    let upstreams = format!("{}send_proxy_protocol = \"v2\"\n", group(&[&name], check));
    let proxy = start(&config(1), &upstreams).await;
    let deadline = tokio::time::Instant::now() + LIMIT;
    while local_checks.load(Ordering::SeqCst) < 3 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        local_checks.load(Ordering::SeqCst) >= 3,
        "checks with a LOCAL header"
    );
    assert_eq!(scrape_up(&proxy, &name).await, 1.0);
    task.abort();
}
