//! Balance modes through the real binary: `least_conn` counts tunnels across workers and
//! reloads, `hash` keeps a key on one server (and only a removed server's keys move),
//! `sticky_cookie` sends a client back to the server its cookie names.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::echo_upstream::{self, Seen};
use common::{Proxy, TestConfig, read_response};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const LIMIT: Duration = Duration::from_secs(10);

async fn echoes(n: usize) -> Vec<(SocketAddr, Arc<Seen>)> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(echo_upstream::start("127.0.0.1:0").await.unwrap());
    }
    out
}

/// A group `backend` of `servers` with extra settings.
fn group(servers: &[SocketAddr], settings: &str) -> String {
    format!("{}{settings}\n", common::upstreams("backend", servers))
}

/// Replaces the upstream file and waits for the reload that takes it.
async fn reload(proxy: &Proxy, text: &str) {
    let before = proxy.log().matches("upstreams reloaded").count();
    std::fs::write(proxy.upstreams_path(), text).unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while proxy.log().matches("upstreams reloaded").count() == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reload:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain GET from client address `from` with extra header lines: the response head's
/// fields by lower-case name (repeated ones joined by "\n").
async fn get(proxy: &Proxy, from: IpAddr, extra: &str) -> HashMap<String, String> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut stream = tokio::time::timeout(LIMIT, socket.connect(proxy.addr))
        .await
        .unwrap()
        .unwrap();
    let request = format!("GET /who HTTP/1.1\r\nHost: test\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let response = read_response(&mut stream, LIMIT).await;
    let text = String::from_utf8_lossy(&response);
    let head = text.split("\r\n\r\n").next().unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    fields(head.lines().skip(1))
}

fn fields<'a>(lines: impl Iterator<Item = &'a str>) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        let entry = out.entry(name.trim().to_ascii_lowercase()).or_default();
        if !entry.is_empty() {
            entry.push('\n');
        }
        entry.push_str(value.trim());
    }
    out
}

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// 20 long tunnels on A and none on B: the next 20 all go to B, whichever worker takes them;
/// once A's close, A is the least loaded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_sends_new_connections_to_the_least_loaded_server() {
    let ups = echoes(2).await;
    let (a, b) = ((ups[0].0, &ups[0].1), (ups[1].0, &ups[1].1));
    let config = TestConfig::default().toml().replacen(
        "upstreams = \"upstreams.toml\"",
        "upstreams = \"upstreams.toml\"\nadmin = \"127.0.0.1:0\"",
        1,
    );
    let proxy = Proxy::start_raw(&config, &group(&[a.0], "balance = \"least_conn\""));
    assert!(proxy.wait_log("admin endpoint on", LIMIT).await);
    let admin = proxy.admin_addr();

    let mut on_a = Vec::new();
    for _ in 0..20 {
        on_a.push(connect_async(proxy.url("/")).await.unwrap().0);
    }
    assert_eq!(a.1.upgrades.load(Ordering::Relaxed), 20);
    // B joins: the counts of A's open tunnels carry over into the new table.
    reload(&proxy, &group(&[a.0, b.0], "balance = \"least_conn\"")).await;
    let mut on_b = Vec::new();
    for _ in 0..20 {
        on_b.push(connect_async(proxy.url("/")).await.unwrap().0);
    }
    assert_eq!(b.1.upgrades.load(Ordering::Relaxed), 20, "all 20 went to B");
    assert_eq!(a.1.upgrades.load(Ordering::Relaxed), 20);
    for ws in on_b.iter_mut().chain(on_a.iter_mut()).step_by(7) {
        ws.send(Message::text("still here")).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::text("still here")
        );
    }

    // A's tunnels end (their count with them): A is the least loaded again.
    for mut ws in on_a.drain(..) {
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    let total = |m: &HashMap<String, f64>| {
        m.iter()
            .filter(|(k, _)| k.starts_with("wsplice_tunnels_active"))
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    let deadline = tokio::time::Instant::now() + LIMIT;
    while total(&common::scrape(admin).await) != 20.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A's tunnels did not end"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..10 {
        on_a.push(connect_async(proxy.url("/")).await.unwrap().0);
    }
    assert_eq!(a.1.upgrades.load(Ordering::Relaxed), 30);
    assert_eq!(b.1.upgrades.load(Ordering::Relaxed), 20);
}

/// `hash_key = "header:X-User"`: each user stays on one server, users spread, requests
/// without the header go round robin, and removing a server moves only its own users.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_on_a_header_keeps_each_user_on_one_server() {
    let ups = echoes(3).await;
    let servers: Vec<SocketAddr> = ups.iter().map(|u| u.0).collect();
    let settings = "balance = \"hash\"\nhash_key = \"header:X-User\"";
    let proxy = Proxy::start(&TestConfig::default(), &group(&servers, settings));

    let mut home = HashMap::new();
    for user in 0..24 {
        let extra = format!("X-User: user-{user}\r\n");
        let first = get(&proxy, LOCAL, &extra).await["x-upstream"].clone();
        for _ in 0..2 {
            assert_eq!(get(&proxy, LOCAL, &extra).await["x-upstream"], first);
        }
        home.insert(user, first);
    }
    let used: HashSet<&String> = home.values().collect();
    assert_eq!(used.len(), 3, "24 users on {used:?}");

    let without: HashSet<String> = futures_util::future::join_all(
        (0..6).map(|_| async { get(&proxy, LOCAL, "").await["x-upstream"].clone() }),
    )
    .await
    .into_iter()
    .collect();
    assert_eq!(without.len(), 3, "no key: round robin over all");

    let removed = servers[1].to_string();
    let rest = [servers[0], servers[2]];
    reload(&proxy, &group(&rest, settings)).await;
    for (user, was) in &home {
        let extra = format!("X-User: user-{user}\r\n");
        let now = get(&proxy, LOCAL, &extra).await["x-upstream"].clone();
        if *was == removed {
            assert_ne!(now, removed);
        } else {
            assert_eq!(&now, was, "user-{user} moved though its server stayed");
        }
    }
}

/// `hash_key = "client_ip"`: each client address keeps its server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_on_the_client_address() {
    let ups = echoes(3).await;
    let servers: Vec<SocketAddr> = ups.iter().map(|u| u.0).collect();
    let settings = "balance = \"hash\"\nhash_key = \"client_ip\"";
    let proxy = Proxy::start(&TestConfig::default(), &group(&servers, settings));
    let mut used = HashSet::new();
    for last in 1..=16u8 {
        let from = IpAddr::from([127, 0, 0, last]);
        let first = get(&proxy, from, "").await["x-upstream"].clone();
        for _ in 0..2 {
            assert_eq!(get(&proxy, from, "").await["x-upstream"], first, "{from}");
        }
        used.insert(first);
    }
    assert!(used.len() >= 2, "16 addresses all on {used:?}");
}

fn cookie_of(fields: &HashMap<String, String>) -> Option<String> {
    let line = fields.get("set-cookie")?;
    let value = line.strip_prefix("wsplice_srv=")?;
    let (id, attributes) = value.split_once(';').unwrap();
    assert_eq!(attributes, " Path=/; HttpOnly");
    assert_eq!(id.len(), 16);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    Some(id.to_string())
}

/// Behind a trusted proxy that says its client came over https, the sticky cookie is
/// `Secure`, as on a TLS listener; anyone else saying so is not believed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_cookie_is_secure_behind_a_trusted_proxy_that_says_https() {
    let ups = echoes(1).await;
    let servers = [ups[0].0];
    let settings = "sticky_cookie = \"wsplice_srv\"";
    let https = "X-Forwarded-Proto: https\r\n";
    let attributes = |fields: &HashMap<String, String>| {
        let line = fields
            .get("set-cookie")
            .expect("a new client gets the cookie");
        line.split_once(';').unwrap().1.to_string()
    };
    let trusting = TestConfig::default().toml().replacen(
        "workers =",
        "trusted_proxies = [\"127.0.0.1\"]\nworkers =",
        1,
    );
    let proxy = Proxy::start_raw(&trusting, &group(&servers, settings));
    assert_eq!(
        attributes(&get(&proxy, LOCAL, https).await),
        " Path=/; HttpOnly; Secure"
    );
    assert_eq!(
        attributes(&get(&proxy, LOCAL, "").await),
        " Path=/; HttpOnly"
    );
    drop(proxy);
    let proxy = Proxy::start_raw(&TestConfig::default().toml(), &group(&servers, settings));
    assert_eq!(
        attributes(&get(&proxy, LOCAL, https).await),
        " Path=/; HttpOnly"
    );
}

/// `sticky_cookie`: a new client gets a cookie naming its server, on a plain response and on
/// a 101; with it, it goes back there (across a reload that keeps the server) and gets no new
/// one; once its server is gone it is balanced and told its new server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_sends_a_client_back_to_its_server() {
    let ups = echoes(3).await;
    let servers: Vec<SocketAddr> = ups.iter().map(|u| u.0).collect();
    let settings = "sticky_cookie = \"wsplice_srv\"";
    let config = TestConfig::default().toml().replacen(
        "upstreams = \"upstreams.toml\"",
        "upstreams = \"upstreams.toml\"\naccess_log = \"access.log\"",
        1,
    );
    let proxy = Proxy::start_raw(&config, &group(&servers, settings));

    let first = get(&proxy, LOCAL, "").await;
    let id = cookie_of(&first).expect("a new client gets the cookie");
    assert_eq!(first["cache-control"], "private");
    let home = first["x-upstream"].clone();
    let port = home.rsplit(':').next().unwrap();
    assert!(!id.contains(port), "the id does not spell the server");
    let with = format!("Cookie: a=1; wsplice_srv={id}\r\n");
    for _ in 0..6 {
        let again = get(&proxy, LOCAL, &with).await;
        assert_eq!(again["x-upstream"], home);
        assert_eq!(cookie_of(&again), None, "a valid cookie is not set again");
    }
    let bad = get(&proxy, LOCAL, "Cookie: wsplice_srv=0123456789abcdef\r\n").await;
    assert!(cookie_of(&bad).is_some(), "an unknown id gets a new cookie");

    // The 101: without the cookie it carries one; with it, it goes home and carries none.
    let (mut ws, response) = connect_async(proxy.url("/ws")).await.unwrap();
    let header = |name| {
        response
            .headers()
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let set = header("set-cookie");
    assert_eq!(set.len(), 1, "{set:?}");
    let ws_id = set[0]
        .strip_prefix("wsplice_srv=")
        .and_then(|v| v.strip_suffix("; Path=/; HttpOnly"))
        .unwrap()
        .to_string();
    let ws_home = header("x-upstream")[0].clone();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    for _ in 0..3 {
        let mut request = proxy.url("/ws").into_client_request().unwrap();
        let cookie = format!("wsplice_srv={ws_id}");
        request
            .headers_mut()
            .insert("cookie", cookie.parse().unwrap());
        let (mut ws, response) = connect_async(request).await.unwrap();
        assert!(response.headers().get("set-cookie").is_none());
        assert_eq!(response.headers()["x-upstream"].to_str().unwrap(), ws_home);
        ws.send(Message::text("again")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("again"));
    }

    // A reload that reorders the servers keeps every id.
    let reordered: Vec<SocketAddr> = servers.iter().rev().copied().collect();
    reload(&proxy, &group(&reordered, settings)).await;
    let again = get(&proxy, LOCAL, &with).await;
    assert_eq!(
        (again["x-upstream"].as_str(), cookie_of(&again)),
        (home.as_str(), None)
    );

    // Its server removed: balanced, and told the new one.
    let rest: Vec<SocketAddr> = servers
        .iter()
        .copied()
        .filter(|s| s.to_string() != home)
        .collect();
    reload(&proxy, &group(&rest, settings)).await;
    let moved = get(&proxy, LOCAL, &with).await;
    assert_ne!(moved["x-upstream"], home);
    let new_id = cookie_of(&moved).expect("a new cookie");
    assert_ne!(new_id, id);
    let back = get(&proxy, LOCAL, &format!("Cookie: wsplice_srv={new_id}\r\n")).await;
    assert_eq!(back["x-upstream"], moved["x-upstream"]);

    // The access log names the server each request went to, as without balancing.
    let log_path = proxy.dir.path().join("access.log");
    #[allow(clippy::disallowed_methods)] // the test's own runtime, not a worker
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    for needle in [
        format!("upstream={home} status=200"),
        format!("upstream={ws_home} status=101"),
    ] {
        let deadline = tokio::time::Instant::now() + LIMIT;
        while !read_log().contains(&needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {needle:?} in the access log:\n{}",
                read_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
