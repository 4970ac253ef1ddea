//! Host names that move, through the real binary and a DNS server inside the test (`resolver
//! = "127.0.0.1:PORT"`): a changed answer sends new connections to the new address while an
//! open tunnel to the old one keeps working, a failing DNS server leaves the last good set in
//! place (and says so in the log), and every A record of a name is a server.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::echo_upstream::{self, Seen};
use common::{Proxy, TestConfig};
use futures_util::{SinkExt, StreamExt};
use tokio::net::UdpSocket;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(10);

/// What the test DNS server answers to an A query.
#[derive(Clone)]
enum Answer {
    Records(Vec<Ipv4Addr>),
    ServFail,
}

/// A DNS server on 127.0.0.1 that answers every A query from `answer`, and every other
/// query with no records.
struct Dns {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    task: tokio::task::JoinHandle<()>,
}

impl Dns {
    async fn start(answer: Answer) -> Dns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let current = answer.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let reply = current.lock().unwrap().clone();
                if let Some(response) = respond(&buf[..n], &reply) {
                    let _ = socket.send_to(&response, from).await;
                }
            }
        });
        Dns { addr, answer, task }
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The response to one query (RFC 1035 4.1): the question echoed, then one A record per
/// address for an A query with TTL 0.
fn respond(query: &[u8], answer: &Answer) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let mut end = 12;
    while *query.get(end)? != 0 {
        end += 1 + usize::from(query[end]);
    }
    let qtype = u16::from_be_bytes([*query.get(end + 1)?, *query.get(end + 2)?]);
    let question = query.get(12..end + 5)?;
    let records = match (answer, qtype) {
        (Answer::Records(ips), 1) => ips.clone(),
        _ => Vec::new(),
    };
    let rcode = u8::from(matches!(answer, Answer::ServFail)) * 2;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&query[..2]);
    out.extend_from_slice(&[0x81 | (query[2] & 0x01), 0x80 | rcode]);
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for ip in records {
        out.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}

/// Echo upstreams on 127.0.0.2, 127.0.0.3, ... all on one port, as one name's records are.
async fn echoes_on_one_port(n: u8) -> (u16, Vec<Arc<Seen>>) {
    'again: for _ in 0..20 {
        let (first, seen) = echo_upstream::start("127.0.0.2:0").await.unwrap();
        let mut all = vec![seen];
        for i in 1..n {
            match echo_upstream::start(&format!("127.0.0.{}:{}", 2 + i, first.port())).await {
                Ok((_, seen)) => all.push(seen),
                Err(_) => continue 'again,
            }
        }
        return (first.port(), all);
    }
    panic!("no port free on every address");
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// Starts wsplice on a group of the one name; the test runtime has threads to spare, since
/// the DNS server must answer while this thread waits for wsplice to listen.
async fn start(dns: &Dns, port: u16) -> Proxy {
    start_every(dns, port, "200ms").await
}

fn upstream_file(port: u16, interval: &str) -> String {
    format!("[backend]\nservers = [\"app.test:{port}\"]\nresolve_interval = \"{interval}\"\n")
}

async fn start_every(dns: &Dns, port: u16, interval: &str) -> Proxy {
    let config = format!(
        "resolver = \"{}\"\nadmin = \"127.0.0.1:0\"\n{}",
        dns.addr,
        TestConfig::default().toml()
    );
    let proxy = Proxy::start_raw(&config, &upstream_file(port, interval));
    assert!(proxy.wait_log("admin endpoint on", LIMIT).await);
    proxy
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(proxy: &Proxy) -> Ws {
    let (ws, _) = tokio::time::timeout(LIMIT, connect_async(proxy.url("/ws")))
        .await
        .unwrap()
        .unwrap();
    ws
}

async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let back = tokio::time::timeout(LIMIT, ws.next()).await.unwrap();
    assert_eq!(back.unwrap().unwrap(), Message::text(text));
}

fn upgrades(seen: &Seen) -> usize {
    seen.upgrades.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_connections_follow_a_name_while_open_tunnels_stay() {
    let dns = Dns::start(Answer::Records(vec![ip(2)])).await;
    let (port, seen) = echoes_on_one_port(2).await;
    let proxy = start(&dns, port).await;
    let mut old = open(&proxy).await;
    echo(&mut old, "to .2").await;
    assert_eq!((upgrades(&seen[0]), upgrades(&seen[1])), (1, 0));

    dns.set(Answer::Records(vec![ip(3)]));
    let moved = format!("app.test:{port} -> [127.0.0.3:{port}] (was [127.0.0.2:{port}])");
    assert!(proxy.wait_log(&moved, LIMIT).await, "{}", proxy.log());
    let mut new = open(&proxy).await;
    echo(&mut new, "to .3").await;
    assert_eq!((upgrades(&seen[0]), upgrades(&seen[1])), (1, 1));
    echo(&mut old, "still to .2").await;
    let up = format!("wsplice_upstream_up{{group=\"backend\",server=\"127.0.0.3:{port}\"}}");
    assert_eq!(
        common::wait_metric(proxy.admin_addr(), &up, |v| v == 1.0, LIMIT).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_dns_server_leaves_the_last_good_set() {
    let dns = Dns::start(Answer::Records(vec![ip(2)])).await;
    let (port, seen) = echoes_on_one_port(2).await;
    let proxy = start(&dns, port).await;

    dns.set(Answer::ServFail);
    assert!(
        proxy
            .wait_log("upstream backend: cannot look up app.test", LIMIT)
            .await,
        "{}",
        proxy.log()
    );
    assert!(proxy.log().contains(&format!(
        "keeping its last good addresses [127.0.0.2:{port}]"
    )));
    for i in 1..=3 {
        let mut ws = open(&proxy).await;
        echo(&mut ws, "still there").await;
        assert_eq!(upgrades(&seen[0]), i);
    }

    dns.set(Answer::Records(vec![ip(3)]));
    let moved = format!("app.test:{port} -> [127.0.0.3:{port}] (was [127.0.0.2:{port}])");
    assert!(proxy.wait_log(&moved, LIMIT).await, "{}", proxy.log());
    assert!(
        proxy
            .log()
            .contains(&format!("app.test:{port} resolves again"))
    );
    let mut ws = open(&proxy).await;
    echo(&mut ws, "moved").await;
    assert_eq!(upgrades(&seen[1]), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_of_a_name_is_a_server() {
    let dns = Dns::start(Answer::Records(vec![ip(3), ip(2)])).await;
    let (port, seen) = echoes_on_one_port(2).await;
    let proxy = start(&dns, port).await;
    let mut open_tunnels = Vec::new();
    for _ in 0..4 {
        let mut ws = open(&proxy).await;
        echo(&mut ws, "hi").await;
        open_tunnels.push(ws);
    }
    assert_eq!((upgrades(&seen[0]), upgrades(&seen[1])), (2, 2));
    assert!(
        proxy
            .log()
            .contains(&format!("backend=[127.0.0.2:{port}, 127.0.0.3:{port}]")),
        "{}",
        proxy.log()
    );
}

/// A reload that shortens `resolve_interval` brings the next lookup forward: the old, long
/// deadline does not hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_shortens_resolve_interval_takes_effect_at_once() {
    let dns = Dns::start(Answer::Records(vec![ip(2)])).await;
    let (port, _seen) = echoes_on_one_port(2).await;
    let proxy = start_every(&dns, port, "1h").await;
    std::fs::write(proxy.upstreams_path(), upstream_file(port, "200ms")).unwrap();
    assert!(
        proxy.wait_log("upstreams reloaded", LIMIT).await,
        "{}",
        proxy.log()
    );
    dns.set(Answer::Records(vec![ip(3)]));
    let moved = format!("app.test:{port} -> [127.0.0.3:{port}] (was [127.0.0.2:{port}])");
    assert!(proxy.wait_log(&moved, LIMIT).await, "{}", proxy.log());
}
