//! Idle load: open `connections` upgraded connections, hold them without a byte for `hold`
//! (the probe's window: a caller reads the proxy's memory at its end), then check that every
//! one still echoes a message.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Load, OPEN_TIMEOUT};
use crate::client::{LoadError, OPEN_CONCURRENCY, open_many, send};
use crate::report::{Latencies, Probe, Report, Tally, Window};
use crate::ws::{Messages, OP_BINARY, Rng};

/// Runs idle load; `load.duration` is ignored in favour of `hold`. `messages` in the report
/// counts connections that echoed after the hold.
pub async fn run(load: &Load, hold: Duration, probe: &mut dyn Probe) -> Result<Report, LoadError> {
    let conns = open_many(
        load.target,
        load.tls.as_ref(),
        "/echo",
        load.connections,
        OPEN_TIMEOUT,
    )
    .await?;
    Window::after(Duration::ZERO, hold).drive(probe).await;

    let latencies = Latencies::default();
    let permits = Arc::new(Semaphore::new(OPEN_CONCURRENCY));
    let mut tasks = JoinSet::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let permits = permits.clone();
        let mut recorder = latencies.recorder();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("never closed");
            let mut tally = Tally::default();
            let mut messages = Messages::new(i as u64, 64);
            let mut out = Vec::with_capacity(80);
            messages.write_frame(&mut out, 0, Rng::new(i as u64).mask());
            let start = Instant::now();
            let echoed = async {
                send(&mut conn.stream, &out).await?;
                let (h, payload) = conn.reader.read_frame(&mut conn.stream).await?;
                if h.opcode != OP_BINARY || !messages.matches(payload, 0) {
                    return Err(LoadError::Mismatch {
                        conn: i as u64,
                        seq: 0,
                    });
                }
                Ok(())
            };
            match tokio::time::timeout(OPEN_TIMEOUT, echoed).await {
                Ok(Ok(())) => {
                    tally.messages = 1;
                    recorder.record(start.elapsed());
                }
                Ok(Err(e)) => tally.error = Some(e),
                Err(_) => tally.error = Some(LoadError::Timeout("for an idle connection's echo")),
            }
            tally
        });
    }
    let mut report = Report::new("idle", load.connections, hold);
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(tally) => report.add(tally),
            Err(e) => report.error(format!("connection task failed: {e}")),
        }
    }
    report.latency = latencies.take();
    Ok(report)
}
