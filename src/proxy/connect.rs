//! Connecting a route's upstream group: its servers from the balancer's choice on, one
//! attempt each, every outcome fed back into the group's passive health.

use std::net::SocketAddr;
use std::time::Duration;

use tracing::warn;

use crate::http::HandshakeError;
use crate::observe::metrics::Metrics;
use crate::upstream::Group;
use crate::uring::connect::{ConnectError, connect};
use crate::uring::stream::Stream;

/// Tries the group's servers, weighted round-robin choice first, until one accepts; each
/// outcome feeds the group's passive health.
pub async fn connect_group(
    group: &Group,
    timeout: Option<Duration>,
    metrics: &Metrics,
) -> Result<(Stream, SocketAddr), HandshakeError> {
    let mut all_timed_out = true;
    for (index, addr) in group.balancer.pick() {
        match connect(addr, timeout).await {
            Ok(stream) => {
                group.balancer.record_success(index);
                return Ok((stream, addr));
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
