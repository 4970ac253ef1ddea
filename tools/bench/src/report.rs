//! What one load run measured, and the measurement window it counts within: connection setup
//! and a warm-up come first and are not counted; a [`Probe`] is called at the window's edges
//! so a caller can read the proxy's CPU time or memory at exactly those instants.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::client::LoadError;

/// Called at the start and the end of the measurement window.
pub trait Probe {
    fn start(&mut self) {}
    fn end(&mut self) {}
}

/// A probe that does nothing.
#[derive(Debug, Default)]
pub struct NoProbe;

impl Probe for NoProbe {}

/// The counted interval of a run.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    /// A window that opens after `warmup` from now and lasts `duration`.
    pub fn after(warmup: Duration, duration: Duration) -> Self {
        let start = Instant::now() + warmup;
        Window {
            start,
            end: start + duration,
        }
    }

    pub fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }

    /// Calls the probe at the window's edges (await this beside the load).
    pub async fn drive(self, probe: &mut dyn Probe) {
        tokio::time::sleep_until(self.start.into()).await;
        probe.start();
        tokio::time::sleep_until(self.end.into()).await;
        probe.end();
    }
}

/// A latency histogram in nanoseconds, 1 ns to 100 s at three significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid bounds")
}

/// One run's shared latency histogram; each connection batches its samples locally, so
/// hundreds of connections share one histogram without contending on every message.
#[derive(Debug, Clone)]
pub struct Latencies(Arc<Mutex<Histogram<u64>>>);

impl Default for Latencies {
    fn default() -> Self {
        Latencies(Arc::new(Mutex::new(histogram())))
    }
}

impl Latencies {
    pub fn recorder(&self) -> Recorder {
        Recorder {
            shared: self.clone(),
            samples: Vec::with_capacity(Recorder::BATCH),
        }
    }

    pub fn take(&self) -> Histogram<u64> {
        std::mem::replace(&mut self.0.lock().expect("not poisoned"), histogram())
    }
}

/// A connection's sample batch, flushed into the shared histogram when full and on drop.
#[derive(Debug)]
pub struct Recorder {
    shared: Latencies,
    samples: Vec<u64>,
}

impl Recorder {
    const BATCH: usize = 256;

    pub fn record(&mut self, latency: Duration) {
        self.samples.push(latency.as_nanos().max(1) as u64);
        if self.samples.len() == Self::BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let mut h = self.shared.0.lock().expect("not poisoned");
        for &s in &self.samples {
            h.saturating_record(s);
        }
        self.samples.clear();
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.flush();
    }
}

/// What a connection task counted inside the window.
#[derive(Debug, Default)]
pub struct Tally {
    pub messages: u64,
    pub bytes: u64,
    pub error: Option<LoadError>,
}

/// The result of one run.
#[derive(Debug)]
pub struct Report {
    pub mode: &'static str,
    pub connections: usize,
    pub window: Duration,
    /// Verified echoes (rr, pipe, idle) or completed handshakes.
    pub messages: u64,
    /// Bytes the sink confirmed (bulk).
    pub bytes: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Nanoseconds.
    pub latency: Histogram<u64>,
}

impl Report {
    pub fn new(mode: &'static str, connections: usize, window: Duration) -> Self {
        Report {
            mode,
            connections,
            window,
            messages: 0,
            bytes: 0,
            errors: 0,
            first_error: None,
            latency: histogram(),
        }
    }

    pub fn add(&mut self, tally: Tally) {
        self.messages += tally.messages;
        self.bytes += tally.bytes;
        if let Some(e) = tally.error {
            self.error(e.to_string());
        }
    }

    pub fn error(&mut self, what: String) {
        self.errors += 1;
        self.first_error.get_or_insert(what);
    }

    pub fn per_second(&self) -> f64 {
        self.messages as f64 / self.window.as_secs_f64()
    }

    pub fn mb_per_second(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.window.as_secs_f64()
    }

    /// The latency at quantile `q` (0..=1) in microseconds; 0 without samples.
    pub fn micros(&self, q: f64) -> f64 {
        if self.latency.is_empty() {
            return 0.0;
        }
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} connections, {:.2} s: ",
            self.mode,
            self.connections,
            self.window.as_secs_f64()
        )?;
        if self.bytes > 0 || self.mode == "bulk" {
            write!(
                f,
                "{:.1} MB/s ({} bytes confirmed)",
                self.mb_per_second(),
                self.bytes
            )?;
        } else {
            write!(f, "{:.0}/s ({} verified)", self.per_second(), self.messages)?;
        }
        if !self.latency.is_empty() {
            write!(
                f,
                ", latency us p50 {:.1} p90 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}",
                self.micros(0.5),
                self.micros(0.9),
                self.micros(0.99),
                self.micros(0.999),
                self.latency.max() as f64 / 1000.0
            )?;
        }
        write!(f, ", {} errors", self.errors)?;
        if let Some(e) = &self.first_error {
            write!(f, " (first: {e})")?;
        }
        Ok(())
    }
}
