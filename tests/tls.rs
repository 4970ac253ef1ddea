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
}

pub fn make_pki(dir: &Path, names: &[&str]) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wsplice test CA");
    let ca = ca_params.clone().self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf = params.signed_by(&key, &issuer).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, leaf.pem() + &ca.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    Pki {
        ca: ca.der().clone(),
        cert: cert_path,
        key: key_path,
    }
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
