//! The response to a plain request, or to a refused upgrade: the head made
//! connection-closing, then the body relayed to the end its framing gives, and the
//! connection closed.

use std::cell::Cell;
use std::net::Shutdown;

use tokio_uring::buf::BoundedBuf;

use super::WorkerContext;
use super::client::Client;
use super::pump::{self, Activity, Malformed, Peer};
use super::{Done, Exchange, await_response};
use crate::http::{Framing, HandshakeError, MAX_HEADERS, Parsed, parse_response};
use crate::tunnel::{RelayError, Report, Side};
use crate::uring::stream::Stream;

/// A plain request: the rest of its body flows up while the response head is awaited, then
/// the response flows down to its end. The connection stays open for the next request only
/// if both messages ended where their framing said (the next request's first bytes are then
/// left in `req`); otherwise it closes. A malformed chunked body stops at the bad byte; the
/// client gets `400` unless the response has already begun.
pub(super) async fn respond(
    ctx: &WorkerContext,
    client: &Client,
    upstream: &Stream,
    exchange: Exchange<'_>,
    req: &mut Vec<u8>,
    resp: &mut Vec<u8>,
) -> Result<Done, HandshakeError> {
    let Exchange {
        body_sent,
        mut body,
        consumed,
        to_head,
        set_cookie,
        persistent,
    } = exchange;
    if body.is_done() {
        req.drain(..consumed);
    } else {
        req.clear();
    }
    let activity = Activity::default();
    let answered = Cell::new(false);
    let body_over = Cell::new(false);
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
        body_over.set(true);
        out
    };
    let head = HeadFor {
        to_head,
        set_cookie,
        persistent,
    };
    let down = async {
        let out = response_down(ctx, client, upstream, resp, head, &activity, &answered).await;
        if !body_over.get() {
            // The exchange is over, whatever happened, and the body is not: this ends the
            // body pump (and the connection). The client can still be written to, for an
            // error answer.
            let _ = client.shutdown(Shutdown::Read);
        }
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
    let (status, down, kept) = down?;
    let keep_alive = kept && up.is_ok() && body.is_done() && !idled;
    Ok(Done::Relayed {
        status,
        report: pump::report(plus(up, body_sent), down, idled),
        keep_alive,
    })
}

/// What the response head to the client depends on besides the upstream's head.
#[derive(Clone, Copy)]
pub(super) struct HeadFor<'a> {
    /// The request was `HEAD`: no body, whatever the head says.
    pub to_head: bool,
    /// Header lines to add (the sticky cookie), or empty.
    pub set_cookie: &'a [u8],
    /// The connection may stay open after the response if its framing allows.
    pub persistent: bool,
}

type PumpResult = Result<u64, (u64, RelayError)>;

/// The downstream half of a plain request: interim responses passed on as they are, the final
/// response head (connection-closing unless the connection may persist and the body has a
/// length), then its body. `answered` is set once the client may have received a byte of
/// the final response. Also says whether the head let the connection persist and the body
/// ended where its framing said.
async fn response_down(
    ctx: &WorkerContext,
    client: &Client,
    upstream: &Stream,
    resp: &mut Vec<u8>,
    head_for: HeadFor<'_>,
    activity: &Activity,
    answered: &Cell<bool>,
) -> Result<(u16, PumpResult, bool), HandshakeError> {
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
            return Ok((status, client_failed(source), false));
        }
        resp.drain(..len);
    };
    let mut head = ctx.pool.get();
    let written = write_response_head(resp, len, &mut head, head_for);
    let (copied, mut framing, persistent) = match written {
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
        return Ok((status, client_failed(source), false));
    }
    ctx.metrics().bytes[1].add(copied);
    let down = pump_down(ctx, client, upstream, resp, &mut framing, activity).await;
    let kept = persistent && down.is_ok() && framing.is_done();
    Ok((status, plus(down, copied), kept))
}

/// Relays the rest of a response body from the upstream to the client.
async fn pump_down(
    ctx: &WorkerContext,
    client: &Client,
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
    client: &Client,
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

/// Writes the response head in `resp[..len]` for the client, then the part of what followed
/// it that belongs to its body, into `out`. The head keeps the connection open only if
/// `head_for` allows it and the body has an end other than the upstream's close; its
/// `set_cookie` lines go in, with `Cache-Control: private` unless the head has a
/// `Cache-Control`. Returns the
/// body bytes copied, the framing of the rest, and whether the connection may persist.
/// Err: the head does not say where its body ends in a way wsplice can trust (`502`).
pub(super) fn write_response_head(
    resp: &[u8],
    len: usize,
    out: &mut Vec<u8>,
    head_for: HeadFor<'_>,
) -> Result<(u64, Framing, bool), HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Parsed::Complete(head) = parse_response(&resp[..len], &mut headers)? else {
        return Err(HandshakeError::BadResponse("incomplete response head"));
    };
    let mut framing = head.framing(head_for.to_head)?;
    let persistent = head_for.persistent && framing != Framing::UntilClose;
    let set_cookie = head_for.set_cookie;
    // A shared cache must not hand one client's server cookie to others.
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
    head.write_for_client(out, persistent, &[set_cookie, private]);
    let sent = framing
        .take(&resp[len..])
        .map_err(|_| HandshakeError::BadResponse("malformed chunked body"))?;
    out.extend_from_slice(&resp[len..len + sent]);
    Ok((sent as u64, framing, persistent))
}

/// A pump's result with `n` more bytes, relayed before it started.
fn plus(res: PumpResult, n: u64) -> PumpResult {
    res.map(|m| m + n).map_err(|(m, e)| (m + n, e))
}
