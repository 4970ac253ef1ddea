//! Sends messages over a WebSocket and prints each echo with its round-trip time.
//! `cargo run --example ws_send -- ws://127.0.0.1:8080/websocket hello world`
//! `cargo run --example ws_send -- --ca target/demo-tls/ca.pem wss://localhost:8443/websocket hi`
//! For `wss://`, `--ca FILE` names the PEM certificate(s) to trust (a CA, or the server's own
//! self-signed certificate); the server's name is checked against them as a browser would.

use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::http::Uri;

type Error = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut ca = None;
    if args.first().map(String::as_str) == Some("--ca") {
        if args.len() < 2 {
            return Err("--ca needs a PEM file".into());
        }
        ca = Some(args.remove(1));
        args.remove(0);
    }
    let mut args = args.into_iter();
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8080/websocket".into());
    let mut messages: Vec<String> = args.collect();
    if messages.is_empty() {
        messages.push("hello through wsplice".into());
    }
    let uri: Uri = url.parse()?;
    let host = uri.host().ok_or("the URL has no host")?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    match uri.scheme_str() {
        Some("ws") => {
            let port = uri.port_u16().unwrap_or(80);
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let (ws, response) = tokio_tungstenite::client_async(url.as_str(), tcp).await?;
            println!("connected to {url}: HTTP {}", response.status());
            exchange(ws, messages).await
        }
        Some("wss") => {
            let ca = ca.ok_or("wss:// needs --ca FILE: the PEM certificate to trust")?;
            let port = uri.port_u16().unwrap_or(443);
            let tls = tls_connect(&ca, &host, port).await?;
            let (ws, response) = tokio_tungstenite::client_async(url.as_str(), tls).await?;
            println!("connected to {url} over TLS: HTTP {}", response.status());
            exchange(ws, messages).await
        }
        _ => Err(format!("{url}: not a ws:// or wss:// URL").into()),
    }
}

/// A TLS connection (rustls, ALPN `http/1.1`) to `host:port` whose certificate must chain to
/// one in the PEM file `ca` and name `host`.
async fn tls_connect(
    ca: &str,
    host: &str,
    port: u16,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{ca}: {e}"))? {
        roots.add(cert.map_err(|e| format!("{ca}: {e}"))?)?;
    }
    if roots.is_empty() {
        return Err(format!("{ca}: no certificate").into());
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(host.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {host}:{port}: {e}"))?;
    Ok(tls)
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocketStream<S>,
    messages: Vec<String>,
) -> Result<(), Error> {
    for text in messages {
        let sent = Instant::now();
        ws.send(Message::text(text.clone())).await?;
        match ws.next().await {
            Some(Ok(reply)) => println!(
                "sent {text:?} -> echo {:?} in {:.2} ms",
                reply.to_text().unwrap_or("<binary>"),
                sent.elapsed().as_secs_f64() * 1e3
            ),
            other => return Err(format!("no echo: {other:?}").into()),
        }
    }
    // A clean close: the server's close frame comes back before the connection ends (at most
    // 5 s), so neither side logs a reset.
    ws.close(None).await?;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Ok(())
}
