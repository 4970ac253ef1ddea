//! Routing through the real binary: requests are routed on the normalised path, and recording
//! upstreams show that exactly that path (origin form, the query as written) is what the
//! upstream gets, so no route's upstream can be made to act on another route's path; paths
//! that upstreams split differently are refused with 400 before any upstream is contacted;
//! forwarding headers a client forges never reach an upstream.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{
    Proxy, TestConfig, echo_upstream, raw_exchange, record_upstream, run_wsplice, status_of,
    upgrade_request, upstreams,
};
use futures_util::{SinkExt, StreamExt};
use record_upstream::{Record, RecordUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A proxy with one route per path, route `i` going to recording upstream `i`.
async fn start(paths: &[&str]) -> (Proxy, Vec<RecordUpstream>) {
    let mut config = TestConfig::default().only_route(paths[0], "g0");
    let mut files = String::new();
    let mut ups = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        if i > 0 {
            config = config.route(path, &format!("g{i}"));
        }
        // The upstream ends each exchange by closing after this wait, as told to by
        // `Connection: close`.
        let up = record_upstream::start(OK.to_vec(), Duration::from_millis(100)).await;
        files += &upstreams(&format!("g{i}"), &[up.addr]);
        ups.push(up);
    }
    (Proxy::start(&config, &files), ups)
}

async fn get(proxy: &Proxy, target: &str) -> Vec<u8> {
    let request = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
    raw_exchange(proxy.addr, request.as_bytes()).await
}

/// Sends `GET target` and returns what upstream `to` received; no other upstream gets a
/// connection.
async fn routed(proxy: &Proxy, ups: &mut [RecordUpstream], target: &str, to: usize) -> Record {
    let before: Vec<usize> = ups
        .iter()
        .map(|u| u.connections.load(Ordering::SeqCst))
        .collect();
    let response = get(proxy, target).await;
    assert_eq!(status_of(&response), 200, "{target}: {}", text(&response));
    let record = ups[to].next().await;
    for (i, up) in ups.iter().enumerate() {
        let expected = before[i] + usize::from(i == to);
        assert_eq!(
            up.connections.load(Ordering::SeqCst),
            expected,
            "{target}: upstream {i}'s connections"
        );
    }
    record
}

fn request_line(record: &Record) -> String {
    text(&record.head).split("\r\n").next().unwrap().to_string()
}

fn total_connections(ups: &[RecordUpstream]) -> usize {
    ups.iter()
        .map(|u| u.connections.load(Ordering::SeqCst))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_cannot_leave_a_route() {
    let (proxy, mut ups) = start(&["/websocket", "/admin"]).await;
    for target in [
        "/websocket/../admin",
        "/websocket/%2e%2e/admin",
        "/websocket/%2E./admin/",
        "/websocket/x/../../admin",
    ] {
        let record = routed(&proxy, &mut ups, target, 1).await;
        let line = request_line(&record);
        assert!(line.starts_with("GET /admin"), "{target}: {line}");
        assert!(!line.contains("websocket"), "{target}: {line}");
    }

    let (proxy, ups) = start(&["/websocket"]).await;
    for target in ["/websocket/../admin", "/websocket/%2e%2e/admin"] {
        let response = get(&proxy, target).await;
        assert_eq!(status_of(&response), 404, "{target}: {}", text(&response));
    }
    assert_eq!(total_connections(&ups), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_gets_the_path_that_was_routed_on() {
    let (proxy, mut ups) = start(&["/websocket", "/admin"]).await;
    for (target, line) in [
        ("/websocket/./x", "GET /websocket/x HTTP/1.1"),
        ("/a/b/../../websocket", "GET /websocket HTTP/1.1"),
        ("/%77ebsocket/%7Echat", "GET /websocket/~chat HTTP/1.1"),
        ("//websocket//x", "GET /websocket/x HTTP/1.1"),
    ] {
        let record = routed(&proxy, &mut ups, target, 0).await;
        assert_eq!(request_line(&record), line, "{target}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_separators_and_backslashes_are_refused_before_any_upstream() {
    let (proxy, ups) = start(&["/websocket", "/admin", "/"]).await;
    for (target, reason) in [
        ("/websocket%2F..%2Fadmin", "encoded slash or backslash"),
        ("/websocket/..%2fadmin", "encoded slash or backslash"),
        ("/websocket/..%5Cadmin", "encoded slash or backslash"),
        ("/websocket/..%5cadmin", "encoded slash or backslash"),
        ("/websocket\\..\\admin", "backslash in the path"),
        ("/websocket/..;/admin", "dot segment with parameters"),
        ("/websocket/%zz", "'%' not followed by two hex digits"),
        ("/websocket/a%00.html", "encoded control character"),
        ("/websocket%0D%0AX-A:%201", "encoded control character"),
        (
            "http://x/websocket%2F..%2Fadmin",
            "encoded slash or backslash",
        ),
        ("http://user@x/websocket", "userinfo in the request target"),
    ] {
        let response = get(&proxy, target).await;
        assert_eq!(status_of(&response), 400, "{target}: {}", text(&response));
        assert!(
            text(&response).contains("\r\nConnection: close\r\n"),
            "{target}"
        );
        assert!(
            proxy.wait_log(reason, Duration::from_secs(5)).await,
            "{target}: no {reason:?} in the log:\n{}",
            proxy.log()
        );
    }
    assert_eq!(
        total_connections(&ups),
        0,
        "a refused request reached an upstream"
    );
    // The same proxy does reach an upstream with a valid head, so the count above can fail.
    assert_eq!(status_of(&get(&proxy, "/websocket").await), 200);
    assert_eq!(total_connections(&ups), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_goes_up_in_origin_form_with_its_authority_as_host() {
    let (proxy, mut ups) = start(&["/websocket", "/"]).await;
    let record = routed(&proxy, &mut ups, "http://x/websocket?q", 0).await;
    let head = text(&record.head);
    assert!(
        head.starts_with("GET /websocket?q HTTP/1.1\r\nHost: x\r\n"),
        "{head}"
    );
    assert!(!head.contains("Host: a"), "{head}");

    // The authority ends at `?` or `#`: neither the query nor a fragment is a path.
    for (target, line) in [
        ("http://x?/websocket", "GET /?/websocket HTTP/1.1"),
        ("http://x#/websocket", "GET / HTTP/1.1"),
        (
            "http://x:8080?/websocket#/websocket",
            "GET /?/websocket HTTP/1.1",
        ),
    ] {
        let record = routed(&proxy, &mut ups, target, 1).await;
        assert_eq!(request_line(&record), line, "{target}");
        assert!(!text(&record.head).contains('#'), "{target}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_takes_no_part_in_routing_and_goes_up_as_written() {
    let (proxy, mut ups) = start(&["/websocket", "/admin"]).await;
    let record = routed(
        &proxy,
        &mut ups,
        "/websocket/x/..?next=/../../admin&p=%2f\\",
        0,
    )
    .await;
    assert_eq!(
        request_line(&record),
        "GET /websocket/?next=/../../admin&p=%2f\\ HTTP/1.1"
    );
    let record = routed(&proxy, &mut ups, "/admin/.?/../websocket#/websocket", 1).await;
    assert_eq!(request_line(&record), "GET /admin/?/../websocket HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarding_headers_never_reach_the_upstream() {
    let (proxy, mut ups) = start(&["/"]).await;
    let request = "GET /ws HTTP/1.1\r\nHost: a\r\nForwarded: for=10.6.6.6;host=evil.example;proto=https\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Port: 6666\r\nx-forwarded-proto: https\r\nX-Forwarded-For: 192.0.2.1\r\nfoRWarded: by=10.6.6.6\r\nX-Kept: 1\r\n\r\n";
    let response = raw_exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(status_of(&response), 200, "{}", text(&response));
    let head = text(&ups[0].next().await.head);
    // With no trusted_proxies, the client's X-Forwarded-For is forged too: replaced.
    for forged in ["10.6.6.6", "evil.example", "6666", "https", "192.0.2.1"] {
        assert!(
            !head.contains(forged),
            "{forged} reached the upstream: {head}"
        );
    }
    let lower = head.to_ascii_lowercase();
    for name in ["forwarded:", "x-forwarded-host:", "x-forwarded-port:"] {
        assert!(!lower.contains(&format!("\n{name}")), "{name} in {head}");
    }
    assert!(head.contains("\r\nX-Kept: 1\r\n"), "{head}");
    assert!(
        head.contains("\r\nX-Forwarded-For: 127.0.0.1\r\n"),
        "{head}"
    );
}

/// A WebSocket handshake whose target needs normalising still opens a working tunnel to the
/// route's upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_through_a_normalised_path() {
    let (up, seen) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let config = TestConfig::default().only_route("/websocket", "backend");
    let proxy = Proxy::start(&config, &upstreams("backend", &[up]));
    for target in [
        "/chat/../websocket/./room",
        "http://x/a/%2e%2e/websocket?v=1",
    ] {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(upgrade_request(target).as_bytes())
            .await
            .unwrap();
        let mut head = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            while !head.ends_with(b"\r\n\r\n") {
                let mut byte = [0u8; 1];
                if stream.read(&mut byte).await.unwrap() == 0 {
                    break;
                }
                head.push(byte[0]);
            }
        })
        .await
        .expect("a response head within 10 s");
        assert!(
            head.starts_with(b"HTTP/1.1 101 "),
            "{target}: {}",
            text(&head)
        );
        let mut ws = WebSocketStream::from_raw_socket(stream, Role::Client, None).await;
        ws.send(Message::text("through a normalised path"))
            .await
            .unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an echo within 10 s")
            .unwrap()
            .unwrap();
        assert_eq!(echo, Message::text("through a normalised path"));
        ws.close(None).await.unwrap();
    }
    assert_eq!(seen.upgrades.load(Ordering::Relaxed), 2);
}

#[test]
fn config_refuses_h2c_and_route_paths_requests_never_have() {
    let upstream_file = "[backend]\nservers = [\"127.0.0.1:3000\"]\n";
    let base = TestConfig::default()
        .only_route("/websocket", "backend")
        .toml();
    for (config, says) in [
        (
            format!("{base}extra_upgrades = [\"h2c\"]\n"),
            "route.extra_upgrades: \"h2c\" cannot work",
        ),
        (
            base.replace("\"/websocket\"", "\"/websocket/../admin\""),
            "route.path: \"/websocket/../admin\" never matches",
        ),
        (
            base.replace("\"/websocket\"", "\"/web%2Fsocket\""),
            "route.path: \"/web%2Fsocket\" can never match",
        ),
    ] {
        let out = run_wsplice(&config, upstream_file, &["--check"]);
        let shown = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "{shown}");
        assert!(shown.contains("wsplice.toml:"), "{shown}");
        assert!(shown.contains(says), "{says:?} not in {shown}");
    }
}
