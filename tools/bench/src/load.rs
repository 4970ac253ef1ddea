//! The load modes. Each opens its connections first, then counts only what completes inside
//! a [`Window`](crate::report::Window) after a warm-up, and calls the caller's probe at the
//! window's edges.
//! - [`echo`]: `rr` (one message in flight per connection), `pipe` (K in flight) and the
//!   open-loop constant-rate variant of `rr` (latency from the intended send time).
//! - [`handshake`]: connect, upgrade, close handshake, in a loop.
//! - [`bulk`]: raw bytes after the `101` towards the sink, confirmed by the sink's counts.
//! - [`idle`]: hold many upgraded connections, then check that each still echoes.

pub mod bulk;
pub mod echo;
pub mod handshake;
pub mod idle;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinSet;

use crate::report::{Probe, Report, Tally, Window};

/// How long an upgrade may take while connections are opened.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after the window a run waits for answers still owed before calling them lost.
pub const GRACE: Duration = Duration::from_secs(3);

/// What every mode is given.
#[derive(Debug, Clone)]
pub struct Load {
    /// The proxy (or, for the "direct" ceiling, the upstream itself).
    pub target: SocketAddr,
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// wss: a TLS handshake before each upgrade (None: plain ws).
    pub tls: Option<crate::tls::Client>,
}

/// Waits for every connection task while the probe is driven at the window's edges.
async fn gather(
    mut tasks: JoinSet<Tally>,
    window: Window,
    probe: &mut dyn Probe,
    report: &mut Report,
) {
    let collect = async {
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(tally) => report.add(tally),
                Err(e) => report.error(format!("connection task failed: {e}")),
            }
        }
    };
    tokio::join!(window.drive(probe), collect);
}
