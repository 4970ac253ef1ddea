//! The PROXY protocol and trusted proxies through the binary: a `proxy_protocol` listener
//! takes v1 and v2 headers (hand-built bytes here, as a balancer writes them) and reports
//! their client everywhere (forwarding headers, access log, `hash` on `client_ip`, per-client
//! limits); `LOCAL` and `UNKNOWN` are served as the peer; a missing, broken, truncated or slow
//! header, or one from a peer outside `trusted_proxies`, closes the connection, counted,
//! logged, and never reaching an upstream. `send_proxy_protocol` writes the header to an
//! upstream that checks it byte by byte. On plain listeners, a trusted proxy's
//! `X-Forwarded-For` names the client (nginx's `real_ip_recursive on`); anyone else's is
//! replaced.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Proxy, read_response, status_of, wait_metric};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

const LIMIT: Duration = Duration::from_secs(10);
const GET_CLOSE: &[u8] = b"GET /headers HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n";
const GET_KEEP: &[u8] = b"GET /headers HTTP/1.1\r\nHost: test\r\n\r\n";

/// What an upstream connection brought: the PROXY header it started with (when the
/// upstream expects one) and the request head.
#[derive(Debug)]
struct Seen {
    header: Vec<u8>,
    head: String,
}

/// An upstream that counts its connections, reads a PROXY header first when `expect` says
/// which (`1` or `2`), answers a plain request with its own name and the head it got, and an
/// upgrade with a valid `101` and then echoes.
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    seen: mpsc::UnboundedReceiver<Seen>,
}

async fn upstream(name: &'static str, expect: Option<u8>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (tx, seen) = mpsc::unbounded_channel();
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_upstream(stream, name, expect, tx.clone()));
        }
    });
    Upstream {
        addr,
        accepted,
        seen,
    }
}

async fn serve_upstream(
    mut stream: TcpStream,
    name: &str,
    expect: Option<u8>,
    tx: mpsc::UnboundedSender<Seen>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut fill = async |buf: &mut Vec<u8>, stream: &mut TcpStream, want: usize| {
        while buf.len() < want {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    };
    // Exactly the header, by its own framing: a v1 line, or v2's 16 bytes plus its length.
    let header_len = match expect {
        None => 0,
        Some(1) => loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i + 2;
            }
            let want = buf.len() + 1;
            if !fill(&mut buf, &mut stream, want).await {
                return;
            }
        },
        Some(_) => {
            if !fill(&mut buf, &mut stream, 16).await {
                return;
            }
            16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]))
        }
    };
    if !fill(&mut buf, &mut stream, header_len).await {
        return;
    }
    let header = buf.drain(..header_len).collect::<Vec<u8>>();
    let head_len = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let want = buf.len() + 1;
        if !fill(&mut buf, &mut stream, want).await {
            return;
        }
    };
    let rest = buf.split_off(head_len);
    let head = String::from_utf8_lossy(&buf).into_owned();
    let _ = tx.send(Seen {
        header,
        head: head.clone(),
    });
    let key = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim().to_string())
    });
    match key {
        Some(key) => {
            let accept = derive_accept_key(key.as_bytes());
            let switching = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            // The client waits for the 101 before its first frame.
            assert!(rest.is_empty(), "bytes before the 101");
            if stream.write_all(switching.as_bytes()).await.is_err() {
                return;
            }
            let mut ws = WebSocketStream::from_raw_socket(stream, Role::Server, None).await;
            while let Some(Ok(message)) = ws.next().await {
                // A close is answered by tungstenite itself, which then ends the stream.
                if !message.is_close() && ws.send(message).await.is_err() {
                    break;
                }
            }
        }
        None => {
            let body = format!("upstream={name}\n{head}");
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        }
    }
}

/// wsplice with an admin endpoint and an access log; `listen` is the one listen entry,
/// `top` more top-level lines, `extra` the `[timeouts]`/`[limits]` tables.
async fn start(listen: &str, top: &str, extra: &str, upstreams: &str) -> (Proxy, SocketAddr) {
    let config = format!(
        "listen = [{listen}]\nworkers = 2\nupstreams = \"upstreams.toml\"\nadmin = \"127.0.0.1:0\"\naccess_log = \"access.log\"\n{top}\n{extra}\n\n[[route]]\npath = \"/\"\nupstream = \"backend\"\n"
    );
    let proxy = Proxy::start_raw(&config, upstreams);
    assert!(proxy.wait_log("admin endpoint on", LIMIT).await);
    let admin = proxy.admin_addr();
    (proxy, admin)
}

const PP: &str = "{ addr = \"127.0.0.1:0\", proxy_protocol = true }";
const PLAIN: &str = "\"127.0.0.1:0\"";

fn group(servers: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[backend]\nservers = [{}]\n{extra}\n", list.join(", "))
}

fn access_log(proxy: &Proxy) -> PathBuf {
    proxy.dir.path().join("access.log")
}

/// Polls the access log until a line holds every one of `needles`; that line.
async fn wait_access(proxy: &Proxy, needles: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        #[allow(clippy::disallowed_methods)] // the test's own runtime, not a worker
        let text = std::fs::read_to_string(access_log(proxy)).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no access log line with {needles:?} in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn v1(source: &str, destination: &str) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (source.parse().unwrap(), destination.parse().unwrap());
    let family = if s.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    )
    .into_bytes()
}

const SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 `PROXY` header over TCP, with a TLV (an ALPN) that must be skipped.
fn v2(source: &str, destination: &str) -> Vec<u8> {
    let (s, d): (SocketAddr, SocketAddr) = (source.parse().unwrap(), destination.parse().unwrap());
    let mut block = Vec::new();
    let family = match (s.ip(), d.ip()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            block.extend_from_slice(&a.octets());
            block.extend_from_slice(&b.octets());
            0x11
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            block.extend_from_slice(&a.octets());
            block.extend_from_slice(&b.octets());
            0x21
        }
        _ => panic!("mixed families"),
    };
    block.extend_from_slice(&s.port().to_be_bytes());
    block.extend_from_slice(&d.port().to_be_bytes());
    block.extend_from_slice(&[0x01, 0, 8]);
    block.extend_from_slice(b"http/1.1");
    let mut out = SIGNATURE.to_vec();
    out.extend_from_slice(&[0x21, family]);
    out.extend_from_slice(&(block.len() as u16).to_be_bytes());
    out.extend_from_slice(&block);
    out
}

/// A v2 `LOCAL` header: a balancer's own health check.
fn v2_local() -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0, 0]);
    out
}

/// Writes `header` then `request` (in one write when `together`) and reads one response.
async fn exchange(addr: SocketAddr, header: &[u8], request: &[u8], together: bool) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    if together {
        stream.write_all(&[header, request].concat()).await.unwrap();
    } else {
        stream.write_all(header).await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        stream.write_all(request).await.unwrap();
    }
    String::from_utf8_lossy(&read_response(&mut stream, LIMIT).await).into_owned()
}

/// Asserts the proxy closes `stream` without answering.
async fn assert_closed_unanswered(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    match tokio::time::timeout(LIMIT, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("answered: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(_) => panic!("still open after {LIMIT:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_headers_name_the_client_upstream_and_in_the_access_log() {
    let up = upstream("a", None).await;
    // The test's own address is trusted to send PROXY headers.
    let top = "trusted_proxies = [\"127.0.0.1\"]";
    let (proxy, _admin) = start(PP, top, "", &group(&[up.addr], "")).await;

    for together in [true, false] {
        let header = v1("203.0.113.9:4000", "192.0.2.1:443");
        let text = exchange(proxy.addr, &header, GET_CLOSE, together).await;
        assert_eq!(status_of(text.as_bytes()), 200, "{text}");
        assert!(
            text.contains("\r\nX-Forwarded-For: 203.0.113.9\r\nX-Real-IP: 203.0.113.9\r\n"),
            "{text}"
        );
    }
    wait_access(&proxy, &["client=203.0.113.9:4000 ", "status=200"]).await;

    for together in [true, false] {
        let header = v2("[2001:db8::9]:5000", "[2001:db8::1]:443");
        let text = exchange(proxy.addr, &header, GET_CLOSE, together).await;
        assert_eq!(status_of(text.as_bytes()), 200, "{text}");
        assert!(
            text.contains("\r\nX-Forwarded-For: 2001:db8::9\r\nX-Real-IP: 2001:db8::9\r\n"),
            "{text}"
        );
    }
    wait_access(&proxy, &["client=[2001:db8::9]:5000 ", "status=200"]).await;

    // A client's own X-Forwarded-For behind the balancer is not believed.
    let forged = b"GET /headers HTTP/1.1\r\nHost: test\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n";
    let text = exchange(
        proxy.addr,
        &v2("198.51.100.3:1", "192.0.2.1:443"),
        forged,
        true,
    )
    .await;
    assert!(!text.contains("6.6.6.6"), "{text}");
    assert!(
        text.contains("\r\nX-Forwarded-For: 198.51.100.3\r\n"),
        "{text}"
    );

    // A keep-alive connection: every request of it is the header's client.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let header = v1("198.51.100.4:7", "192.0.2.1:443");
    stream
        .write_all(&[&header[..], GET_KEEP].concat())
        .await
        .unwrap();
    for _ in 0..2 {
        let text = String::from_utf8_lossy(&read_response(&mut stream, LIMIT).await).into_owned();
        assert!(text.contains("X-Real-IP: 198.51.100.4\r\n"), "{text}");
        stream.write_all(GET_KEEP).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_after_a_proxy_header_is_tunnelled() {
    let up = upstream("a", None).await;
    let (proxy, _admin) = start(PP, "", "", &group(&[up.addr], "")).await;
    let mut up = up;
    for header in [
        v1("203.0.113.20:6000", "192.0.2.1:443"),
        v2("203.0.113.21:6001", "192.0.2.1:443"),
    ] {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(&header).await.unwrap();
        let url = format!("ws://{}/chat", proxy.addr);
        let (mut ws, response) = tokio_tungstenite::client_async(url, stream).await.unwrap();
        assert_eq!(response.status(), 101);
        ws.send(Message::text("hello")).await.unwrap();
        let echoed = tokio::time::timeout(LIMIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed, Message::text("hello"));
        let seen = up.seen.recv().await.unwrap();
        let client = if header.starts_with(b"PROXY") {
            "203.0.113.20"
        } else {
            "203.0.113.21"
        };
        assert!(
            seen.head.contains(&format!(
                "\r\nX-Forwarded-For: {client}\r\nX-Real-IP: {client}\r\n"
            )),
            "{}",
            seen.head
        );
        ws.close(None).await.unwrap();
        while let Ok(Some(_)) = tokio::time::timeout(LIMIT, ws.next()).await {}
        drop(ws);
        wait_access(&proxy, &[&format!("client={client}:"), "status=101"]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_and_unknown_headers_are_served_as_the_peer() {
    let up = upstream("a", None).await;
    let (proxy, _admin) = start(PP, "", "", &group(&[up.addr], "")).await;
    for header in [v2_local(), b"PROXY UNKNOWN\r\n".to_vec()] {
        let text = exchange(proxy.addr, &header, GET_CLOSE, true).await;
        assert_eq!(status_of(text.as_bytes()), 200, "{text}");
        assert!(
            text.contains("\r\nX-Forwarded-For: 127.0.0.1\r\nX-Real-IP: 127.0.0.1\r\n"),
            "{text}"
        );
    }
}

/// Every way a header can fail closes the connection unanswered, is counted by its reason,
/// logged with it, and never reaches an upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_headers_close_the_connection_and_reach_no_upstream() {
    let up = upstream("a", None).await;
    let extra = "[timeouts]\nhandshake = \"300ms\"";
    let (proxy, admin) = start(PP, "", extra, &group(&[up.addr], "")).await;
    let mut bad_v2 = v2("203.0.113.9:1", "192.0.2.1:443");
    bad_v2[12] = 0x31;
    let mut bad_tlv = v2("203.0.113.9:1", "192.0.2.1:443");
    bad_tlv[15] -= 1;
    let cases: [(&str, Vec<u8>, bool); 7] = [
        ("missing", GET_CLOSE.to_vec(), false),
        ("missing", vec![0x16, 0x03, 0x01, 0x00, 0xa5], false),
        ("malformed", b"PROXY TCP4 nonsense\r\n".to_vec(), false),
        ("malformed", bad_v2, false),
        ("malformed", [&bad_tlv[..], GET_CLOSE].concat(), false),
        // Truncated, then the peer closes its side.
        ("truncated", b"PROXY TCP4 203.0.113.9 ".to_vec(), true),
        // Truncated, then silent past timeouts.handshake.
        ("timeout", b"PROXY TCP4 203.0.113.9 ".to_vec(), false),
    ];
    let mut counts = std::collections::HashMap::new();
    for (reason, bytes, shut) in cases {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(&bytes).await.unwrap();
        if shut {
            stream.shutdown().await.unwrap();
        }
        assert_closed_unanswered(&mut stream).await;
        *counts.entry(reason).or_insert(0.0) += 1.0;
        let key = format!("wsplice_proxy_protocol_errors_total{{reason=\"{reason}\"}}");
        let want = counts[reason];
        let n = wait_metric(admin, &key, |v| v >= want, LIMIT).await;
        assert_eq!(n, want, "{key}");
        wait_access(
            &proxy,
            &[
                "client=127.0.0.1:",
                &format!("end=\"proxy protocol: {reason}\""),
                "status=0",
            ],
        )
        .await;
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        0,
        "an upstream was reached"
    );
    assert!(
        proxy
            .log()
            .contains("does not start with a PROXY protocol header")
    );
    assert!(
        proxy
            .log()
            .contains("no whole PROXY header within timeouts.handshake")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_outside_trusted_proxies_is_refused() {
    let up = upstream("a", None).await;
    let top = "trusted_proxies = [\"10.0.0.0/8\"]";
    let (proxy, admin) = start(PP, top, "", &group(&[up.addr], "")).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let header = v1("203.0.113.9:4000", "192.0.2.1:443");
    stream
        .write_all(&[&header[..], GET_CLOSE].concat())
        .await
        .unwrap();
    assert_closed_unanswered(&mut stream).await;
    let key = "wsplice_proxy_protocol_errors_total{reason=\"untrusted\"}";
    assert_eq!(wait_metric(admin, key, |v| v >= 1.0, LIMIT).await, 1.0);
    wait_access(
        &proxy,
        &["client=127.0.0.1:", "end=\"proxy protocol: untrusted\""],
    )
    .await;
    assert!(proxy.log().contains("peer not in trusted_proxies"));
    assert_eq!(up.accepted.load(Ordering::SeqCst), 0);
}

/// Two servers under `hash` on `client_ip`: each PROXY client sticks to one server by its own
/// address, though they all come from the same TCP peer, and together they reach both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_on_client_ip_follows_the_proxy_address() {
    let a = upstream("a", None).await;
    let b = upstream("b", None).await;
    let upstreams = group(
        &[a.addr, b.addr],
        "balance = \"hash\"\nhash_key = \"client_ip\"",
    );
    let (proxy, _admin) = start(PP, "", "", &upstreams).await;
    let mut servers = std::collections::HashSet::new();
    for i in 1..=16 {
        let source = format!("198.51.100.{i}:{}", 1000 + i);
        let mut first = None;
        for _ in 0..3 {
            let text = exchange(proxy.addr, &v1(&source, "192.0.2.1:443"), GET_CLOSE, true).await;
            let server = text.split("upstream=").nth(1).unwrap_or("?")[..1].to_string();
            assert_eq!(
                *first.get_or_insert(server.clone()),
                server,
                "{source} moved"
            );
        }
        servers.insert(first.unwrap());
    }
    assert_eq!(
        servers.len(),
        2,
        "16 client addresses all hashed to {servers:?}"
    );
}

/// `max_connections_per_ip` counts a PROXY client by the header's address, once the header is
/// read: a second connection of the same client is refused, another client's is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_connection_limit_counts_the_proxy_address() {
    let up = upstream("a", None).await;
    let extra = "[limits]\nmax_connections_per_ip = 1";
    let (proxy, admin) = start(PP, "", extra, &group(&[up.addr], "")).await;
    // The first connection is served and then waits, open, for its next request.
    let mut first = TcpStream::connect(proxy.addr).await.unwrap();
    let header = v1("192.0.2.50:1000", "192.0.2.1:443");
    first
        .write_all(&[&header[..], GET_KEEP].concat())
        .await
        .unwrap();
    let text = read_response(&mut first, LIMIT).await;
    assert_eq!(status_of(&text), 200);

    let again = exchange(
        proxy.addr,
        &v1("192.0.2.50:1001", "192.0.2.1:443"),
        GET_CLOSE,
        true,
    )
    .await;
    assert_eq!(status_of(again.as_bytes()), 429, "{again}");
    let key = "wsplice_limited_total{limit=\"connections\"}";
    assert_eq!(wait_metric(admin, key, |v| v >= 1.0, LIMIT).await, 1.0);
    wait_access(&proxy, &["client=192.0.2.50:1001 ", "status=429"]).await;

    let other = exchange(
        proxy.addr,
        &v1("192.0.2.51:1000", "192.0.2.1:443"),
        GET_CLOSE,
        true,
    )
    .await;
    assert_eq!(status_of(other.as_bytes()), 200, "{other}");
    drop(first);
}

/// `send_proxy_protocol = "v1"` from a plain wildcard listener: the upstream reads the
/// client's TCP address and the address the client reached (not `0.0.0.0`) before the head,
/// then the upgrade goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_protocol_v1_names_the_client_to_the_upstream() {
    let mut up = upstream("a", Some(1)).await;
    let upstreams = group(&[up.addr], "send_proxy_protocol = \"v1\"");
    let (proxy, _admin) = start("\"0.0.0.0:0\"", "", "", &upstreams).await;
    let to = SocketAddr::from(([127, 0, 0, 1], proxy.addr.port()));
    let stream = TcpStream::connect(to).await.unwrap();
    let me = stream.local_addr().unwrap();
    let url = format!("ws://{to}/chat");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    ws.send(Message::text("v1")).await.unwrap();
    let echoed = tokio::time::timeout(LIMIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("v1"));
    let seen = up.seen.recv().await.unwrap();
    let want = format!(
        "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
        me.port(),
        proxy.addr.port()
    );
    assert_eq!(String::from_utf8_lossy(&seen.header), want);
    assert!(
        seen.head.starts_with("GET /chat HTTP/1.1\r\n"),
        "{}",
        seen.head
    );
}

/// `send_proxy_protocol = "v2"` behind a PROXY listener: the upstream's header names the
/// client and the destination the incoming header named (as HAProxy's accept-proxy +
/// send-proxy pass them on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_protocol_v2_passes_the_proxy_client_on() {
    let mut up = upstream("a", Some(2)).await;
    let upstreams = group(&[up.addr], "send_proxy_protocol = \"v2\"");
    let (proxy, _admin) = start(PP, "", "", &upstreams).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(&v2("203.0.113.9:4000", "192.0.2.1:443"))
        .await
        .unwrap();
    let url = format!("ws://{}/chat", proxy.addr);
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    let echoed = tokio::time::timeout(LIMIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::binary(vec![1, 2, 3]));
    let seen = up.seen.recv().await.unwrap();
    let mut want = SIGNATURE.to_vec();
    want.extend_from_slice(&[0x21, 0x11, 0, 12, 203, 0, 113, 9, 192, 0, 2, 1]);
    want.extend_from_slice(&4000u16.to_be_bytes());
    want.extend_from_slice(&443u16.to_be_bytes());
    assert_eq!(seen.header, want);
    assert!(
        seen.head.contains("X-Real-IP: 203.0.113.9\r\n"),
        "{}",
        seen.head
    );

    // A plain request on the same group gets its own header too.
    let text = exchange(
        proxy.addr,
        &v1("198.51.100.8:9", "192.0.2.1:443"),
        GET_CLOSE,
        true,
    )
    .await;
    assert_eq!(status_of(text.as_bytes()), 200, "{text}");
    let seen = up.seen.recv().await.unwrap();
    assert_eq!(&seen.header[16..20], &[198, 51, 100, 8]);
}

/// On a plain listener, a trusted proxy's `X-Forwarded-For` is walked from the right past
/// trusted addresses, and extended with the proxy; its `X-Forwarded-Proto` (the scheme its
/// client used, e.g. where it terminated TLS) goes up as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_from_a_trusted_proxy_names_the_client() {
    let up = upstream("a", None).await;
    let request = b"GET /headers HTTP/1.1\r\nHost: test\r\nX-Forwarded-For: 203.0.113.9, 127.0.0.5\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n";

    // 127.0.0.5 is trusted too: the client is the next address to its left.
    let top = "trusted_proxies = [\"127.0.0.0/8\"]";
    let (proxy, _admin) = start(PLAIN, top, "", &group(&[up.addr], "")).await;
    let text = exchange(proxy.addr, b"", request, true).await;
    assert!(
        text.contains(
            "\r\nX-Forwarded-For: 203.0.113.9, 127.0.0.5, 127.0.0.1\r\nX-Real-IP: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n"
        ),
        "{text}"
    );
    wait_access(&proxy, &["client=203.0.113.9 ", "status=200"]).await;
    drop(proxy);

    // Only the peer is trusted: 127.0.0.5 is the client (as nginx's set_real_ip_from would).
    let top = "trusted_proxies = [\"127.0.0.1\"]";
    let (proxy, _admin) = start(PLAIN, top, "", &group(&[up.addr], "")).await;
    let text = exchange(proxy.addr, b"", request, true).await;
    assert!(
        text.contains(
            "\r\nX-Forwarded-For: 203.0.113.9, 127.0.0.5, 127.0.0.1\r\nX-Real-IP: 127.0.0.5\r\n"
        ),
        "{text}"
    );
    drop(proxy);

    // Nobody trusted: the incoming list is replaced.
    let (proxy, _admin) = start(PLAIN, "", "", &group(&[up.addr], "")).await;
    let text = exchange(proxy.addr, b"", request, true).await;
    assert!(
        text.contains(
            "\r\nX-Forwarded-For: 127.0.0.1\r\nX-Real-IP: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
        ),
        "{text}"
    );
    assert!(!text.contains("203.0.113.9"), "{text}");
    assert!(!text.contains("https"), "{text}");
}

/// Behind a trusted proxy, the per-client limits are the forwarded client's: a connection is
/// counted by the client its first request names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_connection_limit_counts_a_trusted_proxys_client() {
    let up = upstream("a", None).await;
    let top = "trusted_proxies = [\"127.0.0.1\"]";
    let extra = "[limits]\nmax_connections_per_ip = 1";
    let (proxy, _admin) = start(PLAIN, top, extra, &group(&[up.addr], "")).await;
    let request = |client: &str, close: bool| {
        format!(
            "GET /headers HTTP/1.1\r\nHost: test\r\nX-Forwarded-For: {client}\r\n{}\r\n",
            if close { "Connection: close\r\n" } else { "" }
        )
    };
    let mut first = TcpStream::connect(proxy.addr).await.unwrap();
    first
        .write_all(request("203.0.113.30", false).as_bytes())
        .await
        .unwrap();
    assert_eq!(status_of(&read_response(&mut first, LIMIT).await), 200);
    let again = exchange(
        proxy.addr,
        b"",
        request("203.0.113.30", true).as_bytes(),
        true,
    )
    .await;
    assert_eq!(status_of(again.as_bytes()), 429, "{again}");
    wait_access(&proxy, &["client=203.0.113.30 ", "status=429"]).await;
    let other = exchange(
        proxy.addr,
        b"",
        request("203.0.113.31", true).as_bytes(),
        true,
    )
    .await;
    assert_eq!(status_of(other.as_bytes()), 200, "{other}");
    drop(first);
}

/// A request refused after its head was read (here: over the rate limit) is logged against
/// the client a trusted proxy's `X-Forwarded-For` names, not the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_from_a_trusted_proxy_is_logged_against_its_client() {
    let up = upstream("a", None).await;
    let top = "trusted_proxies = [\"127.0.0.1\"]";
    let extra = "[limits]\nhandshake_rate_per_ip = \"1/m\"";
    let (proxy, _admin) = start(PLAIN, top, extra, &group(&[up.addr], "")).await;
    let request = b"GET /headers HTTP/1.1\r\nHost: test\r\nX-Forwarded-For: 203.0.113.40\r\nConnection: close\r\n\r\n";
    let first = exchange(proxy.addr, b"", request, true).await;
    assert_eq!(status_of(first.as_bytes()), 200, "{first}");
    let second = exchange(proxy.addr, b"", request, true).await;
    assert_eq!(status_of(second.as_bytes()), 429, "{second}");
    wait_access(&proxy, &["client=203.0.113.40 ", "status=429"]).await;
}
