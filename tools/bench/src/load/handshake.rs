//! Handshake load: each of `connections` loops connects (with a full TLS handshake in the TLS
//! cell: the client never resumes), upgrades (checking the accept key), sends a close frame,
//! waits for the upstream's close frame and its end of stream.

use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::{Load, gather};
use crate::client::{LoadError, connect, send};
use crate::report::{Latencies, Probe, Report, Tally, Window};
use crate::ws::{OP_CLOSE, Rng, write_client_frame};

/// One whole handshake may take at most this long before the run calls it an error.
const ONE_TIMEOUT: Duration = Duration::from_secs(5);
const NORMAL_CLOSURE: [u8; 2] = 1000u16.to_be_bytes();

/// Runs handshake load; `messages` in the report counts completed handshakes, latency is
/// connect to end of stream.
pub async fn run(load: &Load, probe: &mut dyn Probe) -> Result<Report, LoadError> {
    let window = Window::after(load.warmup, load.duration);
    let latencies = Latencies::default();
    let mut tasks = JoinSet::new();
    for i in 0..load.connections {
        let target = load.target;
        let tls = load.tls.clone();
        let mut recorder = latencies.recorder();
        tasks.spawn(async move {
            let mut rng = Rng::new(0xC0FFEE + i as u64);
            let mut tally = Tally::default();
            while Instant::now() < window.end {
                let start = Instant::now();
                match tokio::time::timeout(ONE_TIMEOUT, once(target, tls.as_ref(), &mut rng)).await
                {
                    Ok(Ok(())) => {
                        let done = Instant::now();
                        if window.contains(done) {
                            tally.messages += 1;
                            recorder.record(done - start);
                        }
                    }
                    Ok(Err(e)) => {
                        tally.error = Some(e);
                        break;
                    }
                    Err(_) => {
                        tally.error = Some(LoadError::Timeout("for a whole handshake"));
                        break;
                    }
                }
            }
            tally
        });
    }
    let mut report = Report::new("handshake", load.connections, load.duration);
    gather(tasks, window, probe, &mut report).await;
    report.latency = latencies.take();
    Ok(report)
}

/// One connection's life: upgrade, close handshake, end of stream.
pub async fn once(
    target: std::net::SocketAddr,
    tls: Option<&crate::tls::Client>,
    rng: &mut Rng,
) -> Result<(), LoadError> {
    let mut conn = connect(target, tls, "/echo", rng).await?;
    let mut out = Vec::with_capacity(8);
    write_client_frame(&mut out, OP_CLOSE, &NORMAL_CLOSURE, rng.mask());
    send(&mut conn.stream, &out).await?;
    let (h, payload) = conn.reader.read_frame(&mut conn.stream).await?;
    if h.opcode != OP_CLOSE || payload != NORMAL_CLOSURE {
        return Err(LoadError::Protocol(format!(
            "expected the close frame back, got opcode {}",
            h.opcode
        )));
    }
    loop {
        match conn.reader.fill(&mut conn.stream).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // A TLS peer may close the socket after the close frame without a close_notify
            // alert: the WebSocket close handshake already ended the stream cleanly.
            Err(e) if conn.stream.is_tls() && e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        if !conn.reader.pending().is_empty() {
            return Err(LoadError::Protocol("bytes after the close frame".into()));
        }
    }
}
