//! Sans-IO HTTP/1.1 preamble handling: parse the client's request head strictly (RFC 9112, and
//! RFC 6455 for an upgrade), rewrite it for the upstream the way the nginx WebSocket recipe
//! does, and parse the upstream's response head.
//! No I/O and no allocation beyond the output buffer, so it is unit-tested and benched directly.

use std::io::Write;
use std::net::SocketAddr;
use std::ops::Range;

use super::framing::Framing;
use super::websocket;
use super::{path, strict};

/// Header fields allowed in one head; more is answered with 431.
pub const MAX_HEADERS: usize = 100;

/// Whether a buffer holds a whole head yet. "Need more bytes" is a value, not an error.
#[derive(Debug, PartialEq)]
pub enum Parsed<T> {
    Complete(T),
    Incomplete,
}

/// Why a connection was answered with an error instead of being proxied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    #[error("request head larger than limits.max_request_head")]
    HeadTooLarge,
    #[error("request head has more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("request head not complete within timeouts.handshake")]
    HeadTimeout,
    #[error("no route matches the request path")]
    NoRoute,
    #[error("every upstream server of the group refused or failed")]
    UpstreamFailed,
    #[error("every upstream server of the group timed out (timeouts.connect)")]
    UpstreamTimeout,
    #[error("upstream sent an invalid response head: {0}")]
    BadResponse(&'static str),
    #[error("upstream sent no response head within timeouts.response")]
    ResponseTimeout,
    #[error("over limits.max_connections")]
    Overloaded,
    #[error("out of file descriptors")]
    OutOfFiles,
    #[error("WebSocket upgrade without Sec-WebSocket-Version: 13")]
    UnsupportedVersion,
    #[error("upstream answered 101 without a valid switch: {0}")]
    BadSwitch(&'static str),
    #[error("malformed chunked request body: {0}")]
    BadBody(&'static str),
    #[error("upstream did not take the request within timeouts.response")]
    RequestWriteTimeout,
    #[error("upgrade refused by the route's origin policy: {0}")]
    OriginRefused(&'static str),
    #[error("over limits.max_connections_per_ip for this client address")]
    ClientConnections,
    #[error("over limits.handshake_rate_per_ip for this client address")]
    ClientRate,
    #[error("Host is not covered by the certificate this TLS connection was opened with")]
    Misdirected,
    #[error("a plain HTTP request on a TLS listener")]
    PlainHttpOnTls,
}

macro_rules! error_response {
    ($status:literal, $reason:literal, $len:literal, $body:literal) => {
        concat!(
            "HTTP/1.1 ",
            $status,
            " ",
            $reason,
            "\r\nContent-Type: text/plain\r\nContent-Length: ",
            $len,
            "\r\nConnection: close\r\n\r\n",
            $body
        )
        .as_bytes()
    };
}

impl HandshakeError {
    /// The HTTP status the client gets.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::Malformed(_)
            | HandshakeError::BadBody(_)
            | HandshakeError::PlainHttpOnTls => 400,
            HandshakeError::OriginRefused(_) => 403,
            HandshakeError::NoRoute => 404,
            HandshakeError::HeadTimeout => 408,
            HandshakeError::HeadTooLarge | HandshakeError::TooManyHeaders => 431,
            HandshakeError::UnsupportedVersion => 426,
            HandshakeError::Misdirected => 421,
            HandshakeError::ClientConnections | HandshakeError::ClientRate => 429,
            HandshakeError::UpstreamFailed
            | HandshakeError::BadResponse(_)
            | HandshakeError::BadSwitch(_) => 502,
            HandshakeError::Overloaded | HandshakeError::OutOfFiles => 503,
            HandshakeError::UpstreamTimeout
            | HandshakeError::ResponseTimeout
            | HandshakeError::RequestWriteTimeout => 504,
        }
    }

    /// The whole response written to the client: short, valid, and closing the connection.
    pub fn response(&self) -> &'static [u8] {
        if *self == HandshakeError::PlainHttpOnTls {
            // In clear text, as nginx answers ("The plain HTTP request was sent to HTTPS port").
            return error_response!(
                "400",
                "Bad Request",
                "62",
                "plain HTTP request sent to a TLS port; use https:// or wss://\n"
            );
        }
        match self.status() {
            400 => error_response!("400", "Bad Request", "12", "bad request\n"),
            403 => error_response!("403", "Forbidden", "19", "origin not allowed\n"),
            404 => error_response!("404", "Not Found", "23", "no route for this path\n"),
            408 => error_response!("408", "Request Timeout", "22", "request head too slow\n"),
            // RFC 9110 section 15.5.20: the client may retry on a connection opened for this
            // Host (a browser does so by itself).
            421 => error_response!(
                "421",
                "Misdirected Request",
                "55",
                "this connection's certificate does not cover this Host\n"
            ),
            // RFC 6455 section 4.4: the versions the server speaks, in the refusal.
            426 => concat!(
                "HTTP/1.1 426 Upgrade Required\r\nSec-WebSocket-Version: 13\r\n",
                "Content-Type: text/plain\r\nContent-Length: 33\r\nConnection: close\r\n\r\n",
                "WebSocket version 13 is required\n"
            )
            .as_bytes(),
            // RFC 6585: a client may try again after a second, when its address has a
            // connection or a request's worth of room again.
            429 => concat!(
                "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\n",
                "Content-Type: text/plain\r\nContent-Length: 18\r\nConnection: close\r\n\r\n",
                "too many requests\n"
            )
            .as_bytes(),
            431 => error_response!(
                "431",
                "Request Header Fields Too Large",
                "23",
                "request head too large\n"
            ),
            502 => error_response!("502", "Bad Gateway", "21", "upstream unavailable\n"),
            503 => error_response!("503", "Service Unavailable", "21", "too many connections\n"),
            _ => error_response!("504", "Gateway Timeout", "19", "upstream timed out\n"),
        }
    }
}

/// How the request body is delimited, which decides what may follow the head upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
}

/// The addresses of the client connection, for the forwarding headers.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo {
    /// The TCP peer: the client itself, or a proxy in front of wsplice.
    pub peer: SocketAddr,
    /// The connection came in over TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
    /// The proxy's own address as the client reached it; stands in for a missing HTTP/1.0 Host.
    pub local: SocketAddr,
    /// The client as wsplice reports it everywhere (forwarding headers, logs, per-client
    /// limits, `hash` on `client_ip`): the peer, the source of a PROXY header, or the address
    /// a trusted proxy's `X-Forwarded-For` names (then with port 0: not known).
    pub client: SocketAddr,
    /// The peer is a trusted proxy whose `X-Forwarded-For` is believed and extended; from
    /// anyone else it is replaced.
    pub forwarded_trusted: bool,
}

impl ClientInfo {
    /// A direct client: the peer is the client, and its `X-Forwarded-For` is not believed.
    pub fn direct(peer: SocketAddr, local: SocketAddr) -> Self {
        ClientInfo {
            peer,
            local,
            tls: false,
            client: peer,
            forwarded_trusted: false,
        }
    }
}

/// A parsed request head, borrowing the read buffer.
#[derive(Debug)]
pub struct RequestHead<'h, 'b> {
    pub method: &'b str,
    pub target: &'b str,
    pub headers: &'h [httparse::Header<'b>],
    /// Length of the head in the buffer, terminating blank line included.
    pub len: usize,
    /// The protocol to switch to, as the client wrote it: `websocket` for a checked WebSocket
    /// handshake, or a token the route lists (see [`RequestHead::allow_upgrade`]).
    pub upgrade: Option<&'b [u8]>,
    /// The client's `Sec-WebSocket-Key`, for a WebSocket handshake.
    pub websocket_key: Option<&'b [u8]>,
    pub host: Option<&'b [u8]>,
    pub body: Body,
    /// The target split for the rewrite: authority (absolute form), path as written, query.
    parts: path::Target<'b>,
    /// `Connection: upgrade` with an `Upgrade` that is not `websocket`: dropped unless the
    /// route lists one of its tokens.
    other_upgrade: bool,
    /// HTTP/1.1 without `Connection: close`: the client may send another request on this
    /// connection once the response is through (HTTP/1.0 keep-alive is not offered).
    pub persistent: bool,
}

/// What the header fields of a request said, gathered in one pass.
#[derive(Default)]
struct Fields<'b> {
    host: Option<&'b [u8]>,
    connection_upgrade: bool,
    connection_close: bool,
    upgrade_offered: bool,
    websocket: Option<&'b [u8]>,
    content_length: Option<u64>,
    transfer_encoding: bool,
    chunked: bool,
    keys: usize,
    key: Option<&'b [u8]>,
    versions: usize,
    version: Option<&'b [u8]>,
}

/// Parses the client's request head at the start of `buf`, strictly (RFC 9112): what a
/// lenient parser would read one way and the upstream another is refused, never guessed at.
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
) -> Result<Parsed<RequestHead<'h, 'b>>, HandshakeError> {
    let mut req = httparse::Request::new(headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Incomplete),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooManyHeaders),
        Err(e) => return Err(HandshakeError::Malformed(httparse_reason(e))),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HandshakeError::Malformed("incomplete request line"));
    };
    let headers: &'h [httparse::Header<'b>] = req.headers;
    strict::check_line_endings(&buf[..len])?;
    strict::check_target(method, target)?;
    let parts = path::Target::parse(target.as_bytes()).map_err(HandshakeError::Malformed)?;

    let mut f = Fields::default();
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if f.host.is_some() {
                return Err(HandshakeError::Malformed("more than one Host header"));
            }
            f.host = Some(h.value);
        } else if name.eq_ignore_ascii_case("upgrade") {
            for token in tokens(h.value) {
                f.upgrade_offered = true;
                if token.eq_ignore_ascii_case(b"websocket") {
                    f.websocket = Some(token);
                }
            }
        } else if name.eq_ignore_ascii_case("connection") {
            f.connection_upgrade |= tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"upgrade"));
            f.connection_close |= tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"close"));
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value)?;
            if f.content_length.is_some_and(|prev| prev != n) {
                return Err(HandshakeError::Malformed(
                    "conflicting Content-Length headers",
                ));
            }
            f.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            f.transfer_encoding = true;
            let mut codings = 0;
            for coding in tokens(h.value) {
                // Chunked must be applied once, last (RFC 9112 section 6.1).
                if f.chunked {
                    return Err(HandshakeError::Malformed(
                        "Transfer-Encoding does not end in chunked",
                    ));
                }
                f.chunked = coding.eq_ignore_ascii_case(b"chunked");
                codings += 1;
            }
            if codings == 0 {
                return Err(HandshakeError::Malformed(
                    "Transfer-Encoding does not end in chunked",
                ));
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            f.keys += 1;
            f.key = Some(trim(h.value));
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            f.versions += 1;
            f.version = Some(trim(h.value));
        }
    }
    match f.host {
        Some(host) if !strict::is_valid_host(trim(host)) => {
            return Err(HandshakeError::Malformed("invalid Host"));
        }
        Some(host) if version == 1 && trim(host).is_empty() => {
            return Err(HandshakeError::Malformed("HTTP/1.1 request without Host"));
        }
        None if version == 1 => {
            return Err(HandshakeError::Malformed("HTTP/1.1 request without Host"));
        }
        _ => {}
    }
    let body = match (f.transfer_encoding, f.content_length) {
        (true, _) if version == 0 => {
            return Err(HandshakeError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        (true, Some(_)) => {
            return Err(HandshakeError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        (true, None) if !f.chunked => {
            return Err(HandshakeError::Malformed(
                "Transfer-Encoding does not end in chunked",
            ));
        }
        (true, None) => Body::Chunked,
        (false, Some(0)) | (false, None) => Body::None,
        (false, Some(n)) => Body::Length(n),
    };
    let websocket_key = match f.websocket {
        Some(_) => Some(check_websocket(method, version, body, &f)?),
        None => None,
    };

    Ok(Parsed::Complete(RequestHead {
        method,
        target,
        headers,
        len,
        upgrade: f.websocket,
        websocket_key,
        host: f.host,
        body,
        parts,
        other_upgrade: version == 1
            && f.websocket.is_none()
            && f.upgrade_offered
            && f.connection_upgrade,
        persistent: version == 1 && !f.connection_close,
    }))
}

/// RFC 6455 section 4.1, for a request that offers `websocket`: returns the key.
fn check_websocket<'b>(
    method: &str,
    version: u8,
    body: Body,
    f: &Fields<'b>,
) -> Result<&'b [u8], HandshakeError> {
    if method != "GET" {
        return Err(HandshakeError::Malformed(
            "WebSocket upgrade with a method other than GET",
        ));
    }
    if version != 1 {
        return Err(HandshakeError::Malformed("WebSocket upgrade over HTTP/1.0"));
    }
    if !f.connection_upgrade {
        return Err(HandshakeError::Malformed(
            "Upgrade: websocket without Connection: upgrade",
        ));
    }
    if body != Body::None {
        return Err(HandshakeError::Malformed("WebSocket upgrade with a body"));
    }
    let key = match f.key {
        Some(key) if f.keys == 1 && websocket::is_valid_key(key) => key,
        _ => {
            return Err(HandshakeError::Malformed(
                "Sec-WebSocket-Key missing, repeated, or not base64 of 16 bytes",
            ));
        }
    };
    if f.versions != 1 || f.version != Some(websocket::VERSION) {
        return Err(HandshakeError::UnsupportedVersion);
    }
    Ok(key)
}

impl<'b> RequestHead<'_, 'b> {
    /// `?` and the query as the client wrote it; empty when there is none.
    pub fn query(&self) -> &'b [u8] {
        self.parts.query
    }

    /// The host this request is for, without the port, as routes and certificates match it:
    /// the authority of an absolute-form target, else the Host header; empty when neither
    /// names one (an HTTP/1.0 request without Host).
    pub fn routing_host(&self) -> &'b [u8] {
        match (self.parts.authority, self.host) {
            (Some(authority), _) => super::host::without_port(authority),
            (None, Some(host)) => super::host::without_port(host),
            (None, None) => b"",
        }
    }

    /// The values of the request's `X-Forwarded-For` fields, in order.
    pub fn forwarded_for(&self) -> impl DoubleEndedIterator<Item = &'b [u8]> {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
            .map(|h| h.value)
    }

    /// Lets an upgrade to another protocol than WebSocket through when the route lists one of
    /// the tokens the client offered (`extra`, case-insensitive) and the request has no body;
    /// otherwise its `Upgrade` stays stripped and the request goes up as a plain one.
    pub fn allow_upgrade<S: AsRef<str>>(&mut self, extra: &[S]) {
        if !self.other_upgrade || self.body != Body::None || extra.is_empty() {
            return;
        }
        self.upgrade = self
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("upgrade"))
            .flat_map(|h| tokens(h.value))
            .find(|t| {
                extra
                    .iter()
                    .any(|e| t.eq_ignore_ascii_case(e.as_ref().as_bytes()))
            });
    }

    /// Appends the head to send upstream: [`write_request_line`](Self::write_request_line)
    /// then [`write_fields`](Self::write_fields).
    pub fn write_upstream(&self, client: &ClientInfo, out: &mut Vec<u8>) {
        self.write_request_line(out);
        self.write_fields(client, out);
    }

    /// Appends the request line to send upstream and returns where in `out` its path is: the
    /// path to route on. It is origin form (RFC 9112 section 3.2.1) with the target's path
    /// normalised (`path::normalize`) and its query as the client wrote it, in HTTP/1.1, so
    /// the upstream acts on exactly the path that was routed on. The fragment is dropped.
    pub fn write_request_line(&self, out: &mut Vec<u8>) -> Range<usize> {
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        let start = out.len();
        path::normalize(self.parts.path, out);
        let path = start..out.len();
        out.extend_from_slice(self.parts.query);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        path
    }

    /// Appends the header fields to send upstream, after the request line: the client's Host
    /// (the target's authority for an absolute-form target, RFC 9112 section 3.2.2),
    /// hop-by-hop headers dropped, `Upgrade` + `Connection: upgrade` for an upgrade and
    /// `Connection: close` otherwise, and the forwarding headers.
    pub fn write_fields(&self, client: &ClientInfo, out: &mut Vec<u8>) {
        for h in self.headers {
            if self.is_dropped(h.name) {
                continue;
            }
            if h.name.eq_ignore_ascii_case("x-forwarded-for") {
                // Folded below into one appended header.
                continue;
            }
            if h.name.eq_ignore_ascii_case("host") {
                match self.parts.authority {
                    Some(authority) => push_header(out, b"Host", authority),
                    // An HTTP/1.0 client's empty Host is replaced below.
                    None if trim(h.value).is_empty() => {}
                    None => push_header(out, h.name.as_bytes(), h.value),
                }
                continue;
            }
            push_header(out, h.name.as_bytes(), h.value);
        }
        match (self.parts.authority, self.host) {
            (Some(_), Some(_)) => {}
            (Some(authority), None) => push_header(out, b"Host", authority),
            (None, host) if host.is_none_or(|h| trim(h).is_empty()) => {
                let _ = write!(out, "Host: {}\r\n", client.local);
            }
            (None, _) => {}
        }
        match self.upgrade {
            Some(value) => {
                push_header(out, b"Upgrade", value);
                out.extend_from_slice(b"Connection: upgrade\r\n");
            }
            None => out.extend_from_slice(b"Connection: close\r\n"),
        }
        out.extend_from_slice(b"X-Forwarded-For: ");
        // A trusted proxy's list is extended with the proxy; anyone else's is a forgery as
        // far as wsplice can tell, and replaced by the client address.
        let last = if client.forwarded_trusted {
            for value in self.forwarded_for() {
                if !trim(value).is_empty() {
                    out.extend_from_slice(trim(value));
                    out.extend_from_slice(b", ");
                }
            }
            client.peer.ip()
        } else {
            client.client.ip()
        };
        let _ = write!(out, "{}\r\nX-Real-IP: {}\r\n", last, client.client.ip());
        out.extend_from_slice(b"X-Forwarded-Proto: ");
        out.extend_from_slice(self.scheme(client));
        out.extend_from_slice(b"\r\n\r\n");
    }

    /// The scheme the client used, `http` or `https`, as `X-Forwarded-Proto` tells the
    /// upstream: the one a trusted proxy says (see `forwarded_proto`), else whether the
    /// connection to wsplice is TLS.
    pub fn scheme(&self, client: &ClientInfo) -> &'static [u8] {
        match self.forwarded_proto() {
            Some(said) if client.forwarded_trusted => said,
            _ if client.tls => b"https",
            _ => b"http",
        }
    }

    /// The scheme an `X-Forwarded-Proto` says the client used: only from exactly one such
    /// header whose value is `http` or `https` (any case); a list or anything else is
    /// ambiguous, and wsplice's own scheme goes up instead.
    fn forwarded_proto(&self) -> Option<&'static [u8]> {
        let mut said = self
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-proto"));
        let value = trim(said.next()?.value);
        if said.next().is_some() {
            return None;
        }
        if value.eq_ignore_ascii_case(b"https") {
            Some(b"https")
        } else if value.eq_ignore_ascii_case(b"http") {
            Some(b"http")
        } else {
            None
        }
    }

    /// Hop-by-hop headers, the ones `Connection` names, and the forwarding headers (the proxy
    /// sets its own; those it does not set are dropped so a client cannot forge them).
    /// Host, the body's framing headers and the WebSocket key and version are never dropped:
    /// the body follows verbatim, and the upstream's `101` is checked against that key.
    fn is_dropped(&self, name: &str) -> bool {
        const DROPPED: [&str; 10] = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "upgrade",
            "x-real-ip",
            "x-forwarded-proto",
            // Not set by the proxy, and with no trusted proxy to take them from, only forged.
            "forwarded",
            "x-forwarded-host",
            "x-forwarded-port",
        ];
        const KEPT: [&str; 5] = [
            "host",
            "content-length",
            "transfer-encoding",
            "sec-websocket-key",
            "sec-websocket-version",
        ];
        if DROPPED.iter().any(|d| name.eq_ignore_ascii_case(d)) {
            return true;
        }
        if KEPT.iter().any(|k| name.eq_ignore_ascii_case(k)) {
            return false;
        }
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| tokens(h.value))
            .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
    }
}

/// A parsed response head from the upstream.
#[derive(Debug)]
pub struct ResponseHead<'h, 'b> {
    pub status: u16,
    pub reason: &'b str,
    pub headers: &'h [httparse::Header<'b>],
    pub len: usize,
}

/// Parses the upstream's response head at the start of `buf`.
pub fn parse_response<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
) -> Result<Parsed<ResponseHead<'h, 'b>>, HandshakeError> {
    let mut resp = httparse::Response::new(headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Incomplete),
        Err(e) => return Err(HandshakeError::BadResponse(httparse_reason(e))),
    };
    // httparse reads any three digits, `050` too; a status below 100 has no meaning and
    // would be passed on as an invalid two-digit status line.
    let Some(status) = resp.code.filter(|code| *code >= 100) else {
        return Err(HandshakeError::BadResponse("invalid status code"));
    };
    Ok(Parsed::Complete(ResponseHead {
        status,
        reason: resp.reason.unwrap_or(""),
        headers: resp.headers,
        len,
    }))
}

impl ResponseHead<'_, '_> {
    /// Appends the head to pass to the client for a response that ends the connection:
    /// connection-scoped headers dropped, `extra` header lines (each ending in CRLF) and
    /// `Connection: close` added.
    pub fn write_closing(&self, out: &mut Vec<u8>, extra: &[&[u8]]) {
        self.write_for_client(out, false, extra);
    }

    /// Appends the head to pass to the client: connection-scoped headers dropped, `extra`
    /// header lines (each ending in CRLF) added, and `Connection: close` unless the
    /// connection stays open (`persistent`: HTTP/1.1 connections persist by default).
    pub fn write_for_client(&self, out: &mut Vec<u8>, persistent: bool, extra: &[&[u8]]) {
        let _ = write!(out, "HTTP/1.1 {} {}\r\n", self.status, self.reason);
        for h in self.headers {
            let connection_scoped = ["connection", "keep-alive", "proxy-connection"]
                .iter()
                .any(|d| h.name.eq_ignore_ascii_case(d));
            if !connection_scoped {
                push_header(out, h.name.as_bytes(), h.value);
            }
        }
        for line in extra {
            out.extend_from_slice(line);
        }
        if !persistent {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

impl ResponseHead<'_, '_> {
    /// Where the body that follows this head ends (RFC 9112 section 6.3). `to_head`: the
    /// request was `HEAD`, so there is no body whatever the head says.
    pub fn framing(&self, to_head: bool) -> Result<Framing, HandshakeError> {
        if to_head || (100..200).contains(&self.status) || self.status == 204 || self.status == 304
        {
            return Ok(Framing::Length(0));
        }
        let mut len = None;
        let mut chunked = None;
        for h in self.headers {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // Only the last coding counts: chunked is applied last or not at all.
                if let Some(last) = tokens(h.value).last() {
                    chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
                }
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let n = parse_content_length(h.value)
                    .map_err(|_| HandshakeError::BadResponse("invalid Content-Length"))?;
                if len.is_some_and(|prev| prev != n) {
                    return Err(HandshakeError::BadResponse(
                        "conflicting Content-Length headers",
                    ));
                }
                len = Some(n);
            }
        }
        match (chunked, len) {
            (Some(_), Some(_)) => Err(HandshakeError::BadResponse(
                "both Content-Length and Transfer-Encoding",
            )),
            (Some(true), None) => Ok(Framing::Chunked(Default::default())),
            (Some(false), None) | (None, None) => Ok(Framing::UntilClose),
            (None, Some(n)) => Ok(Framing::Length(n)),
        }
    }
}

/// Where header lines can be inserted into the complete head `head`: before the empty line
/// that ends it (CRLF, or a bare LF, which a response head may end with).
pub fn fields_end(head: &[u8]) -> usize {
    if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\r\n") {
        head.len() - 2
    } else {
        head.len().saturating_sub(1)
    }
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Comma-separated list elements of a header value, trimmed, empty ones skipped.
pub(crate) fn tokens(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|t| !t.is_empty())
}

pub(crate) fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !b.is_ascii_whitespace());
    let end = v.iter().rposition(|b| !b.is_ascii_whitespace());
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

fn parse_content_length(value: &[u8]) -> Result<u64, HandshakeError> {
    let v = trim(value);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(HandshakeError::Malformed("invalid Content-Length"));
    }
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status line",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "invalid HTTP version",
    }
}

#[cfg(test)]
mod tests;
