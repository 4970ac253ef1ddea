//! How a relay ended and what it moved, with the side that failed: the tunnel loop and the
//! plain-response pumps report the same way, for the access log and the metrics.

/// Which side of the proxy an I/O error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Upstream => "upstream",
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{side}: {source}")]
pub struct RelayError {
    pub side: Side,
    #[source]
    pub source: std::io::Error,
}

/// Why a relay ended.
#[derive(Debug)]
pub enum End {
    /// Both directions reached end of stream (or the response was complete).
    Closed,
    /// No byte moved in either direction for `timeouts.idle`.
    Idle,
    Error(RelayError),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Closed => f.write_str("closed"),
            End::Idle => f.write_str("idle timeout"),
            End::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// What a relay moved and how it ended.
#[derive(Debug)]
pub struct Report {
    pub client_to_upstream: u64,
    pub upstream_to_client: u64,
    pub end: End,
}
