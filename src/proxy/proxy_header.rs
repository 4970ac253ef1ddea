//! The PROXY header a load balancer writes first on a `proxy_protocol` listener: read within
//! `timeouts.handshake`, exactly up to its end, so that what follows it (a request head, or a
//! TLS hello) is the first thing the next stage reads from the same buffer.

use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use tokio_uring::buf::BoundedBuf;

use crate::http::Parsed;
use crate::http::proxy_protocol::{self, Header};
use crate::observe::metrics::ProxyRefusal;
use crate::uring::deadline::with_deadline;
use crate::uring::stream::Stream;

/// A header taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// The client the header names; `None` for a `LOCAL` (or `UNKNOWN`) header: the balancer's
    /// own connection, served as the TCP peer.
    pub source: Option<SocketAddr>,
    /// The address the client connected to (the balancer's listener), for a header that names
    /// a client.
    pub destination: Option<SocketAddr>,
    /// Bytes after the header already read: they are at the start of the buffer.
    pub extra: usize,
}

/// Why no header was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Invalid(#[from] proxy_protocol::Error),
    #[error("the peer closed before the whole PROXY header ({0} bytes read)")]
    Closed(usize),
    #[error("no whole PROXY header within timeouts.handshake ({0} bytes read)")]
    TimedOut(usize),
}

impl Failure {
    pub fn reason(&self) -> ProxyRefusal {
        match self {
            Failure::Invalid(proxy_protocol::Error::Missing) => ProxyRefusal::Missing,
            Failure::Invalid(_) => ProxyRefusal::Malformed,
            Failure::Closed(_) => ProxyRefusal::Truncated,
            Failure::TimedOut(_) => ProxyRefusal::Timeout,
        }
    }
}

/// Reads the PROXY header at the start of `client` into `buf` (empty, with room for
/// [`proxy_protocol::MAX_HEADER`] bytes), within `limit`. On success the header is gone from
/// `buf` and what came after it is left there, [`Received::extra`] bytes.
pub async fn read(
    client: &Stream,
    buf: &mut Vec<u8>,
    limit: Option<Duration>,
) -> Result<Received, Failure> {
    let (res, timed_out) = with_deadline(limit, read_header(client, buf), || {
        let _ = client.shutdown(Shutdown::Read);
    })
    .await;
    match res {
        Err(Failure::Closed(n)) if timed_out => Err(Failure::TimedOut(n)),
        other => other,
    }
}

async fn read_header(client: &Stream, buf: &mut Vec<u8>) -> Result<Received, Failure> {
    buf.clear();
    loop {
        if let Parsed::Complete((header, len)) = proxy_protocol::parse(buf)? {
            buf.drain(..len);
            let (source, destination) = match header {
                Header::Proxy {
                    source,
                    destination,
                } => (Some(source), Some(destination)),
                Header::Local => (None, None),
            };
            return Ok(Received {
                source,
                destination,
                extra: buf.len(),
            });
        }
        let filled = buf.len();
        if filled == buf.capacity() {
            buf.reserve(proxy_protocol::MAX_HEADER);
        }
        let (res, slice) = client.read(std::mem::take(buf).slice(filled..)).await;
        *buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return Err(Failure::Closed(filled)),
            Ok(_) => {}
        }
    }
}
