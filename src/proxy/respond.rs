//! The response to a plain request, or to a refused upgrade: the head made
//! connection-closing, then the body relayed to the end its framing gives, and the
//! connection closed.

use std::cell::Cell;
use std::net::Shutdown;

use tokio_uring::buf::BoundedBuf;

use super::WorkerContext;
use super::pump::{self, Activity, Malformed, Peer};
use super::{Done, await_response};
use crate::http::{Framing, HandshakeError, MAX_HEADERS, Parsed, parse_response};
use crate::tunnel::{RelayError, Report, Side};
use crate::uring::stream::Stream;

/// A plain request: the rest of its body flows up while the response head is awaited, then
/// the response flows down to its end, and the connection closes. A malformed chunked body
/// stops at the bad byte; the client gets `400` unless the response has already begun.
/// `set_cookie` (header lines) goes into the final response's head.
#[allow(clippy::too_many_arguments)]
pub(super) async fn respond(
    ctx: &WorkerContext,
    client: &Stream,
    upstream: &Stream,
    (body_sent, mut body): (u64, Framing),
    to_head: bool,
    set_cookie: &[u8],
    req: &mut Vec<u8>,
    resp: &mut Vec<u8>,
) -> Result<Done, HandshakeError> {
    let activity = Activity::default();
    let answered = Cell::new(false);
    let up = async {
        let out = pump::pump(
            Peer {
                stream: client,
                side: Side::Client,
            },
            Peer {
                stream: upstream,
                side: Side::Upstream,
            },
            req,
            &mut body,
            &activity,
            &ctx.metrics().bytes[0],
        )
        .await;
        if let Err((_, e)) = &out
            && Malformed::reason(e).is_some()
        {
            // Ends the exchange: the upstream has an unfinished request, and the client
            // can still be told why unless its answer has begun.
            let _ = upstream.shutdown(Shutdown::Both);
            if answered.get() {
                let _ = client.shutdown(Shutdown::Both);
            }
        }
        out
    };
    let down = async {
        let head = (to_head, set_cookie);
        let out = response_down(ctx, client, upstream, resp, head, &activity, &answered).await;
        // The exchange is over, whatever happened: this ends the body pump. The client can
        // still be written to, for an error answer.
        let _ = client.shutdown(Shutdown::Read);
        out
    };
    let ((up, down), idled) = pump::idle_guard(
        std::pin::pin!(async { tokio::join!(up, down) }),
        ctx.shared.config.timeouts.idle,
        &activity,
        || pump::abort(client, upstream),
    )
    .await;
    if let Err((_, e)) = &up
        && let Some(reason) = Malformed::reason(e)
        && !answered.get()
    {
        return Err(HandshakeError::BadBody(reason));
    }
    let (status, down) = down?;
    Ok(Done::Relayed {
        status,
        report: pump::report(plus(up, body_sent), down, idled),
    })
}

type PumpResult = Result<u64, (u64, RelayError)>;

/// The downstream half of a plain request: interim responses passed on as they are, the final
/// response head made connection-closing, then its body. `answered` is set once the client
/// may have received a byte of the final response.
async fn response_down(
    ctx: &WorkerContext,
    client: &Stream,
    upstream: &Stream,
    resp: &mut Vec<u8>,
    (to_head, set_cookie): (bool, &[u8]),
    activity: &Activity,
    answered: &Cell<bool>,
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
    let written = write_closing_head(resp, len, &mut head, to_head, set_cookie);
    let (copied, mut framing) = match written {
        Ok(written) => written,
        Err(e) => {
            ctx.pool.put(head);
            return Err(e);
        }
    };
    answered.set(true);
    let (res, head) = client.write_all(head).await;
    ctx.pool.put(head);
    if let Err(source) = res {
        return Ok((status, client_failed(source)));
    }
    ctx.metrics().bytes[1].add(copied);
    let down = pump_down(ctx, client, upstream, resp, &mut framing, activity).await;
    Ok((status, plus(down, copied)))
}

/// Relays the rest of a response body from the upstream to the client.
async fn pump_down(
    ctx: &WorkerContext,
    client: &Stream,
    upstream: &Stream,
    resp: &mut Vec<u8>,
    framing: &mut Framing,
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
    pump::pump(from, to, resp, framing, activity, &ctx.metrics().bytes[1]).await
}

/// Relays the rest of a response body to the client after its head was passed on.
pub(super) async fn relay_response(
    ctx: &WorkerContext,
    client: &Stream,
    upstream: &Stream,
    resp: &mut Vec<u8>,
    mut framing: Framing,
) -> Report {
    let activity = Activity::default();
    let down = pump_down(ctx, client, upstream, resp, &mut framing, &activity);
    let (down, idled) = pump::idle_guard(
        std::pin::pin!(down),
        ctx.shared.config.timeouts.idle,
        &activity,
        || pump::abort(client, upstream),
    )
    .await;
    pump::report(Ok(0), down, idled)
}

/// Writes the response head in `resp[..len]`, made connection-closing, then the part of what
/// followed it that belongs to its body, into `out`. `to_head`: the request was `HEAD`.
/// `set_cookie`: header lines to add, with `Cache-Control: private` unless the head has a
/// `Cache-Control` (a shared cache must not hand one client's server cookie to others).
/// Returns the body bytes copied and the framing of the rest. Err: the head does not say
/// where its body ends in a way wsplice can trust (`502`).
pub(super) fn write_closing_head(
    resp: &[u8],
    len: usize,
    out: &mut Vec<u8>,
    to_head: bool,
    set_cookie: &[u8],
) -> Result<(u64, Framing), HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Parsed::Complete(head) = parse_response(&resp[..len], &mut headers)? else {
        return Err(HandshakeError::BadResponse("incomplete response head"));
    };
    let mut framing = head.framing(to_head)?;
    let private: &[u8] = if set_cookie.is_empty()
        || head
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("cache-control"))
    {
        b""
    } else {
        b"Cache-Control: private\r\n"
    };
    head.write_closing(out, &[set_cookie, private]);
    let sent = framing
        .take(&resp[len..])
        .map_err(|_| HandshakeError::BadResponse("malformed chunked body"))?;
    out.extend_from_slice(&resp[len..len + sent]);
    Ok((sent as u64, framing))
}

/// A pump's result with `n` more bytes, relayed before it started.
fn plus(res: PumpResult, n: u64) -> PumpResult {
    res.map(|m| m + n).map_err(|(m, e)| (m + n, e))
}
