//! Bulk load: raw bytes after the `101`, written as fast as the path takes them towards the
//! sink upstream. Throughput is what the sink confirmed between the window's edges; at the
//! end the sink must confirm every byte written, and it has checked each against the pattern.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use super::{GRACE, Load, OPEN_TIMEOUT, gather};
use crate::client::{Conn, LoadError, open_many};
use crate::report::{Probe, Report, Tally, Window};
use crate::ws::bulk_pattern;

const POLL: Duration = Duration::from_millis(5);

/// Runs bulk load with writes of `chunk` bytes; `bytes` in the report is the confirmed volume.
pub async fn run(load: &Load, chunk: usize, probe: &mut dyn Probe) -> Result<Report, LoadError> {
    let conns = open_many(
        load.target,
        load.tls.as_ref(),
        "/sink",
        load.connections,
        OPEN_TIMEOUT,
    )
    .await?;
    let window = Window::after(load.warmup, load.duration);
    let mut tasks = JoinSet::new();
    for conn in conns {
        tasks.spawn(async move {
            let mut tally = Tally::default();
            match stream(conn, chunk, window).await {
                Ok(bytes) => tally.bytes = bytes,
                Err(e) => tally.error = Some(e),
            }
            tally
        });
    }
    let mut report = Report::new("bulk", load.connections, load.duration);
    gather(tasks, window, probe, &mut report).await;
    Ok(report)
}

async fn stream(conn: Conn, chunk: usize, window: Window) -> Result<u64, LoadError> {
    let Conn { mut stream, reader } = conn;
    if !reader.pending().is_empty() {
        return Err(LoadError::Protocol(
            "sink sent bytes before any were written".into(),
        ));
    }
    let (mut rd, mut wr) = stream.split();
    let pattern = bulk_pattern(chunk);
    let give_up = tokio::time::Instant::from(window.end + GRACE);
    let total = AtomicU64::new(u64::MAX);

    let write = async {
        let mut sent = 0u64;
        while Instant::now() < window.end {
            let at = (sent % 251) as usize;
            match tokio::time::timeout_at(give_up, wr.write_all(&pattern[at..at + chunk])).await {
                Ok(written) => written?,
                Err(_) => return Err(LoadError::Timeout("writing bulk bytes")),
            }
            sent += chunk as u64;
        }
        // Over TLS the last records may still sit in the session: the sink must get them.
        match tokio::time::timeout_at(give_up, wr.flush()).await {
            Ok(flushed) => flushed?,
            Err(_) => return Err(LoadError::Timeout("writing bulk bytes")),
        }
        total.store(sent, Ordering::Release);
        Ok::<_, LoadError>(())
    };

    let confirm = async {
        let (mut at_start, mut at_end) = (0u64, 0u64);
        let mut buf = [0u8; 512];
        let (mut word, mut have) = ([0u8; 8], 0);
        let mut last = 0u64;
        loop {
            if last == total.load(Ordering::Acquire) {
                return Ok(at_end - at_start);
            }
            // The writer may finish after the sink confirmed its last byte, so look again at
            // `total` every few milliseconds instead of waiting for a report that never comes.
            let wake = (tokio::time::Instant::now() + POLL).min(give_up);
            let n = match tokio::time::timeout_at(wake, rd.read(&mut buf)).await {
                Ok(read) => read?,
                Err(_) if wake < give_up => continue,
                Err(_) => {
                    return Err(LoadError::Timeout("for the sink to confirm every byte"));
                }
            };
            if n == 0 {
                return Err(LoadError::Closed("sink (a byte was lost or corrupted)"));
            }
            let now = Instant::now();
            let mut confirmed = None;
            for &b in &buf[..n] {
                word[have] = b;
                have += 1;
                if have == 8 {
                    confirmed = Some(u64::from_le_bytes(word));
                    have = 0;
                }
            }
            let Some(count) = confirmed else { continue };
            if now < window.start {
                at_start = count;
            }
            if now < window.end {
                at_end = count;
            }
            last = count;
        }
    };

    let (written, confirmed) = tokio::join!(write, confirm);
    written?;
    confirmed
}
