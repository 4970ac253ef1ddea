//! Sends messages over a WebSocket and prints each echo with its round-trip time.
//! `cargo run --example ws_send -- ws://127.0.0.1:8080/websocket hello world`

use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8080/websocket".into());
    let mut messages: Vec<String> = args.collect();
    if messages.is_empty() {
        messages.push("hello through wsplice".into());
    }
    let (mut ws, response) = tokio_tungstenite::connect_async(url.as_str()).await?;
    println!("connected to {url}: HTTP {}", response.status());
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
    ws.close(None).await?;
    Ok(())
}
