//! `wss://` through the real binary: a rustls client (tokio-rustls) under tokio-tungstenite,
//! with a CA and a certificate made in the test, against plain upstreams.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Proxy, echo_upstream, upstreams};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

const STEP: Duration = Duration::from_secs(10);

/// A CA and a certificate it signed for `names`, as PEM files in `dir`.
pub struct Pki {
    pub ca: CertificateDer<'static>,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    ca_params: rcgen::CertificateParams,
    ca_key: rcgen::KeyPair,
    ca_pem: String,
}

impl Pki {
    /// A new certificate for `names` from the same CA, with serial `serial`, written over
    /// the pair's files in place (as certbot's `--reuse-key`-less renewal ends up): the key
    /// first, then the chain, each in one write.
    pub fn renew(&self, names: &[&str], serial: u64) {
        let (cert, key) = self.issue(names, serial);
        std::fs::write(&self.key, key).unwrap();
        std::fs::write(&self.cert, cert).unwrap();
    }

    /// A chain (leaf then CA) and key in PEM for `names`.
    fn issue(&self, names: &[&str], serial: u64) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from(serial));
        let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
        let leaf = params.signed_by(&key, &issuer).unwrap();
        (leaf.pem() + &self.ca_pem, key.serialize_pem())
    }
}

pub fn make_pki(dir: &Path, names: &[&str]) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wsplice test CA");
    let ca = ca_params.clone().self_signed(&ca_key).unwrap();
    let pki = Pki {
        ca: ca.der().clone(),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        ca_params,
        ca_key,
        ca_pem: ca.pem(),
    };
    let (cert, key) = pki.issue(names, 1);
    std::fs::write(&pki.cert, cert).unwrap();
    std::fs::write(&pki.key, key).unwrap();
    pki
}

fn tls_config(pki: &Pki, extra: &str) -> String {
    format!(
        r#"listen = [{{ addr = "127.0.0.1:0", tls = true }}]
workers = 2
upstreams = "upstreams.toml"
{extra}
[tls]
certificates = [{{ cert = "{}", key = "{}" }}]

[[route]]
path = "/"
upstream = "backend"
"#,
        pki.cert.display(),
        pki.key.display()
    )
}

fn connector(pki: &Pki) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

async fn tls_connect(pki: &Pki, addr: SocketAddr, name: &str) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(name.to_string()).unwrap();
    tokio::time::timeout(STEP, connector(pki).connect(name, tcp))
        .await
        .expect("TLS handshake within 10 s")
        .expect("TLS handshake")
}

async fn wss(pki: &Pki, addr: SocketAddr, name: &str) -> WebSocketStream<TlsStream<TcpStream>> {
    let tls = tls_connect(pki, addr, name).await;
    let url = format!("wss://{name}/ws");
    let (ws, response) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    assert_eq!(response.status(), 101);
    ws
}

async fn next(ws: &mut WebSocketStream<TlsStream<TcpStream>>) -> Message {
    tokio::time::timeout(STEP, ws.next())
        .await
        .expect("echo within 10 s")
        .expect("stream open")
        .expect("valid message")
}

fn start(pki_names: &[&str], extra: &str) -> (Proxy, Pki, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    let pki = make_pki(certs.path(), pki_names);
    let rt = tokio::runtime::Handle::current();
    let (up, _) =
        tokio::task::block_in_place(|| rt.block_on(echo_upstream::start("127.0.0.1:0")).unwrap());
    let proxy = Proxy::start_raw(&tls_config(&pki, extra), &upstreams("backend", &[up]));
    (proxy, pki, certs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_echoes_text_and_binary_of_every_size() {
    let (proxy, pki, _certs) = start(&["chat.test"], "");
    let mut ws = wss(&pki, proxy.addr, "chat.test").await;
    for size in [0usize, 1, 125, 126, 16_000, 16_384, 65535, 65536, 1 << 20] {
        let data = common::pseudo_random(size, size as u64 + 1);
        ws.send(Message::binary(data.clone())).await.unwrap();
        assert_eq!(
            next(&mut ws).await,
            Message::binary(data.clone()),
            "binary {size}"
        );
        let text: String = data.iter().map(|b| char::from(b'a' + b % 26)).collect();
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::text(text), "text {size}");
    }
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_wss_tunnels_at_once_keep_their_order() {
    let (proxy, pki, _certs) = start(&["chat.test"], "");
    let pki = Arc::new(pki);
    let mut tasks = Vec::new();
    for t in 0..40u64 {
        let pki = pki.clone();
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            let mut ws = wss(&pki, addr, "chat.test").await;
            for i in 0..30u64 {
                let size = ((t * 7919 + i * 104_729) % 40_000) as usize;
                let data = common::pseudo_random(size, t * 1000 + i);
                ws.send(Message::binary(data.clone())).await.unwrap();
                assert_eq!(next(&mut ws).await, Message::binary(data));
            }
            ws.close(None).await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_tls_port_gets_a_plain_400() {
    let (proxy, _pki, _certs) = start(&["chat.test"], "");
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: chat.test\r\n\r\n")
        .await
        .unwrap();
    let response = common::read_to_close(&mut tcp, STEP).await;
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    assert!(text.contains("TLS port"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_garbled_handshake_is_closed() {
    let (proxy, _pki, _certs) = start(
        &["chat.test"],
        "admin = \"127.0.0.1:0\"\n[timeouts]\nhandshake = \"300ms\"\n",
    );
    // Half a ClientHello record, then silence: closed at timeouts.handshake.
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(&[22, 3, 1, 0, 200, 1, 0]).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(STEP, slow.read(&mut buf))
        .await
        .expect("closed");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // Garbage that is not a TLS record: an alert, then close.
    let mut garbled = TcpStream::connect(proxy.addr).await.unwrap();
    garbled
        .write_all(&[0x16, 0x99, 0x99, 0, 5, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    let answer = common::read_to_close(&mut garbled, STEP).await;
    assert!(
        answer.is_empty() || answer[0] == 21,
        "an alert or nothing: {answer:?}"
    );
    let admin = proxy.admin_addr();
    for result in ["timed_out", "failed"] {
        let key = format!("wsplice_tls_handshakes_total{{result=\"{result}\"}}");
        let n = common::wait_metric(admin, &key, |v| v >= 1.0, STEP).await;
        assert!(n >= 1.0, "{key} = {n}");
    }
}

/// The serial number of the certificate a new connection is served.
async fn served_serial(pki: &Pki, addr: SocketAddr) -> Vec<u8> {
    let tls = tls_connect(pki, addr, "chat.test").await;
    let (_, conn) = tls.get_ref();
    let leaf = &conn.peer_certificates().expect("a certificate")[0];
    serial_of(leaf)
}

/// A DER certificate's serial number: TBSCertificate's first INTEGER after the version.
fn serial_of(der: &[u8]) -> Vec<u8> {
    // SEQUENCE { SEQUENCE (tbs) { [0] version, INTEGER serial, ... } }
    fn header(b: &[u8]) -> (usize, usize) {
        let len = b[1];
        if len < 0x80 {
            (2, len as usize)
        } else {
            let n = (len & 0x7f) as usize;
            let mut l = 0usize;
            for &x in &b[2..2 + n] {
                l = l << 8 | x as usize;
            }
            (2 + n, l)
        }
    }
    let (h, _) = header(der);
    let tbs = &der[h..];
    let (h, _) = header(tbs);
    let mut at = &tbs[h..];
    if at[0] == 0xa0 {
        let (h, l) = header(at);
        at = &at[h + l..];
    }
    assert_eq!(at[0], 0x02, "INTEGER");
    let (h, l) = header(at);
    at[h..h + l].to_vec()
}

/// Certificates renewed in place reach new connections within about a second, while 200
/// open wss tunnels go on untouched (each echoes before and after).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_reaches_new_connections_and_leaves_200_open_tunnels_alone() {
    let (proxy, pki, _certs) = start(&["chat.test"], "");
    let pki = Arc::new(pki);
    let before = served_serial(&pki, proxy.addr).await;
    let mut open = Vec::new();
    for i in 0..200u64 {
        let mut ws = wss(&pki, proxy.addr, "chat.test").await;
        let data = common::pseudo_random(64, i);
        ws.send(Message::binary(data.clone())).await.unwrap();
        assert_eq!(next(&mut ws).await, Message::binary(data));
        open.push(ws);
    }
    pki.renew(&["chat.test"], 0x5eed);
    let deadline = tokio::time::Instant::now() + STEP;
    let after = loop {
        let serial = served_serial(&pki, proxy.addr).await;
        if serial != before || tokio::time::Instant::now() >= deadline {
            break serial;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        after,
        0x5eed_u64.to_be_bytes()[6..].to_vec(),
        "the new serial is served"
    );
    for (i, ws) in open.iter_mut().enumerate() {
        let data = common::pseudo_random(20_000, 1000 + i as u64);
        ws.send(Message::binary(data.clone())).await.unwrap();
        assert_eq!(
            next(ws).await,
            Message::binary(data),
            "tunnel {i} after the renewal"
        );
    }
    for mut ws in open {
        ws.close(None).await.unwrap();
    }
}

/// Opens a raw tunnel over TLS to a raw upstream: the upgrade by hand, exactly the `101`
/// head read back.
async fn raw_tls_tunnel(pki: &Pki, addr: SocketAddr) -> TlsStream<TcpStream> {
    let mut tls = tls_connect(pki, addr, "chat.test").await;
    common::raw_tunnel::upgrade(&mut tls, "chat.test").await;
    tls
}

fn start_raw(pki: &Pki, up: SocketAddr, extra: &str) -> Proxy {
    Proxy::start_raw(&tls_config(pki, extra), &upstreams("backend", &[up]))
}

/// The client's close_notify and FIN reach the upstream as end of stream after every byte;
/// the upstream's end of stream comes back as close_notify, a clean end for the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_notify_reaches_upstream_and_the_reply_ends_cleanly() {
    let certs = tempfile::tempdir().unwrap();
    let pki = make_pki(certs.path(), &["chat.test"]);
    let up =
        common::raw_upstream::start(|s, _, rest| common::raw_upstream::raw_echo(s, rest)).await;
    let proxy = start_raw(&pki, up, "");
    let mut tls = raw_tls_tunnel(&pki, proxy.addr).await;
    let data = common::pseudo_random(300_000, 7);
    let (mut r, mut w) = tokio::io::split(tls);
    let writer = {
        let data = data.clone();
        tokio::spawn(async move {
            for chunk in data.chunks(7_001) {
                w.write_all(chunk).await.unwrap();
            }
            // close_notify, then FIN.
            w.shutdown().await.unwrap();
            w
        })
    };
    let mut echoed = Vec::new();
    let read = tokio::time::timeout(STEP, r.read_to_end(&mut echoed))
        .await
        .expect("echo within 10 s");
    read.expect("a clean end: the proxy sent close_notify before its FIN");
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == data, "bytes intact and in order");
    let w = writer.await.unwrap();
    tls = r.unsplit(w);
    let (_, conn) = tls.get_ref();
    assert!(!conn.wants_write());
}

/// The upstream half-closes first: the client reads its last bytes and a clean end, and can
/// still send, which the upstream receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_end_reaches_the_client_as_close_notify_and_the_client_can_still_send() {
    let certs = tempfile::tempdir().unwrap();
    let pki = make_pki(certs.path(), &["chat.test"]);
    let (got_tx, got_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let got_tx = Arc::new(std::sync::Mutex::new(Some(got_tx)));
    let up = common::raw_upstream::start(move |mut s, _, _| {
        let got_tx = got_tx.clone();
        async move {
            s.write_all(common::raw_upstream::SWITCHING).await.unwrap();
            s.write_all(b"bye").await.unwrap();
            s.shutdown().await.unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
            if let Some(tx) = got_tx.lock().unwrap().take() {
                let _ = tx.send(rest);
            }
        }
    })
    .await;
    let proxy = start_raw(&pki, up, "");
    let mut tls = raw_tls_tunnel(&pki, proxy.addr).await;
    let mut got = Vec::new();
    tokio::time::timeout(STEP, tls.read_to_end(&mut got))
        .await
        .expect("end within 10 s")
        .expect("a clean end (close_notify)");
    assert_eq!(got, b"bye");
    tls.write_all(b"still here").await.unwrap();
    tls.shutdown().await.unwrap();
    let rest = tokio::time::timeout(STEP, got_rx)
        .await
        .expect("upstream end within 10 s")
        .unwrap();
    assert_eq!(rest, b"still here");
}

/// `timeouts.idle` ends a quiet TLS tunnel and leaves a busy one alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_quiet_tls_tunnel_but_not_a_busy_one() {
    let certs = tempfile::tempdir().unwrap();
    let pki = make_pki(certs.path(), &["chat.test"]);
    let up =
        common::raw_upstream::start(|s, _, rest| common::raw_upstream::raw_echo(s, rest)).await;
    let proxy = start_raw(&pki, up, "[timeouts]\nidle = \"1s\"\n");
    let mut quiet = raw_tls_tunnel(&pki, proxy.addr).await;
    let mut busy = raw_tls_tunnel(&pki, proxy.addr).await;
    let started = tokio::time::Instant::now();
    let mut byte = [0u8; 1];
    for _ in 0..20 {
        busy.write_all(b"x").await.unwrap();
        busy.read_exact(&mut byte).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Two seconds of traffic, longer than the idle timeout: the busy one is still open.
    busy.write_all(b"y").await.unwrap();
    busy.read_exact(&mut byte).await.unwrap();
    assert_eq!(&byte, b"y");
    // Ended by the proxy: a FIN or a reset (an idle end is not a clean close_notify).
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(STEP, quiet.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the quiet tunnel closed within 10 s");
    assert!(rest.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

/// What an idle TLS tunnel costs: its record state (both directions' AEAD keys, what rustls
/// keeps for a KeyUpdate) besides the plain tunnel's entry, and no relay buffer. Measured as
/// the growth of the process's RSS over 500 idle wss tunnels, and printed; each still echoes
/// after. (A debug build; the README gives the release figure.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tls_tunnels_pin_no_buffers() {
    let certs = tempfile::tempdir().unwrap();
    let pki = make_pki(certs.path(), &["chat.test"]);
    let up =
        common::raw_upstream::start(|s, _, rest| common::raw_upstream::raw_echo(s, rest)).await;
    let proxy = Proxy::start_raw(
        &tls_config(&pki, "").replace("workers = 2", "workers = 1"),
        &upstreams("backend", &[up]),
    );
    let resident = common::resident_bytes;
    let mut held = Vec::new();
    for _ in 0..100 {
        let mut t = raw_tls_tunnel(&pki, proxy.addr).await;
        t.write_all(b"warm").await.unwrap();
        let mut back = [0u8; 4];
        t.read_exact(&mut back).await.unwrap();
        held.push(t);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = resident(proxy.pid());
    const N: u64 = 500;
    for _ in 0..N {
        held.push(raw_tls_tunnel(&pki, proxy.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let per_tunnel = resident(proxy.pid()).saturating_sub(before) / N;
    println!("RSS per idle TLS tunnel: {per_tunnel} bytes");
    // A relay buffer is 16 KiB: far below it, the tunnels hold none.
    assert!(
        per_tunnel < 8192,
        "{per_tunnel} bytes of RSS per idle TLS tunnel"
    );
    for (i, t) in held.iter_mut().enumerate() {
        let msg = (i as u32).to_be_bytes();
        t.write_all(&msg).await.unwrap();
        let mut back = [0u8; 4];
        tokio::time::timeout(STEP, t.read_exact(&mut back))
            .await
            .expect("echo within 10 s")
            .unwrap();
        assert_eq!(back, msg, "tunnel {i}");
    }
}

/// A request over TLS goes up with `X-Forwarded-Proto: https`, and its response comes back
/// through the record layer, keep-alive included (two requests on one TLS connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_tls_go_up_as_https_and_keep_alive() {
    let certs = tempfile::tempdir().unwrap();
    let pki = make_pki(certs.path(), &["chat.test"]);
    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec();
    let mut up = common::record_upstream::start(answer, Duration::from_millis(200)).await;
    let proxy = start_raw(&pki, up.addr, "");
    let mut tls = tls_connect(&pki, proxy.addr, "chat.test").await;
    for i in 0..2 {
        let request = format!("GET /page/{i} HTTP/1.1\r\nHost: chat.test\r\n\r\n");
        tls.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        while !response.ends_with(b"hello") {
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(STEP, tls.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&response));
            response.extend_from_slice(&buf[..n]);
        }
        assert!(response.starts_with(b"HTTP/1.1 200 OK\r\n"), "{response:?}");
        let record = tokio::time::timeout(STEP, up.records.recv())
            .await
            .unwrap()
            .unwrap();
        let head = String::from_utf8_lossy(&record.head);
        assert!(head.starts_with(&format!("GET /page/{i} ")), "{head}");
        assert!(head.contains("\r\nX-Forwarded-Proto: https\r\n"), "{head}");
    }
}

/// A refusal over TLS (here 421: a Host the certificate does not cover) ends with
/// close_notify before the FIN, so the client reads a clean end, not a truncation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_over_tls_ends_with_close_notify() {
    let (proxy, pki, _certs) = start(&["chat.test"], "");
    let mut tls = tls_connect(&pki, proxy.addr, "chat.test").await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(STEP, tls.read_to_end(&mut response))
        .await
        .expect("closed within 10 s")
        .expect("a clean end (close_notify), not a truncation");
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 421 "), "{text}");
}

/// Over a per-client limit on a TLS listener, a client is closed before its handshake,
/// unanswered (a plain HTTP 429 would read as a broken TLS record), and counted; the client
/// already in keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_limit_on_a_tls_listener_is_closed_unanswered() {
    let (proxy, pki, _certs) = start(
        &["chat.test"],
        "admin = \"127.0.0.1:0\"\n[limits]\nmax_connections_per_ip = 1\n",
    );
    let mut first = wss(&pki, proxy.addr, "chat.test").await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(STEP, tcp.read_to_end(&mut got))
        .await
        .expect("closed within 10 s");
    assert!(
        got.is_empty(),
        "no plain-text answer: {:?}",
        String::from_utf8_lossy(&got)
    );
    let key = "wsplice_limited_total{limit=\"connections\"}";
    let n = common::wait_metric(proxy.admin_addr(), key, |v| v >= 1.0, STEP).await;
    assert!(n >= 1.0, "{key} = {n}");
    first.send(Message::text("still here")).await.unwrap();
    assert_eq!(next(&mut first).await, Message::text("still here"));
}

/// A binary upgrade moves plain tunnels only: a `wss://` tunnel's record layer (keys,
/// sequence numbers) stays in the old process, which relays it on until it closes, then
/// exits; the new process serves new `wss://` connections meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_leaves_wss_tunnels_draining_in_the_old_process() {
    let (mut old, pki, _certs) = start(&["chat.test"], "handoff = \"handoff.sock\"");
    let mut draining = wss(&pki, old.addr, "chat.test").await;
    draining
        .send(Message::text("before the upgrade"))
        .await
        .unwrap();
    assert_eq!(
        next(&mut draining).await,
        Message::text("before the upgrade")
    );

    let mut takeover = std::process::Command::new(common::BIN);
    takeover
        .arg("--config")
        .arg(old.dir.path().join("wsplice.toml"))
        .arg("--takeover");
    let new = Proxy::spawn(takeover, tempfile::tempdir().unwrap(), " (takeover)");
    assert_eq!(new.addr, old.addr);
    let handed = "handoff: handed over 0 tunnels to pid";
    assert!(old.wait_log(handed, STEP).await, "{}", old.log());
    assert!(
        old.log().contains("1 wss tunnels drain here"),
        "{}",
        old.log()
    );

    // The old process relays its wss tunnel on; new ones go to the new process.
    assert!(old.wait_exit(Duration::from_millis(500)).await.is_none());
    draining.send(Message::text("still here")).await.unwrap();
    assert_eq!(next(&mut draining).await, Message::text("still here"));
    let mut fresh = wss(&pki, new.addr, "chat.test").await;
    fresh.send(Message::text("new")).await.unwrap();
    assert_eq!(next(&mut fresh).await, Message::text("new"));

    draining.close(None).await.unwrap();
    drop(draining);
    let status = old.wait_exit(STEP).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", old.log());
    assert!(
        old.log()
            .contains("stopped (drained): 1 connections drained, 0 cut"),
        "{}",
        old.log()
    );
    fresh.close(None).await.unwrap();
}
