//! One client connection from accept to close: read and route the request head, connect an
//! upstream, pass the rewritten head, and then either open the tunnel (only after a real
//! `101`) or relay one response and close.

use std::net::{Shutdown, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_uring::buf::BoundedBuf;
use tracing::{debug, info, warn};

use crate::http::head::fields_end;
use crate::http::origin;
use crate::http::proxy_protocol;
use crate::http::websocket::{self, Accept, Expected};
use crate::http::{
    Body, ClientInfo, Framing, HandshakeError, HeadScan, MAX_HEADERS, Parsed, RequestHead,
    parse_request, parse_response,
};
use crate::observe::access_log;
use crate::observe::metrics::{Limit, ProxyRefusal, TlsHandshake, Upgrade};
use crate::tunnel::{RelayError, Report, Side};
use crate::upstream::balancer::Affinity;
use crate::upstream::balancer::least_conn::Open;
use crate::upstream::{UpstreamAddr, UpstreamTable};
use crate::uring::deadline::with_deadline;
use crate::uring::stream::Stream;

pub mod client;
mod connect;
mod context;
mod handoff;
pub mod limits;
pub mod proxy_header;
mod pump;
mod respond;

use client::{Client, HandshakeFailure, Io};
use connect::connect_group;
pub use context::{Shared, Slot, WorkerContext};
use respond::{HeadFor, relay_response, respond, write_response_head};

/// What the request head told us.
struct Request {
    head_len: usize,
    /// For an upgrade: what the upstream's `101` must switch to.
    upgrade: Option<Switch>,
    route: usize,
    body: Body,
    /// The method is `HEAD`: the response has no body whatever its head says.
    to_head: bool,
    /// The client may send another request after this one's response.
    persistent: bool,
    /// What the head brings to the upstream choice (hash key, sticky cookie).
    affinity: Affinity,
    /// The upstream table the request was routed with: one load per request, and the
    /// affinity and the server choice read the same groups.
    table: Arc<UpstreamTable>,
    /// The client this request is from, as wsplice reports it (see [`ClientInfo::client`]).
    client: SocketAddr,
    /// The client came over https (here, or to a trusted proxy that says so): a sticky
    /// cookie gets `Secure`.
    https: bool,
}

#[derive(Clone, Copy)]
enum Switch {
    WebSocket(Accept),
    /// `extra_upgrades[token]` of route `route`.
    Listed {
        route: usize,
        token: usize,
    },
}

/// A plain request on its way: what of its body has gone up, and how its connection may go
/// on.
struct Exchange<'a> {
    /// Body bytes that went up with the head.
    body_sent: u64,
    /// The rest of the body.
    body: Framing,
    /// Bytes of the request buffer the head and those body bytes took; what follows them,
    /// once the body is complete, is the start of the next request.
    consumed: usize,
    to_head: bool,
    /// Header lines for the response head (the sticky cookie), or empty.
    set_cookie: &'a [u8],
    /// The connection may carry another request after this one's response.
    persistent: bool,
}

/// How a connection that got past the handshake ended.
enum Done {
    /// The client closed before sending a whole head; nothing to answer.
    ClientLeft,
    /// A response was relayed (a plain request, or a refused upgrade) and the exchange is
    /// over. `keep_alive`: both messages ended where their framing said, and the connection
    /// waits for the next request, whose first bytes may already be in the request buffer.
    Relayed {
        status: u16,
        report: Report,
        keep_alive: bool,
    },
    /// The upstream switched protocols: the tunnel takes both streams. `early` counts the
    /// bytes that came with the heads [client->upstream, upstream->client], already relayed.
    Switched { upstream: Stream, early: [u64; 2] },
}

/// What the access log and the metrics learn about a connection on the way.
#[derive(Debug)]
struct Trace {
    /// The client as wsplice reports it: decided per connection (the peer, a PROXY header's
    /// source), or per request (a trusted proxy's `X-Forwarded-For`).
    client: SocketAddr,
    /// A route index; u32 keeps the tunnel's table entry within its size.
    route: Option<u32>,
    /// The server that took the connection. A unix socket's path is shared with the table
    /// (an `Arc`), not copied, so the entry stays as small as with a TCP address.
    upstream: Option<UpstreamAddr>,
    upgrade: bool,
    /// A `wss://` tunnel: counted in `HandoffState::wss_tunnels`, never handed over.
    wss: bool,
    /// Counts the connection against its upstream server (`least_conn`) for as long as the
    /// connection, tunnel included, lives.
    open: Option<Open>,
}

impl Trace {
    fn new(client: SocketAddr) -> Self {
        Trace {
            client,
            route: None,
            upstream: None,
            upgrade: false,
            wss: false,
            open: None,
        }
    }
}

/// Serves one accepted client connection: its requests in turn (plain ones may keep the
/// connection open for the next), until one upgrades, which hands both streams to the
/// worker's tunnel loop, or the connection closes. `slot` is its place under
/// `max_connections`, counted against its client address too unless that is still to be
/// learnt: from a PROXY header first (`proxy_protocol`), or from a trusted proxy's first
/// request.
pub async fn serve(
    ctx: Rc<WorkerContext>,
    client: Stream,
    mut info: ClientInfo,
    mut slot: Slot,
    proxy_protocol: bool,
) {
    // TCP_NODELAY came with the socket: accepted sockets inherit it from the listener
    // (`server::listener`).
    // A TLS handshake reads into a buffer of its own: the request buffer comes after it, so
    // a connection costs one buffer whatever it sends first.
    let mut a = if proxy_protocol || !info.tls {
        ctx.pool.get()
    } else {
        Vec::new()
    };
    if proxy_protocol {
        let started = Instant::now();
        if let Err(why) = take_proxy_header(&ctx, &client, &mut info, &mut a).await {
            ctx.metrics().proxy_refused(why);
            let end = Closing {
                trace: Trace::new(info.peer),
                started,
                _slot: Some(slot),
            };
            let reason = format!("proxy protocol: {}", why.label());
            end.record(&ctx, 0, None, Some(&reason));
            ctx.pool.put(a);
            return;
        }
        // Counted now that the client is known, and before a byte of a request is read.
        if !slot.count_client(info.client.ip()) {
            ctx.metrics().limited(Limit::Connections);
            ctx.pool.put(a);
            let err = HandshakeError::ClientConnections;
            turn_away(ctx, client, info, err, SHORT_LINGER, Some(slot)).await;
            return;
        }
    }
    let tls = ctx.shared.tls.as_ref().filter(|_| info.tls);
    let client = match tls.map(crate::tls::Tls::server_config) {
        None => Client::plain(client),
        // Bytes that came after a PROXY header are the start of the TLS handshake.
        Some(config) => match handshake(&ctx, client, config, &info, &mut a).await {
            Some(client) => client,
            None => {
                ctx.pool.put(a);
                return;
            }
        },
    };
    if a.capacity() == 0 {
        a = ctx.pool.get();
    }
    // Taken from the pool once the head is complete, so a slow client holds one buffer.
    let mut b = Vec::new();
    let metrics = ctx.metrics();
    for served in 0.. {
        let started = Instant::now();
        let mut trace = Trace::new(info.client);
        let outcome = proxy(
            &ctx, &client, &info, served, &mut a, &mut b, &mut trace, &mut slot,
        )
        .await;
        if !matches!(outcome, Ok(Done::Switched { .. })) {
            // The upstream connection is closed: it no longer counts against its server,
            // though the client's may linger or wait for its next request.
            trace.open = None;
        }
        let end = Closing {
            trace,
            started,
            _slot: None,
        };
        let (status, report) = match outcome {
            Ok(Done::Switched { upstream, early }) => {
                ctx.pool.put(a);
                ctx.pool.put(b);
                metrics.response(101);
                metrics.upgrade(Upgrade::Tunnelled);
                let end = Closing {
                    _slot: Some(slot),
                    ..end
                };
                // From here on, the tunnel is an entry in the worker's tunnel loop: no task of
                // its own, and nothing of the handshake's state.
                open_tunnel(&ctx, client, upstream, early, end).await;
                return;
            }
            // An idle keep-alive connection that closes (or is closed) is not a request.
            Ok(Done::ClientLeft) if served > 0 => break,
            Ok(Done::ClientLeft) => {
                debug!(client = %info.client, peer = %info.peer, "client closed before a complete request head");
                (0, None)
            }
            Ok(Done::Relayed {
                status,
                report,
                keep_alive,
            }) => {
                if end.trace.upgrade {
                    metrics.upgrade(Upgrade::Refused);
                }
                if keep_alive {
                    metrics.response(status);
                    end.log(&ctx, status, Some(&report));
                    // The next request's head buffer comes from the pool when it is complete.
                    ctx.pool.put(std::mem::take(&mut b));
                    continue;
                }
                linger(&client, &mut a, LINGER).await;
                (status, Some(report))
            }
            Err(e) => {
                let who = end.trace.client;
                if e.status() >= 500 {
                    warn!(client = %who, peer = %info.peer, status = e.status(), "{e}");
                } else {
                    info!(client = %who, peer = %info.peer, status = e.status(), "{e}");
                }
                if end.trace.upgrade || asked_for_upgrade(&a) {
                    metrics.upgrade(
                        if end.trace.upstream.is_some() || e.status() == 502 || e.status() == 504 {
                            Upgrade::UpstreamFailed
                        } else {
                            Upgrade::Rejected
                        },
                    );
                }
                reject(&client, e, &mut a, LINGER).await;
                (e.status(), None)
            }
        };
        if status != 0 {
            metrics.response(status);
        }
        end.log(&ctx, status, report.as_ref());
        break;
    }
    ctx.pool.put(a);
    ctx.pool.put(b);
    drop(slot);
}

/// Requests one client connection may carry (nginx's `keepalive_requests` default); the
/// last one's response closes it.
const MAX_REQUESTS: usize = 1000;

/// What is known when a connection closes, for its log line.
struct Closing {
    trace: Trace,
    started: Instant,
    /// Held until the connection's last task ends (none when turned away out of fds).
    _slot: Option<Slot>,
}

impl Closing {
    fn log(&self, ctx: &WorkerContext, status: u16, report: Option<&Report>) {
        self.record(ctx, status, report, None);
    }

    /// Logs the connection; `reason`, when given, is its `end` (a connection closed
    /// unanswered for a reason of its own).
    fn record(
        &self,
        ctx: &WorkerContext,
        status: u16,
        report: Option<&Report>,
        reason: Option<&str>,
    ) {
        let (up, down) = report.map_or((0, 0), |r| (r.client_to_upstream, r.upstream_to_client));
        let end = reason.map(str::to_string).unwrap_or_else(|| {
            report.map_or_else(
                || {
                    if status == 0 {
                        "client left".to_string()
                    } else {
                        "answered by wsplice".to_string()
                    }
                },
                |r| r.end.to_string(),
            )
        });
        let route = self.trace.route.map_or("-", |r| {
            ctx.shared.config.routes.get(r as usize).path.as_str()
        });
        let duration = self.started.elapsed();
        debug!(
            client = %self.trace.client,
            route,
            upstream = self.trace.upstream.as_ref().map(tracing::field::display),
            status,
            client_to_upstream = up,
            upstream_to_client = down,
            duration_ms = duration.as_millis() as u64,
            end,
            "connection closed"
        );
        if let Some(log) = &ctx.shared.access_log {
            let entry = access_log::Entry {
                client: self.trace.client,
                route,
                upstream: self
                    .trace
                    .upstream
                    .as_ref()
                    .map(|u| u as &dyn std::fmt::Display),
                status,
                client_to_upstream: up,
                upstream_to_client: down,
                duration,
                end: &end,
            };
            if !log.record(&entry) {
                ctx.shared
                    .metrics
                    .access_log_dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// What a tunnel gives back to its connection when it ends: the log line's facts and when
/// it opened. Kept in the tunnel's table entry, so it stays small.
pub struct TunnelEnd {
    end: Closing,
    opened: Instant,
}

impl TunnelEnd {
    /// Counts and logs a tunnel that ended (called by the worker's tunnel loop).
    pub fn finish(self, ctx: &WorkerContext, report: Report) {
        ctx.metrics().tunnels.sub(1);
        if self.end.trace.wss {
            ctx.shared
                .handoff
                .wss_tunnels
                .fetch_sub(1, Ordering::SeqCst);
        }
        ctx.metrics().tunnel_ended(self.opened.elapsed());
        self.end.log(ctx, 101, Some(&report));
    }
}

/// Hands an upgraded connection to the worker's tunnel loop, which relays it from the
/// upstream's `101` to both sides' close.
async fn open_tunnel(
    ctx: &WorkerContext,
    client: Client,
    upstream: Stream,
    mut early: [u64; 2],
    mut end: Closing,
) {
    let (client, handover) = client.into_parts();
    let mut tls = None;
    if let Some(handover) = handover {
        if !handover.plain.is_empty() {
            // Opened before the switch but beyond the request buffer: it goes first.
            let n = handover.plain.len() as u64;
            if upstream.write_all(handover.plain).await.0.is_err() {
                let _ = client.shutdown(Shutdown::Both);
            }
            ctx.metrics().bytes[0].add(n);
            early[0] += n;
        }
        tls = Some((Box::new(handover.records), handover.tail));
    }
    ctx.metrics().tunnels.add(1);
    if tls.is_some() {
        ctx.shared
            .handoff
            .wss_tunnels
            .fetch_add(1, Ordering::SeqCst);
        end.trace.wss = true;
    }
    let payload = TunnelEnd {
        end,
        opened: Instant::now(),
    };
    let fds = [client.into_fd(), upstream.into_fd()];
    ctx.tunnels.open(fds, early, tls, payload);
}

/// Runs the TLS handshake of a connection to a TLS listener within `timeouts.handshake`.
/// `None`: it failed, and the connection was answered (a plain HTTP request gets a plain
/// `400`) or closed, counted and logged.
async fn handshake(
    ctx: &WorkerContext,
    stream: Stream,
    config: Arc<rustls::ServerConfig>,
    info: &ClientInfo,
    early: &mut Vec<u8>,
) -> Option<Client> {
    let limit = ctx.shared.config.timeouts.handshake;
    let started = Instant::now();
    let accept = Client::accept_tls(&stream, config, early);
    let (res, timed_out) = with_deadline(limit, accept, || {
        let _ = stream.shutdown(Shutdown::Both);
    })
    .await;
    let failure = match res {
        Ok(done) => {
            early.clear();
            ctx.metrics().tls_handshake(TlsHandshake::Ok);
            return Some(Client::tls(stream, done));
        }
        Err(failure) => failure,
    };
    let metrics = ctx.metrics();
    let (outcome, status) = match failure {
        HandshakeFailure::PlainHttp => {
            let err = HandshakeError::PlainHttpOnTls;
            info!(client = %info.peer, "{}: {err}", err.status());
            let mut scratch = Vec::with_capacity(1024);
            reject(&stream, err, &mut scratch, LINGER).await;
            metrics.response(err.status());
            (TlsHandshake::PlainHttp, err.status())
        }
        _ if timed_out => {
            debug!(client = %info.peer, "TLS handshake not complete within timeouts.handshake");
            (TlsHandshake::TimedOut, 0)
        }
        e => {
            debug!(client = %info.peer, "{e}");
            (TlsHandshake::Failed, 0)
        }
    };
    metrics.tls_handshake(outcome);
    let end = Closing {
        trace: Trace::new(info.client),
        started,
        _slot: None,
    };
    end.log(ctx, status, None);
    None
}

/// Turns a client away before reading anything (over the connection limit or its address's,
/// out of descriptors): answered, counted and logged like any other refusal.
pub async fn turn_away(
    ctx: Rc<WorkerContext>,
    client: Stream,
    info: ClientInfo,
    err: HandshakeError,
    linger: Duration,
    slot: Option<Slot>,
) {
    let end = Closing {
        trace: Trace::new(info.client),
        started: Instant::now(),
        _slot: slot,
    };
    if info.tls {
        // Its first bytes are a ClientHello: a plain HTTP answer would read as a broken TLS
        // record. It is closed unanswered (as nginx, which answers only after a handshake
        // wsplice cannot afford for a client it is turning away), counted and logged.
        warn!(client = %info.client, peer = %info.peer, "closed before the TLS handshake: {err}");
        let _ = client.shutdown(Shutdown::Both);
        let reason = format!(
            "{} unanswered: refused before the TLS handshake",
            err.status()
        );
        end.record(&ctx, 0, None, Some(&reason));
        return;
    }
    if err.status() >= 500 {
        warn!(client = %info.client, peer = %info.peer, "{}: {err}", err.status());
    } else {
        info!(client = %info.client, peer = %info.peer, "{}: {err}", err.status());
    }
    let mut scratch = Vec::with_capacity(1024);
    reject(&client, err, &mut scratch, linger).await;
    ctx.metrics().response(err.status());
    end.log(&ctx, err.status(), None);
}

/// Whether a head that could not be served asked for an upgrade (for the upgrade metrics).
fn asked_for_upgrade(head: &[u8]) -> bool {
    head.windows(10)
        .any(|w| w[0] == b'\n' && w[1..].eq_ignore_ascii_case(b"upgrade: "))
}

/// How long an answered client may go on sending before the connection is closed anyway.
pub const LINGER: Duration = Duration::from_secs(1);
/// The same when turning clients away for want of room (over `max_connections`, out of
/// descriptors): a flood of them must not hold descriptors for long.
pub const SHORT_LINGER: Duration = Duration::from_millis(100);

/// Answers `err` and closes, lingering (see `linger`).
pub(crate) async fn reject(
    client: &impl Io,
    err: HandshakeError,
    scratch: &mut Vec<u8>,
    linger: Duration,
) {
    let (res, _) = client.write_all(err.response()).await;
    if res.is_ok() {
        self::linger(client, scratch, linger).await;
    }
}

/// Ends the client's connection after its answer: sends FIN, then reads what the client still
/// sends (at most 64 KiB, for up to `limit`) before the close, because closing a socket with
/// unread bytes resets the connection, and a reset can destroy the answer before the client
/// has read it (nginx's lingering close).
async fn linger(client: &impl Io, scratch: &mut Vec<u8>, limit: Duration) {
    let drain = async {
        // Within the deadline too: a client that does not read could hold the close_notify.
        client.close_write().await;
        let mut drained = 0usize;
        while drained < 64 * 1024 {
            let mut buf = std::mem::take(scratch);
            buf.clear();
            let (res, b) = client.read(buf).await;
            *scratch = b;
            match res {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    with_deadline(Some(limit), drain, || {
        let _ = client.shutdown(Shutdown::Both);
    })
    .await;
}

#[allow(clippy::too_many_arguments)]
async fn proxy(
    ctx: &WorkerContext,
    client: &Client,
    info: &ClientInfo,
    served: usize,
    req: &mut Vec<u8>,
    out: &mut Vec<u8>,
    trace: &mut Trace,
    slot: &mut Slot,
) -> Result<Done, HandshakeError> {
    let timeouts = &ctx.shared.config.timeouts;

    if served > 0 && req.is_empty() && !next_request(ctx, client, req).await {
        return Ok(Done::ClientLeft);
    }
    let (res, timed_out) = with_deadline(
        timeouts.handshake,
        read_request(ctx, client, info, req, out, &mut trace.client),
        || {
            let _ = client.shutdown(Shutdown::Read);
        },
    )
    .await;
    let request = match res? {
        Some(request) => request,
        None if timed_out => return Err(HandshakeError::HeadTimeout),
        None => return Ok(Done::ClientLeft),
    };

    trace.client = request.client;
    trace.route = u32::try_from(request.route).ok();
    trace.upgrade = request.upgrade.is_some();
    // A trusted proxy's connection counts against the client its first request names.
    if !slot.counted() && !slot.count_client(request.client.ip()) {
        ctx.metrics().limited(Limit::Connections);
        return Err(HandshakeError::ClientConnections);
    }
    // A plain request's body bytes that came with the head go up with it, and not a byte
    // after the body's end; an upgrade's are held until the switch is proven.
    let mut body = Framing::from(request.body);
    let sent = match request.upgrade {
        Some(_) => 0,
        None => body
            .take(&req[request.head_len..])
            .map_err(HandshakeError::BadBody)?,
    };

    let table = request.table;
    let group = table.group_for_route(request.route);
    let affinity = &request.affinity;
    let connected = connect_group(group, affinity, timeouts.connect, &ctx.shared.metrics).await?;
    // Cloned out (no allocation) so the table is not held for a long response.
    let set_cookie = group
        .balancer
        .set_cookie(affinity, connected.index, request.https);
    let send_proxy_protocol = group.send_proxy_protocol;
    drop(table);
    let upstream = connected.stream;
    trace.upstream = Some(connected.addr);
    trace.open = Some(connected.open);
    let set_cookie = set_cookie.as_deref().unwrap_or_default();

    let range = request.head_len..request.head_len + sent;
    out.extend_from_slice(&req[range]);
    if send_proxy_protocol != proxy_protocol::Version::Off {
        // The upstream reads who the client is before the head; written in one send with it.
        // The address the client reached: on a wildcard listener, the socket's own.
        let local = match info.local.ip().is_unspecified() {
            true => client.stream().local_addr().unwrap_or(info.local),
            false => info.local,
        };
        let mut header = Vec::with_capacity(64);
        send_proxy_protocol.write(request.client, local, &mut header);
        out.splice(0..0, header);
    }
    let (res, b) = write_within(&upstream, std::mem::take(out), timeouts.response).await;
    *out = b;
    res.map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut => HandshakeError::RequestWriteTimeout,
        _ => HandshakeError::UpstreamFailed,
    })?;
    ctx.metrics().bytes[0].add(sent as u64);

    match request.upgrade {
        Some(switch) => {
            let head_len = request.head_len;
            upgrade(
                ctx, client, upstream, switch, head_len, set_cookie, req, out,
            )
            .await
        }
        None => {
            let exchange = Exchange {
                body_sent: sent as u64,
                body,
                consumed: request.head_len + sent,
                to_head: request.to_head,
                set_cookie,
                persistent: request.persistent
                    && served + 1 < MAX_REQUESTS
                    && timeouts.keepalive.is_some()
                    && !ctx.shared.stopping.load(Ordering::Relaxed),
            };
            respond(ctx, client, &upstream, exchange, req, out).await
        }
    }
}

/// Waits up to `timeouts.keepalive` for the first bytes of a keep-alive connection's next
/// request, and no longer than until the process stops. `false`: none came.
async fn next_request(ctx: &WorkerContext, client: &Client, req: &mut Vec<u8>) -> bool {
    let read = client.read(std::mem::take(req));
    tokio::pin!(read);
    let stop = ctx.shared.stopped();
    tokio::pin!(stop);
    let wait = async {
        match ctx.shared.config.timeouts.keepalive {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    // A pending read is never dropped: the socket is shut so that it completes.
    let (res, buf) = tokio::select! {
        biased;
        out = &mut read => out,
        () = wait => {
            let _ = client.shutdown(Shutdown::Read);
            read.await
        }
        () = &mut stop => {
            let _ = client.shutdown(Shutdown::Read);
            read.await
        }
    };
    *req = buf;
    matches!(res, Ok(n) if n > 0)
}

/// Writes all of `buf` within `limit`: past it, shuts `stream` down (which ends the write)
/// and reports `TimedOut`. For the handshake's writes; a relay's are bounded by its idle
/// timeout instead.
async fn write_within(
    stream: &impl Io,
    buf: Vec<u8>,
    limit: Option<Duration>,
) -> (std::io::Result<()>, Vec<u8>) {
    let ((res, buf), timed_out) = with_deadline(limit, stream.write_all(buf), || {
        let _ = stream.shutdown(Shutdown::Both);
    })
    .await;
    if timed_out {
        return (Err(std::io::ErrorKind::TimedOut.into()), buf);
    }
    (res, buf)
}

/// Reads the request head into `req` (after any bytes of it already there) and writes the
/// rewritten head into `out`. `Ok(None)`: the client closed (or the handshake deadline shut
/// it) before a whole head.
/// `who` is set to the client the head names (a trusted proxy's `X-Forwarded-For`) as soon as
/// it is known, so a refusal of this request is logged against that client.
async fn read_request(
    ctx: &WorkerContext,
    client: &Client,
    info: &ClientInfo,
    req: &mut Vec<u8>,
    out: &mut Vec<u8>,
    who: &mut SocketAddr,
) -> Result<Option<Request>, HandshakeError> {
    let max_head = ctx.shared.config.limits.max_request_head;
    let mut scan = HeadScan::default();
    loop {
        if !req.is_empty() && scan.ready(req) {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            if let Parsed::Complete(head) = parse_request(req, &mut headers)? {
                if head.len > max_head {
                    return Err(HandshakeError::HeadTooLarge);
                }
                let info = &ClientInfo {
                    client: client_of(ctx, info, &head),
                    ..*info
                };
                *who = info.client;
                // Before routing: a refused request costs no upstream work and no byte of it
                // goes up.
                if !ctx.shared.client_limits.request(info.client.ip()) {
                    ctx.metrics().limited(Limit::Rate);
                    return Err(HandshakeError::ClientRate);
                }
                // On TLS, the Host must be one the handshake's certificate was chosen for:
                // no site is reached through another site's certificate (RFC 9110 15.5.20).
                if client.is_tls()
                    && let Some(tls) = &ctx.shared.tls
                    && !tls.serves(client.sni(), head.routing_host())
                {
                    return Err(HandshakeError::Misdirected);
                }
                return route_request(ctx, info, head, out).map(Some);
            }
        }
        let filled = req.len();
        if filled >= max_head {
            return Err(HandshakeError::HeadTooLarge);
        }
        let (res, slice) = client.read(std::mem::take(req).slice(filled..)).await;
        *req = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// The client a request is from: behind a trusted proxy, the one its `X-Forwarded-For`
/// names (nginx's `real_ip_recursive on`; the port is not known); else the connection's.
fn client_of(ctx: &WorkerContext, info: &ClientInfo, head: &RequestHead<'_, '_>) -> SocketAddr {
    if !info.forwarded_trusted {
        return info.client;
    }
    let trusted = &ctx.shared.config.trusted_proxies;
    match trusted.real_ip(info.peer.ip(), head.forwarded_for()) {
        ip if ip == info.peer.ip() => info.peer,
        ip => SocketAddr::new(ip, 0),
    }
}

/// Reads the PROXY header a `proxy_protocol` listener's connections start with, from a
/// trusted peer, and takes its client as this connection's; what came after it is left in
/// `buf`, the start of the first request.
async fn take_proxy_header(
    ctx: &WorkerContext,
    client: &Stream,
    info: &mut ClientInfo,
    buf: &mut Vec<u8>,
) -> Result<(), ProxyRefusal> {
    let trusted = &ctx.shared.config.trusted_proxies;
    if !trusted.is_empty() && !trusted.contains(info.peer.ip()) {
        info!(peer = %info.peer, "closed: a PROXY header from a peer not in trusted_proxies");
        return Err(ProxyRefusal::Untrusted);
    }
    let limit = ctx.shared.config.timeouts.handshake;
    match proxy_header::read(client, buf, limit).await {
        Ok(received) => {
            // The address the client reached is the balancer's: what a PROXY header sent
            // on upstream names as destination (as HAProxy's accept-proxy + send-proxy).
            if let Some(destination) = received.destination {
                info.local = destination;
            }
            if let Some(source) = received.source {
                info.client = source;
            }
            debug!(client = %info.client, peer = %info.peer, early = received.extra, "PROXY header taken");
            Ok(())
        }
        Err(failure) => {
            info!(peer = %info.peer, "closed: {failure}");
            Err(failure.reason())
        }
    }
}

/// Routes a complete request head, applies its route's policy and writes the head for the
/// upstream into `out`.
fn route_request(
    ctx: &WorkerContext,
    info: &ClientInfo,
    mut head: RequestHead<'_, '_>,
    out: &mut Vec<u8>,
) -> Result<Request, HandshakeError> {
    let config = &ctx.shared.config;
    if out.capacity() == 0 {
        *out = ctx.pool.get();
    }
    out.clear();
    // Routed on the path the upstream gets, as written into its request line.
    let path = head.write_request_line(out);
    let route = config
        .routes
        .find(head.routing_host(), &out[path.clone()])
        .ok_or(HandshakeError::NoRoute)?;
    let policy = config.routes.get(route);
    let extra = &policy.extra_upgrades;
    head.allow_upgrade(extra);
    let upgrade = match (head.websocket_key, head.upgrade) {
        (Some(key), _) => Some(Switch::WebSocket(Accept::for_key(key))),
        (None, Some(token)) => extra
            .iter()
            .position(|e| token.eq_ignore_ascii_case(e.as_bytes()))
            .map(|token| Switch::Listed { route, token }),
        (None, None) => None,
    };
    if upgrade.is_some() {
        origin::allowed(&policy.allowed_origins, policy.require_origin, head.headers)
            .map_err(HandshakeError::OriginRefused)?;
    }
    let table = ctx.shared.table.load_full();
    let affinity =
        table
            .group_for_route(route)
            .balancer
            .affinity(&head, &out[path], info.client.ip());
    head.write_fields(info, out);
    let https = head.scheme(info) == b"https";
    Ok(Request {
        https,
        affinity,
        table,
        head_len: head.len,
        upgrade,
        route,
        body: head.body,
        to_head: head.method == "HEAD",
        persistent: head.persistent,
        client: info.client,
    })
}

/// Reads the upstream's response head into `buf`, after any bytes already there; returns its
/// status and length. `Ok(None)`: the upstream closed (or the response deadline shut it)
/// before a whole head.
async fn read_response(
    upstream: &Stream,
    buf: &mut Vec<u8>,
) -> Result<Option<(u16, usize)>, HandshakeError> {
    let mut scan = HeadScan::default();
    loop {
        if !buf.is_empty() && scan.ready(buf) {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            if let Parsed::Complete(head) = parse_response(buf, &mut headers)? {
                return Ok(Some((head.status, head.len)));
            }
        }
        let filled = buf.len();
        if filled == buf.capacity() {
            return Err(HandshakeError::BadResponse("response head too large"));
        }
        let (res, slice) = upstream.read(std::mem::take(buf).slice(filled..)).await;
        *buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// Waits for the response head within `timeouts.response`.
async fn await_response(
    ctx: &WorkerContext,
    upstream: &Stream,
    buf: &mut Vec<u8>,
) -> Result<(u16, usize), HandshakeError> {
    let (res, timed_out) = with_deadline(
        ctx.shared.config.timeouts.response,
        read_response(upstream, buf),
        || {
            let _ = upstream.shutdown(Shutdown::Read);
        },
    )
    .await;
    match res? {
        Some(head) => Ok(head),
        None if timed_out => Err(HandshakeError::ResponseTimeout),
        None => Err(HandshakeError::BadResponse(
            "upstream closed before sending a response head",
        )),
    }
}

/// An upgrade request: after a `101` that completes the switch the client asked for, passes
/// it on and hands the upstream back for the tunnel; any other answer is passed on and the
/// exchange ends. Client bytes that came with the head are held until then, and never
/// sent after a refusal or a `101` that does not prove the upstream switched. `set_cookie`
/// (header lines) goes into either answer's head.
#[allow(clippy::too_many_arguments)]
async fn upgrade(
    ctx: &WorkerContext,
    client: &Client,
    upstream_stream: Stream,
    switch: Switch,
    head_len: usize,
    set_cookie: &[u8],
    req: &mut Vec<u8>,
    resp: &mut Vec<u8>,
) -> Result<Done, HandshakeError> {
    let upstream = &upstream_stream;
    let expected = match switch {
        Switch::WebSocket(accept) => Expected::WebSocket(accept),
        Switch::Listed { route, token } => {
            Expected::Protocol(&ctx.shared.config.routes.get(route).extra_upgrades[token])
        }
    };
    resp.clear();
    let (status, resp_len) = await_response(ctx, upstream, resp).await?;
    if status != 101 {
        req.clear();
        // The refusal ends with its body, so a keep-alive upstream cannot hold the client.
        let head_for = HeadFor {
            to_head: false,
            persistent: false,
            set_cookie,
        };
        let (copied, framing, _) = write_response_head(resp, resp_len, req, head_for)?;
        let limit = ctx.shared.config.timeouts.handshake;
        let (res, b) = write_within(client, std::mem::take(req), limit).await;
        *req = b;
        let report = match res {
            Ok(()) => {
                ctx.metrics().bytes[1].add(copied);
                let mut report = relay_response(ctx, client, upstream, resp, framing).await;
                report.upstream_to_client += copied;
                report
            }
            Err(source) => failed_report(Side::Client, source),
        };
        return Ok(Done::Relayed {
            status,
            report,
            keep_alive: false,
        });
    }
    check_switch(&resp[..resp_len], &expected)?;

    // Bytes that came with either head are the tunnel's first bytes.
    let early = [
        req.len().saturating_sub(head_len) as u64,
        (resp.len() - resp_len) as u64,
    ];
    if !set_cookie.is_empty() {
        // The one rewrite of a 101: the lines go in before its end, ahead of any early bytes.
        let at = fields_end(&resp[..resp_len]);
        resp.splice(at..at, set_cookie.iter().copied());
    }
    let bytes = &ctx.metrics().bytes;
    bytes[1].add(early[1]);
    let limit = ctx.shared.config.timeouts.handshake;
    let (res, b) = write_within(client, std::mem::take(resp), limit).await;
    *resp = b;
    if let Err(source) = res {
        let report = failed_report(Side::Client, source);
        return Ok(Done::Relayed {
            status,
            report,
            keep_alive: false,
        });
    }
    if early[0] > 0 {
        bytes[0].add(early[0]);
        req.drain(..head_len);
        let limit = ctx.shared.config.timeouts.response;
        let (res, b) = write_within(upstream, std::mem::take(req), limit).await;
        *req = b;
        if let Err(source) = res {
            let report = failed_report(Side::Upstream, source);
            return Ok(Done::Relayed {
                status,
                report,
                keep_alive: false,
            });
        }
    }
    Ok(Done::Switched {
        upstream: upstream_stream,
        early,
    })
}

/// Checks an upstream's `101` head against the switch the client asked for.
fn check_switch(head: &[u8], expected: &Expected<'_>) -> Result<(), HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match parse_response(head, &mut headers)? {
        Parsed::Complete(head) => {
            websocket::check_switch(head.headers, expected).map_err(HandshakeError::BadSwitch)
        }
        Parsed::Incomplete => Err(HandshakeError::BadResponse("incomplete response head")),
    }
}

fn failed_report(side: Side, source: std::io::Error) -> Report {
    pump::report(Ok(0), Err((0, RelayError { side, source })), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::metrics::WorkerMetrics;
    use crate::tunnel::Tunnels;

    /// Runs `work` as a worker runs its handshakes: on a thread whose ring's loop runs.
    fn on_a_worker_ring(work: impl std::future::Future<Output = ()>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&runtime, async {
            let metrics = std::sync::Arc::new(WorkerMetrics::default());
            let tunnels = Tunnels::<()>::new(
                0,
                metrics,
                16,
                4096,
                4,
                0,
                crate::tunnel::Receive {
                    multishot: true,
                    defer: None,
                },
            )
            .unwrap();
            let ring = tokio::task::spawn_local(std::rc::Rc::new(tunnels).run(|_, _| {}, |_| {}));
            work.await;
            ring.abort();
        });
    }

    /// An idle tunnel's table entry, with this payload, stays small. (280: the slot also
    /// names its client's bucket of the per-client limits, 8 bytes with padding, and each
    /// direction has its multishot receive's state and queue, 16 bytes with padding.)
    #[test]
    fn a_tunnel_entry_stays_small() {
        let size = Tunnels::<TunnelEnd>::ENTRY_SIZE;
        assert!(size <= 280, "{size} bytes");
        println!("tunnel entry: {size} bytes");
    }

    /// A handshake write the peer never takes ends at its deadline. (Through the binary this
    /// cannot be shown on loopback: the kernel's send buffer grows to hold the largest head
    /// allowed. Here the sender's buffer is fixed small.)
    #[test]
    fn a_write_the_peer_does_not_take_ends_at_its_deadline() {
        on_a_worker_ring(async {
            let socket = || {
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap()
            };
            // Fixed buffers at both ends: the kernel grows neither past a few KiB.
            let listener = socket();
            listener.set_recv_buffer_size(4096).unwrap();
            let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
            listener.bind(&any.into()).unwrap();
            listener.listen(1).unwrap();
            let sender = socket();
            sender.set_send_buffer_size(4096).unwrap();
            sender.connect(&listener.local_addr().unwrap()).unwrap();
            let (_receiver, _) = listener.accept().unwrap();
            let stream = Stream::from_fd(sender.into());
            let write = write_within(&stream, vec![0; 1 << 22], Some(Duration::from_millis(200)));
            let (res, _) = tokio::time::timeout(Duration::from_secs(10), write)
                .await
                .expect("the write ended by its deadline");
            assert_eq!(res.unwrap_err().kind(), std::io::ErrorKind::TimedOut);
        });
    }
}
