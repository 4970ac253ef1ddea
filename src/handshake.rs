//! Sans-IO HTTP/1.1 preamble handling: parse the client's request head and rewrite it for the
//! upstream the way the nginx WebSocket recipe does, and parse the upstream's response head.
//! No I/O and no allocation beyond the output buffer, so it is unit-tested and benched directly.

use std::io::Write;
use std::net::SocketAddr;

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
            HandshakeError::Malformed(_) => 400,
            HandshakeError::NoRoute => 404,
            HandshakeError::HeadTimeout => 408,
            HandshakeError::HeadTooLarge | HandshakeError::TooManyHeaders => 431,
            HandshakeError::UpstreamFailed | HandshakeError::BadResponse(_) => 502,
            HandshakeError::Overloaded => 503,
            HandshakeError::UpstreamTimeout | HandshakeError::ResponseTimeout => 504,
        }
    }

    /// The whole response written to the client: short, valid, and closing the connection.
    pub fn response(&self) -> &'static [u8] {
        match self.status() {
            400 => error_response!("400", "Bad Request", "12", "bad request\n"),
            404 => error_response!("404", "Not Found", "23", "no route for this path\n"),
            408 => error_response!("408", "Request Timeout", "22", "request head too slow\n"),
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
    pub peer: SocketAddr,
    /// The proxy's own address as the client reached it; stands in for a missing HTTP/1.0 Host.
    pub local: SocketAddr,
}

/// A parsed request head, borrowing the read buffer.
#[derive(Debug)]
pub struct RequestHead<'h, 'b> {
    pub method: &'b str,
    pub target: &'b str,
    pub headers: &'h [httparse::Header<'b>],
    /// Length of the head in the buffer, terminating blank line included.
    pub len: usize,
    /// The `Upgrade` value, when `Connection` also asks for an upgrade.
    pub upgrade: Option<&'b [u8]>,
    pub host: Option<&'b [u8]>,
    pub body: Body,
}

/// Parses the client's request head at the start of `buf`.
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

    let mut host = None;
    let mut upgrade_value = None;
    let mut connection_upgrade = false;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return Err(HandshakeError::Malformed("more than one Host header"));
            }
            host = Some(h.value);
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_value = Some(h.value);
        } else if name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"upgrade"));
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(h.value)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(HandshakeError::Malformed(
                    "conflicting Content-Length headers",
                ));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            chunked = tokens(h.value)
                .last()
                .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"));
        }
    }
    if version == 1 && host.is_none_or(|h| h.is_empty()) {
        return Err(HandshakeError::Malformed("HTTP/1.1 request without Host"));
    }
    let body = match (transfer_encoding, content_length) {
        (true, Some(_)) => {
            return Err(HandshakeError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        (true, None) if !chunked => {
            return Err(HandshakeError::Malformed(
                "Transfer-Encoding does not end in chunked",
            ));
        }
        (true, None) => Body::Chunked,
        (false, Some(0)) | (false, None) => Body::None,
        (false, Some(n)) => Body::Length(n),
    };
    let upgrade = upgrade_value.filter(|v| connection_upgrade && !v.is_empty());

    Ok(Parsed::Complete(RequestHead {
        method,
        target,
        headers,
        len,
        upgrade,
        host,
        body,
    }))
}

impl RequestHead<'_, '_> {
    /// The path part of the target, for routing; absolute-form targets are reduced to it.
    pub fn path(&self) -> &[u8] {
        let target = self.target.as_bytes();
        let absolute_form = !target.starts_with(b"/");
        let target = match self.target.find("://").filter(|_| absolute_form) {
            Some(scheme_end) => {
                let rest = &target[scheme_end + 3..];
                rest.iter()
                    .position(|&b| b == b'/')
                    .map_or(&b"/"[..], |i| &rest[i..])
            }
            None => target,
        };
        let end = target
            .iter()
            .position(|&b| b == b'?' || b == b'#')
            .unwrap_or(target.len());
        &target[..end]
    }

    /// Appends the head to send upstream: HTTP/1.1, the client's Host, hop-by-hop headers
    /// dropped, `Upgrade` + `Connection: upgrade` for an upgrade and `Connection: close`
    /// otherwise, and the forwarding headers.
    pub fn write_upstream(&self, client: &ClientInfo, out: &mut Vec<u8>) {
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");

        for h in self.headers {
            if self.is_dropped(h.name) {
                continue;
            }
            if h.name.eq_ignore_ascii_case("x-forwarded-for") {
                // Folded below into one appended header.
                continue;
            }
            if h.name.eq_ignore_ascii_case("host") && trim(h.value).is_empty() {
                // An HTTP/1.0 client's empty Host is replaced below.
                continue;
            }
            push_header(out, h.name.as_bytes(), h.value);
        }
        if self.host.is_none_or(|h| trim(h).is_empty()) {
            let _ = write!(out, "Host: {}\r\n", client.local);
        }
        match self.upgrade {
            Some(value) => {
                push_header(out, b"Upgrade", value);
                out.extend_from_slice(b"Connection: upgrade\r\n");
            }
            None => out.extend_from_slice(b"Connection: close\r\n"),
        }
        out.extend_from_slice(b"X-Forwarded-For: ");
        for h in self
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
        {
            out.extend_from_slice(trim(h.value));
            out.extend_from_slice(b", ");
        }
        let _ = write!(
            out,
            "{}\r\nX-Real-IP: {}\r\n",
            client.peer.ip(),
            client.peer.ip()
        );
        out.extend_from_slice(b"X-Forwarded-Proto: http\r\n\r\n");
    }

    /// Hop-by-hop headers, the ones `Connection` names, and the ones the proxy sets itself.
    /// Host and the body's framing headers are never dropped: the body follows verbatim.
    fn is_dropped(&self, name: &str) -> bool {
        const DROPPED: [&str; 7] = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "upgrade",
            "x-real-ip",
            "x-forwarded-proto",
        ];
        const KEPT: [&str; 3] = ["host", "content-length", "transfer-encoding"];
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
    let Some(status) = resp.code else {
        return Err(HandshakeError::BadResponse("no status code"));
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
    /// connection-scoped headers dropped and `Connection: close` added.
    pub fn write_closing(&self, out: &mut Vec<u8>) {
        let _ = write!(out, "HTTP/1.1 {} {}\r\n", self.status, self.reason);
        for h in self.headers {
            let connection_scoped = ["connection", "keep-alive", "proxy-connection"]
                .iter()
                .any(|d| h.name.eq_ignore_ascii_case(d));
            if !connection_scoped {
                push_header(out, h.name.as_bytes(), h.value);
            }
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
    }
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Comma-separated list elements of a header value, trimmed, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|t| !t.is_empty())
}

fn trim(v: &[u8]) -> &[u8] {
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
#[path = "handshake/tests.rs"]
mod tests;
