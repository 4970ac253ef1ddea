//! Connecting a route's upstream group: its servers from the balancer's choice on, one
//! attempt each, every outcome fed back into the group's passive health.

use std::time::Duration;

use tracing::warn;

use crate::http::HandshakeError;
use crate::observe::metrics::Metrics;
use crate::upstream::balancer::Affinity;
use crate::upstream::balancer::least_conn::Open;
use crate::upstream::{Group, UpstreamAddr};
use crate::uring::connect::{ConnectError, connect};
use crate::uring::stream::Stream;

/// An upstream connection and what the connection keeps of its choice.
pub struct Connected {
    pub stream: Stream,
    pub addr: UpstreamAddr,
    /// The server's index in the group.
    pub index: usize,
    /// Counts the connection against the server (`least_conn`) until dropped.
    pub open: Open,
}

/// Tries the group's servers, the balancer's choice for `affinity` first, until one accepts;
/// each outcome feeds the group's passive health. Each attempt counts against its server from
/// its start, so connects in progress weigh in `least_conn` too.
pub async fn connect_group(
    group: &Group,
    affinity: &Affinity,
    timeout: Option<Duration>,
    metrics: &Metrics,
) -> Result<Connected, HandshakeError> {
    let mut all_timed_out = true;
    for (index, addr) in group.balancer.pick(affinity) {
        let open = group.balancer.open(index);
        match connect(addr, timeout).await {
            Ok(stream) => {
                group.balancer.record_success(index);
                return Ok(Connected {
                    stream,
                    addr: addr.clone(),
                    index,
                    open,
                });
            }
            Err(ConnectError::NoDescriptor(e)) => {
                warn!(upstream = %addr, group = %group.name, "cannot connect: {e}");
                return Err(HandshakeError::OutOfFiles);
            }
            Err(e) => {
                all_timed_out &= matches!(e, ConnectError::TimedOut);
                metrics.connect_failed(addr);
                warn!(upstream = %addr, group = %group.name, "connect failed: {e}");
                if group.balancer.record_failure(index) {
                    let health = group.balancer.health();
                    warn!(
                        upstream = %addr,
                        group = %group.name,
                        "marked down for {} after {} failed connects (max_fails)",
                        humantime::format_duration(health.fail_timeout),
                        health.max_fails
                    );
                }
            }
        }
    }
    Err(if all_timed_out {
        HandshakeError::UpstreamTimeout
    } else {
        HandshakeError::UpstreamFailed
    })
}
