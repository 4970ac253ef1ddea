//! Every load mode against the bench upstream directly (no proxy) for a fraction of a second:
//! it must count verified work and no errors. A relay that flips one byte must be caught by
//! the echo check and by the sink. An independent WebSocket client (tungstenite) must
//! accept the upstream's handshake and get its echoes.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use wsplice_bench::load::{Load, bulk, echo, handshake, idle};
use wsplice_bench::report::{NoProbe, Report};
use wsplice_bench::upstream::Upstream;

fn load(target: SocketAddr, connections: usize) -> Load {
    Load {
        target,
        connections,
        duration: Duration::from_millis(300),
        warmup: Duration::from_millis(50),
        tls: None,
    }
}

fn assert_clean(report: &Report) {
    assert_eq!(report.errors, 0, "{report}");
    assert!(
        report.messages + report.bytes > 0,
        "nothing counted: {report}"
    );
}

fn upstream() -> Upstream {
    Upstream::start("127.0.0.1:0".parse().unwrap(), 1).unwrap()
}

#[test]
fn every_mode_runs_clean_against_the_upstream_directly() {
    let up = upstream();
    let rt = wsplice_bench::runtime(1).unwrap();
    rt.block_on(async {
        let closed = echo::Pace::Closed { depth: 1 };
        let rr = echo::run(&load(up.addr, 4), 64, closed, &mut NoProbe)
            .await
            .unwrap();
        assert_clean(&rr);
        assert!(rr.latency.len() as u64 == rr.messages);

        let big = echo::run(&load(up.addr, 2), 100_000, closed, &mut NoProbe)
            .await
            .unwrap();
        assert_clean(&big);

        let rate = echo::Pace::Rate { per_second: 2000.0 };
        let open = echo::run(&load(up.addr, 4), 64, rate, &mut NoProbe)
            .await
            .unwrap();
        assert_clean(&open);
        // 2,000/s for 0.3 s: the schedule, not the echo speed, sets the count.
        assert!((500..=700).contains(&open.messages), "{open}");

        let pipe = echo::Pace::Closed { depth: 16 };
        let piped = echo::run(&load(up.addr, 2), 64, pipe, &mut NoProbe)
            .await
            .unwrap();
        assert_clean(&piped);

        assert_clean(
            &handshake::run(&load(up.addr, 2), &mut NoProbe)
                .await
                .unwrap(),
        );

        let bulk = bulk::run(&load(up.addr, 2), 64 * 1024, &mut NoProbe)
            .await
            .unwrap();
        assert_clean(&bulk);
        assert!(bulk.bytes > 1_000_000, "{bulk}");

        let held = idle::run(
            &load(up.addr, 200),
            Duration::from_millis(100),
            &mut NoProbe,
        )
        .await
        .unwrap();
        assert_clean(&held);
        assert_eq!(held.messages, 200, "{held}");
    });
}

/// A TCP relay that flips one bit of the byte at `offset` of the chosen direction.
async fn corrupting_relay(upstream: SocketAddr, to_upstream: bool, offset: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = TcpStream::connect(upstream).await.unwrap();
            let (cr, cw) = client.into_split();
            let (ur, uw) = upstream.into_split();
            let (a, b) = if to_upstream {
                (Some(offset), None)
            } else {
                (None, Some(offset))
            };
            tokio::spawn(pump(cr, uw, a));
            tokio::spawn(pump(ur, cw, b));
        }
    });
    addr
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    flip_at: Option<usize>,
) {
    let mut seen = 0;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match flip_at {
            Some(at) if (seen..seen + n).contains(&at) => buf[at - seen] ^= 0x01,
            _ => {}
        }
        seen += n;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[test]
fn a_flipped_byte_is_caught_by_echo_and_by_the_sink() {
    let up = upstream();
    let rt = wsplice_bench::runtime(1).unwrap();
    rt.block_on(async {
        // Past the 101 head (about 130 bytes) and a few messages.
        let relay = corrupting_relay(up.addr, false, 1000).await;
        let closed = echo::Pace::Closed { depth: 1 };
        let rr = echo::run(&load(relay, 1), 64, closed, &mut NoProbe)
            .await
            .unwrap();
        assert_eq!(rr.errors, 1, "{rr}");
        assert!(rr.first_error.unwrap().contains("mismatch"));

        let relay = corrupting_relay(up.addr, true, 100_000).await;
        let bulk = bulk::run(&load(relay, 1), 64 * 1024, &mut NoProbe)
            .await
            .unwrap();
        assert_eq!(bulk.errors, 1, "{bulk}");
    });
}

#[test]
fn an_independent_client_accepts_the_upstream() {
    let up = upstream();
    let rt = wsplice_bench::runtime(1).unwrap();
    rt.block_on(async {
        let url = format!("ws://{}/echo", up.addr);
        let (mut ws, response) = tokio_tungstenite::connect_async(url).await.unwrap();
        assert_eq!(response.status(), 101);
        for msg in [
            Message::Text("hello".into()),
            Message::Binary(vec![7u8; 70_000].into()),
        ] {
            ws.send(msg.clone()).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), msg);
        }
        ws.send(Message::Ping(b"p".to_vec().into())).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::Pong(b"p".to_vec().into())
        );
        ws.close(None).await.unwrap();
        let closing = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
        assert!(
            matches!(closing, Ok(Some(Ok(Message::Close(_))))),
            "{closing:?}"
        );
    });
}
