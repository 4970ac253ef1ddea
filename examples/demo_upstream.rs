//! The bundled demo upstream: a WebSocket echo server (tokio-tungstenite) on each address given.
//! `cargo run --example demo_upstream -- 127.0.0.1:3000 127.0.0.1:3001`

#[path = "../tests/common/echo_upstream.rs"]
mod echo_upstream;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut addrs: Vec<String> = std::env::args().skip(1).collect();
    if addrs.is_empty() {
        addrs = vec!["127.0.0.1:3000".into(), "127.0.0.1:3001".into()];
    }
    for addr in &addrs {
        let (bound, _) = echo_upstream::start(addr).await?;
        eprintln!("demo upstream: WebSocket echo listening on {bound}");
    }
    std::future::pending::<()>().await;
    Ok(())
}
