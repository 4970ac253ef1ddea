//! Byte pumps for plain requests and responses (after a non-`101` answer), with an idle
//! watchdog. Tunnels run in [`crate::tunnel`] instead. Frames are never decoded.
//!
//! tokio-uring does not cancel a dropped read, so nothing here drops a pending read: timeouts
//! shut the sockets down, which makes every pending operation complete, and the pumps are
//! always awaited to the end.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::time::Duration;

use tokio_uring::buf::BoundedBuf;

use super::client::Io;
use crate::http::Framing;
use crate::observe::metrics::Meter;
use crate::tunnel::{End, RelayError, Report, Side};
use crate::uring::stream::Stream;

/// Counts completed reads so the idle watchdog can tell a quiet connection from a busy one
/// without reading the clock on every read.
#[derive(Debug, Default)]
pub struct Activity(Cell<u64>);

impl Activity {
    fn touch(&self) {
        self.0.set(self.0.get().wrapping_add(1));
    }
}

/// One endpoint of a pump: the stream and which side it is.
pub struct Peer<'a, S> {
    pub stream: &'a S,
    pub side: Side,
}

/// Copies one body from `src` to `dst`, reusing `buf`, until `framing` says it has ended or
/// `src` closes; bytes after the body are never written, and those that came with its last
/// read are left in `buf`. Returns the
/// bytes copied; on error, the side that failed (a malformed body: [`Malformed`] from `src`).
pub async fn pump<A: Io, B: Io>(
    src: Peer<'_, A>,
    dst: Peer<'_, B>,
    buf: &mut Vec<u8>,
    framing: &mut Framing,
    activity: &Activity,
    bytes: &Meter,
) -> Result<u64, (u64, RelayError)> {
    let mut total = 0u64;
    while !framing.is_done() {
        match copy_once(src, dst, buf, framing).await {
            Ok(0) => break,
            Ok(n) => {
                activity.touch();
                bytes.add(n as u64);
                total += n as u64;
            }
            Err(e) => return Err((total, e)),
        }
    }
    Ok(total)
}

/// One read into `buf`, and the part of it that belongs to the body written on in full.
/// `Ok(0)`: end of stream.
async fn copy_once<A: Io, B: Io>(
    src: Peer<'_, A>,
    dst: Peer<'_, B>,
    buf: &mut Vec<u8>,
    framing: &mut Framing,
) -> Result<usize, RelayError> {
    let mut owned = std::mem::take(buf);
    owned.clear();
    let want = framing.read_limit(owned.capacity());
    let (res, slice) = src.stream.read(owned.slice(..want)).await;
    *buf = slice.into_inner();
    let n = match res {
        Ok(0) => return Ok(0),
        Ok(n) => n,
        Err(source) => {
            let side = src.side;
            return Err(RelayError { side, source });
        }
    };
    let n = framing.take(&buf[..n]).map_err(|reason| RelayError {
        side: src.side,
        source: io::Error::new(io::ErrorKind::InvalidData, Malformed(reason)),
    })?;
    let (res, slice) = dst.stream.write_all(std::mem::take(buf).slice(..n)).await;
    *buf = slice.into_inner();
    if framing.is_done() {
        // What the read took past the body stays in `buf`: the next message's start.
        buf.drain(..n);
    }
    res.map(|()| n).map_err(|source| RelayError {
        side: dst.side,
        source,
    })
}

/// A body whose framing is broken, as the error a pump ends with.
#[derive(Debug, thiserror::Error)]
#[error("malformed body: {0}")]
pub struct Malformed(pub &'static str);

impl Malformed {
    /// The reason, when `e` is a pump's malformed-body error.
    pub fn reason(e: &RelayError) -> Option<&'static str> {
        let inner = e.source.get_ref()?;
        inner.downcast_ref::<Malformed>().map(|m| m.0)
    }
}

/// Shuts both sockets down both ways, which completes every pending operation on them.
pub fn abort(client: &impl Io, upstream: &Stream) {
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
}

/// Runs `work` to completion; if no read completes for `idle`, calls `on_idle` (which must
/// make `work` finish, e.g. [`abort`]) and reports that the idle timeout fired. `work` is
/// pinned by the caller, so the (large) relay future is stored once, not moved in here.
/// The check runs four times per period, so a quiet connection closes within 1.25 x `idle`.
pub async fn idle_guard<F: Future>(
    mut work: Pin<&mut F>,
    idle: Option<Duration>,
    activity: &Activity,
    on_idle: impl FnOnce(),
) -> (F::Output, bool) {
    let Some(idle) = idle else {
        return (work.await, false);
    };
    let tick = idle / 4;
    let mut seen = activity.0.get();
    let mut quiet_ticks = 0;
    loop {
        tokio::select! {
            biased;
            out = &mut work => return (out, false),
            _ = tokio::time::sleep(tick) => {
                let now = activity.0.get();
                if now == seen {
                    quiet_ticks += 1;
                } else {
                    seen = now;
                    quiet_ticks = 0;
                }
                if quiet_ticks >= 4 {
                    on_idle();
                    return (work.await, true);
                }
            }
        }
    }
}

/// Builds the report from the two directions' results.
pub fn report(
    up: Result<u64, (u64, RelayError)>,
    down: Result<u64, (u64, RelayError)>,
    idled: bool,
) -> Report {
    let (client_to_upstream, up_err) = split(up);
    let (upstream_to_client, down_err) = split(down);
    let end = match (idled, up_err.or(down_err)) {
        (true, _) => End::Idle,
        (false, Some(e)) => End::Error(e),
        (false, None) => End::Closed,
    };
    Report {
        client_to_upstream,
        upstream_to_client,
        end,
    }
}

fn split(r: Result<u64, (u64, RelayError)>) -> (u64, Option<RelayError>) {
    match r {
        Ok(n) => (n, None),
        Err((n, e)) => (n, Some(e)),
    }
}

impl<S> Clone for Peer<'_, S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for Peer<'_, S> {}
