//! Echo load: every message is a masked binary frame carrying its sequence number, and every
//! echo is compared byte for byte with what was sent. Closed loop (`rr`, `pipe`) keeps
//! `depth` messages in flight per connection; open loop sends on a fixed schedule whatever
//! is still owed, so a stall shows in the latency of every message sent during it instead of
//! holding the sender back (no coordinated omission).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::{GRACE, Load, OPEN_TIMEOUT, gather};
use crate::client::{Conn, LoadError, open_many, send};
use crate::report::{Latencies, Probe, Recorder, Report, Tally, Window};
use crate::ws::{Header, Messages, OP_BINARY, Rng};

/// How late past its due time an open-loop send may go before the lateness is blamed on
/// the proxy rather than on the client's timer (tokio's has millisecond resolution).
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// How messages are paced.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Keep this many messages in flight per connection (1 = request/response).
    Closed { depth: usize },
    /// Send this many messages per second in total, spread evenly over the connections.
    Rate { per_second: f64 },
}

/// Runs echo load against `load.target`.
pub async fn run(
    load: &Load,
    size: usize,
    pace: Pace,
    probe: &mut dyn Probe,
) -> Result<Report, LoadError> {
    let conns = open_many(
        load.target,
        load.tls.as_ref(),
        "/echo",
        load.connections,
        OPEN_TIMEOUT,
    )
    .await?;
    let window = Window::after(load.warmup, load.duration);
    let latencies = Latencies::default();
    let mut tasks = JoinSet::new();
    let n = conns.len();
    for (i, conn) in conns.into_iter().enumerate() {
        let mut task = Task {
            id: i as u64,
            messages: Messages::new(i as u64, size),
            rng: Rng::new(i as u64 + 1),
            seq: 0,
            expect: 0,
            window,
            recorder: latencies.recorder(),
            tally: Tally::default(),
        };
        match pace {
            Pace::Closed { depth } => tasks.spawn(async move {
                if let Err(e) = task.closed_loop(conn, depth.max(1)).await {
                    task.tally.error = Some(e);
                }
                task.tally
            }),
            Pace::Rate { per_second } => {
                let interval = Duration::from_secs_f64(n as f64 / per_second);
                let first = Instant::now() + interval.mul_f64(i as f64 / n as f64);
                tasks.spawn(async move {
                    if let Err(e) = task.open_loop(conn, first, interval).await {
                        task.tally.error = Some(e);
                    }
                    task.tally
                })
            }
        };
    }
    let mode = match pace {
        Pace::Closed { depth: 0 | 1 } => "rr",
        Pace::Closed { .. } => "pipe",
        Pace::Rate { .. } => "rr-rate",
    };
    let mut report = Report::new(mode, n, load.duration);
    gather(tasks, window, probe, &mut report).await;
    report.latency = latencies.take();
    Ok(report)
}

struct Task {
    id: u64,
    messages: Messages,
    rng: Rng,
    seq: u64,
    expect: u64,
    window: Window,
    recorder: Recorder,
    tally: Tally,
}

impl Task {
    fn send(&mut self, out: &mut Vec<u8>) {
        let mask = self.rng.mask();
        self.messages.write_frame(out, self.seq, mask);
        self.seq += 1;
    }

    fn check(&mut self, h: Header, payload: &[u8]) -> Result<(), LoadError> {
        if h.opcode != OP_BINARY || !h.fin || !self.messages.matches(payload, self.expect) {
            return Err(LoadError::Mismatch {
                conn: self.id,
                seq: self.expect,
            });
        }
        self.expect += 1;
        Ok(())
    }

    /// Counts one verified echo if `at` (its completion, or for open loop its due time) lies
    /// in the window.
    fn count(&mut self, sent: Instant, done: Instant, at: Instant) {
        if self.window.contains(at) {
            self.tally.messages += 1;
            self.recorder.record(done - sent);
        }
    }

    async fn closed_loop(&mut self, conn: Conn, depth: usize) -> Result<(), LoadError> {
        let Conn {
            mut stream,
            mut reader,
        } = conn;
        let mut out = Vec::with_capacity(depth * (self.messages.size() + 14));
        let mut sent_at = VecDeque::with_capacity(depth);
        let now = Instant::now();
        for _ in 0..depth {
            self.send(&mut out);
            sent_at.push_back(now);
        }
        send(&mut stream, &out).await?;
        loop {
            let mut got = 0;
            let done = Instant::now();
            while let Some((h, payload)) = reader.next_frame()? {
                self.check(h, payload)?;
                let sent = sent_at.pop_front().expect("an echo answers a sent message");
                self.count(sent, done, done);
                got += 1;
            }
            let now = Instant::now();
            if now >= self.window.end {
                return Ok(());
            }
            if got > 0 {
                out.clear();
                for _ in 0..got {
                    self.send(&mut out);
                    sent_at.push_back(now);
                }
                send(&mut stream, &out).await?;
            }
            // A read is cancel-safe in tokio: ending it at the window's end loses nothing.
            match tokio::time::timeout_at(self.window.end.into(), reader.fill(&mut stream)).await {
                Ok(Ok(0)) => return Err(LoadError::Closed("while echoes were owed")),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    let oldest = sent_at.front().map_or(Duration::ZERO, |t| t.elapsed());
                    if oldest > GRACE {
                        return Err(LoadError::Timeout("waiting for an echo"));
                    }
                    return Ok(());
                }
            }
        }
    }

    async fn open_loop(
        &mut self,
        conn: Conn,
        first: Instant,
        interval: Duration,
    ) -> Result<(), LoadError> {
        let Conn {
            mut stream,
            mut reader,
        } = conn;
        let (mut rd, mut wr) = stream.split();
        let mut out = Vec::new();
        let mut due = first;
        // (due, start) per message in flight. tokio's timer fires up to a millisecond late:
        // that slack is the client's, so latency runs from the actual send. A send later
        // than TIMER_SLACK (held up behind a blocked write, i.e. by the proxy) runs from
        // when it was due.
        let mut owed: VecDeque<(Instant, Instant)> = VecDeque::new();
        let give_up = tokio::time::Instant::from(self.window.end + GRACE);
        loop {
            if due >= self.window.end && owed.is_empty() {
                return Ok(());
            }
            tokio::select! {
                biased;
                read = reader.fill(&mut rd) => {
                    if read? == 0 {
                        return Err(LoadError::Closed("while echoes were owed"));
                    }
                    let done = Instant::now();
                    while let Some((h, payload)) = reader.next_frame()? {
                        self.check(h, payload)?;
                        let (due, sent) = owed.pop_front().ok_or(LoadError::Protocol(
                            "an echo for a message never sent".into(),
                        ))?;
                        self.count(sent, done, due);
                    }
                }
                _ = tokio::time::sleep_until(due.into()), if due < self.window.end => {
                    out.clear();
                    let now = Instant::now();
                    while due <= now && due < self.window.end {
                        self.send(&mut out);
                        let start = if now - due <= TIMER_SLACK { now } else { due };
                        owed.push_back((due, start));
                        due += interval;
                    }
                    send(&mut wr, &out).await?;
                }
                _ = tokio::time::sleep_until(give_up) => {
                    return Err(LoadError::Timeout("for echoes still owed after the window"));
                }
            }
        }
    }
}
