//! The response to a plain request, or to a refused upgrade: the head made
//! connection-closing, then the body relayed until it ends, and the connection closed.

use std::net::Shutdown;

use tokio_uring::buf::BoundedBuf;

use super::WorkerContext;
use super::pump::{self, Activity, Peer};
use super::{Done, await_response};
use crate::http::{HandshakeError, MAX_HEADERS, Parsed, parse_response};
use crate::tunnel::{RelayError, Report, Side};
use crate::uring::stream::Stream;

/// A plain request: the rest of the body flows up while the response head is awaited, then
/// the response flows down until the upstream closes, and the connection ends.
pub(super) async fn respond(
    ctx: &WorkerContext,
    client: &Stream,
    upstream: &Stream,
    [body_sent, body_left]: [u64; 2],
    req: &mut Vec<u8>,
    resp: &mut Vec<u8>,
) -> Result<Done, HandshakeError> {
    let activity = Activity::default();
    let body = async {
        pump::pump(
            Peer {
                stream: client,
                side: Side::Client,
            },
            Peer {
                stream: upstream,
                side: Side::Upstream,
            },
            req,
            body_left,
            &activity,
            &ctx.metrics().bytes[0],
        )
        .await
    };
    let response = async {
        let out = response_down(ctx, client, upstream, resp, &activity).await;
        // The exchange is over, whatever happened: this ends the body pump. The client can
        // still be written to, for an error answer.
        let _ = client.shutdown(Shutdown::Read);
        out
    };
    let ((up, down), idled) = pump::idle_guard(
        std::pin::pin!(async { tokio::join!(body, response) }),
        ctx.shared.config.timeouts.idle,
        &activity,
        || pump::abort(client, upstream),
    )
    .await;
    let (status, down) = down?;
    Ok(Done::Relayed {
        status,
        report: pump::report(plus(up, body_sent), down, idled),
    })
}

type PumpResult = Result<u64, (u64, RelayError)>;

/// The downstream half of a plain request: interim responses passed on as they are, the final
/// response head made connection-closing, then the rest until the upstream closes.
async fn response_down(
    ctx: &WorkerContext,
    client: &Stream,
    upstream: &Stream,
    resp: &mut Vec<u8>,
    activity: &Activity,
) -> Result<(u16, PumpResult), HandshakeError> {
    let client_failed = |source| {
        Err((
            0,
            RelayError {
                side: Side::Client,
                source,
            },
        ))
    };
    resp.clear();
    let (status, len) = loop {
        let (status, len) = await_response(ctx, upstream, resp).await?;
        if status == 101 {
            return Err(HandshakeError::BadSwitch(
                "101 to a request that asked for no upgrade",
            ));
        }
        if !(100..200).contains(&status) {
            break (status, len);
        }
        // 100 Continue, 103 Early Hints: passed on as they are; the final response follows.
        let (res, slice) = client.write_all(std::mem::take(resp).slice(..len)).await;
        *resp = slice.into_inner();
        if let Err(source) = res {
            return Ok((status, client_failed(source)));
        }
        resp.drain(..len);
    };
    let mut head = ctx.pool.get();
    // A plain request's upstream was told to close: its close ends the response.
    let (copied, _) = write_closing_head(resp, len, &mut head, false);
    let (res, head) = client.write_all(head).await;
    ctx.pool.put(head);
    if let Err(source) = res {
        return Ok((status, client_failed(source)));
    }
    ctx.metrics().bytes[1].add(copied);
    let down = pump_down(ctx, client, upstream, resp, u64::MAX, activity).await;
    Ok((status, plus(down, copied)))
}

/// Relays at most `limit` more response bytes from the upstream to the client.
async fn pump_down(
    ctx: &WorkerContext,
    client: &Stream,
    upstream: &Stream,
    resp: &mut Vec<u8>,
    limit: u64,
    activity: &Activity,
) -> PumpResult {
    let from = Peer {
        stream: upstream,
        side: Side::Upstream,
    };
    let to = Peer {
        stream: client,
        side: Side::Client,
    };
    pump::pump(from, to, resp, limit, activity, &ctx.metrics().bytes[1]).await
}

/// Relays the rest of a response (at most `body_left` bytes) to the client after its head
/// was passed on.
pub(super) async fn relay_response(
    ctx: &WorkerContext,
    client: &Stream,
    upstream: &Stream,
    resp: &mut Vec<u8>,
    body_left: u64,
) -> Report {
    let activity = Activity::default();
    let down = pump_down(ctx, client, upstream, resp, body_left, &activity);
    let (down, idled) = pump::idle_guard(
        std::pin::pin!(down),
        ctx.shared.config.timeouts.idle,
        &activity,
        || pump::abort(client, upstream),
    )
    .await;
    pump::report(Ok(0), down, idled)
}

/// Writes the response head in `resp[..len]`, made connection-closing, then what followed it
/// into `out`. When `bounded` and the head gives the body's length, only up to the end of the
/// body. Returns the body bytes copied and how many are still to come (`u64::MAX`: until the
/// upstream closes).
pub(super) fn write_closing_head(
    resp: &[u8],
    len: usize,
    out: &mut Vec<u8>,
    bounded: bool,
) -> (u64, u64) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut body = u64::MAX;
    if let Ok(Parsed::Complete(head)) = parse_response(&resp[..len], &mut headers) {
        head.write_closing(out);
        if bounded {
            body = head.body_len().unwrap_or(u64::MAX);
        }
    }
    let after = &resp[len..];
    let sent = usize::try_from(body).map_or(after.len(), |b| b.min(after.len()));
    out.extend_from_slice(&after[..sent]);
    (sent as u64, body.saturating_sub(sent as u64))
}

/// A pump's result with `n` more bytes, relayed before it started.
fn plus(res: PumpResult, n: u64) -> PumpResult {
    res.map(|m| m + n).map_err(|(m, e)| (m + n, e))
}
