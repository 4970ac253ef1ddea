//! The head parsers against hand-written heads: the nginx-recipe rewrite, body framing,
//! rejections, every split of a head, and the canned error responses.

use super::*;

fn client() -> ClientInfo {
    ClientInfo::direct(
        "203.0.113.7:51234".parse().unwrap(),
        "127.0.0.1:8080".parse().unwrap(),
    )
}

/// The upgrade request from RFC 6455 section 1.2, as a browser behind one proxy sends it.
const UPGRADE: &[u8] = b"GET /chat?room=1 HTTP/1.1\r\n\
Host: server.example.com\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Origin: http://example.com\r\n\
X-Forwarded-For: 198.51.100.1\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Version: 13\r\n\
\r\n";

const UPGRADE_UPSTREAM: &[u8] = b"GET /chat?room=1 HTTP/1.1\r\n\
Host: server.example.com\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Origin: http://example.com\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Version: 13\r\n\
Upgrade: websocket\r\n\
Connection: upgrade\r\n\
X-Forwarded-For: 203.0.113.7\r\n\
X-Real-IP: 203.0.113.7\r\n\
X-Forwarded-Proto: http\r\n\
\r\n";

const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
Sec-WebSocket-Protocol: chat\r\n\
\r\n";

/// The WebSocket fields every upgrade request carries, for heads written by hand below.
const WS: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

/// A masked client text frame "Hello", as a client may pipeline right after its head.
const FRAME: &[u8] = &[
    0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
];

/// What `parse_request` makes of `head`, reduced to owned values the test can hold.
#[derive(Debug, PartialEq)]
struct Rewritten {
    len: usize,
    upgrade: Option<Vec<u8>>,
    body: Body,
    path: Vec<u8>,
    upstream: Vec<u8>,
}

fn try_rewrite(head: &[u8]) -> Result<Parsed<Rewritten>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    Ok(match parse_request(head, &mut headers)? {
        Parsed::Incomplete => Parsed::Incomplete,
        Parsed::Complete(req) => {
            let mut upstream = Vec::new();
            let path = req.write_request_line(&mut upstream);
            let path = upstream[path].to_vec();
            req.write_fields(&client(), &mut upstream);
            Parsed::Complete(Rewritten {
                len: req.len,
                upgrade: req.upgrade.map(<[u8]>::to_vec),
                body: req.body,
                path,
                upstream,
            })
        }
    })
}

#[track_caller]
fn rewrite(head: &[u8]) -> Rewritten {
    match try_rewrite(head) {
        Ok(Parsed::Complete(r)) => r,
        other => panic!(
            "{:?} gave {other:?}, not a complete head",
            String::from_utf8_lossy(head)
        ),
    }
}

#[track_caller]
fn upstream_text(head: &[u8]) -> String {
    String::from_utf8(rewrite(head).upstream).unwrap()
}

#[track_caller]
fn rejection(head: &[u8]) -> HandshakeError {
    match try_rewrite(head) {
        Err(e) => e,
        Ok(other) => panic!(
            "{:?} gave {other:?}, not an error",
            String::from_utf8_lossy(head)
        ),
    }
}

/// The header lines of a rewritten head, without the request line and blank line.
fn header_lines(upstream: &str) -> Vec<&str> {
    let head = upstream
        .strip_suffix("\r\n\r\n")
        .expect("head ends in CRLF CRLF");
    head.split("\r\n").skip(1).collect()
}

#[test]
fn upgrade_is_rewritten_like_the_nginx_recipe() {
    let r = rewrite(UPGRADE);
    assert_eq!(r.len, UPGRADE.len());
    assert_eq!(r.upgrade.as_deref(), Some(&b"websocket"[..]));
    assert_eq!(r.body, Body::None);
    assert_eq!(r.path, b"/chat");
    assert_eq!(
        String::from_utf8_lossy(&r.upstream),
        String::from_utf8_lossy(UPGRADE_UPSTREAM)
    );
}

#[test]
fn write_upstream_appends_to_the_buffer() {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Parsed::Complete(req) = parse_request(UPGRADE, &mut headers).unwrap() else {
        panic!("incomplete");
    };
    let mut out = b"kept".to_vec();
    req.write_upstream(&client(), &mut out);
    assert_eq!(&out[..4], b"kept");
    assert_eq!(&out[4..], UPGRADE_UPSTREAM);
}

#[test]
fn request_line_is_forced_to_http_1_1() {
    let head = b"GET /ws HTTP/1.0\r\nHost: a\r\n\r\n";
    let text = upstream_text(head);
    assert!(
        text.starts_with("GET /ws HTTP/1.1\r\nHost: a\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
}

#[test]
fn upgrade_value_is_passed_as_the_client_sent_it() {
    let head = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n{WS}\r\n"
    );
    let r = rewrite(head.as_bytes());
    assert_eq!(r.upgrade.as_deref(), Some(&b"WebSocket"[..]));
    let text = String::from_utf8(r.upstream).unwrap();
    assert!(text.contains("\r\nUpgrade: WebSocket\r\n"), "{text}");
    assert_eq!(text.matches("Upgrade:").count(), 1, "{text}");
}

#[test]
fn connection_upgrade_among_other_tokens_is_an_upgrade() {
    // Firefox sends `Connection: keep-alive, Upgrade`.
    let head = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n{WS}\r\n"
    );
    let r = rewrite(head.as_bytes());
    assert_eq!(r.upgrade.as_deref(), Some(&b"websocket"[..]));
    let text = String::from_utf8(r.upstream).unwrap();
    assert!(!text.contains("keep-alive"), "{text}");
    assert!(text.contains("Connection: upgrade\r\n"), "{text}");
}

#[test]
fn connection_upgrade_in_a_second_connection_header_is_an_upgrade() {
    let head = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nUpgrade: websocket\r\nConnection: upgrade\r\n{WS}\r\n"
    );
    assert_eq!(
        rewrite(head.as_bytes()).upgrade.as_deref(),
        Some(&b"websocket"[..])
    );
}

#[test]
fn hop_by_hop_headers_are_dropped() {
    let head = format!(
        "GET /ws HTTP/1.1\r\n\
Host: a\r\n\
Keep-Alive: timeout=5\r\n\
Proxy-Connection: keep-alive\r\n\
TE: trailers\r\n\
Connection: Upgrade, X-Hop, x-other-hop, sec-websocket-key\r\n\
X-Hop: secret\r\n\
X-Other-Hop: secret\r\n\
X-End-To-End: kept\r\n\
Upgrade: websocket\r\n\
{WS}\r\n"
    );
    let text = upstream_text(head.as_bytes());
    assert_eq!(
        header_lines(&text),
        [
            "Host: a",
            "X-End-To-End: kept",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
            "Upgrade: websocket",
            "Connection: upgrade",
            "X-Forwarded-For: 203.0.113.7",
            "X-Real-IP: 203.0.113.7",
            "X-Forwarded-Proto: http",
        ]
    );
}

#[test]
fn connection_cannot_drop_host_or_body_framing() {
    let head = b"POST /ws HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: host, content-length\r\n\r\nhi";
    let r = rewrite(head);
    assert_eq!(r.body, Body::Length(2));
    let text = String::from_utf8(r.upstream).unwrap();
    assert!(
        text.contains("\r\nHost: a\r\nContent-Length: 2\r\n"),
        "{text}"
    );
}

#[test]
fn other_headers_are_kept_in_order() {
    let head =
        b"GET / HTTP/1.1\r\nB: 2\r\nHost: a\r\nA: 1\r\nCookie: x=1\r\nC: 3\r\nCookie: y=2\r\n\r\n";
    let text = upstream_text(head);
    assert_eq!(
        &header_lines(&text)[..6],
        [
            "B: 2",
            "Host: a",
            "A: 1",
            "Cookie: x=1",
            "C: 3",
            "Cookie: y=2"
        ]
    );
}

/// From a peer that is not a trusted proxy, the client's `X-Forwarded-For` is a forgery as
/// far as wsplice knows: replaced, as `X-Real-IP` is.
#[test]
fn x_forwarded_for_from_an_untrusted_peer_is_replaced() {
    let head = b"GET / HTTP/1.1\r\n\
Host: a\r\n\
X-Forwarded-For: 192.0.2.1\r\n\
Accept: */*\r\n\
x-forwarded-for:   192.0.2.2, 192.0.2.3  \r\n\
\r\n";
    let text = upstream_text(head);
    assert!(!text.contains("192.0.2."), "{text}");
    assert!(
        text.contains("\r\nX-Forwarded-For: 203.0.113.7\r\nX-Real-IP: 203.0.113.7\r\n"),
        "{text}"
    );
}

/// From a trusted proxy, every `X-Forwarded-For` field is folded into one, in order, and the
/// proxy appended; `X-Real-IP` is the client wsplice settled on.
#[test]
fn x_forwarded_for_from_a_trusted_peer_is_folded_and_extended() {
    let head = b"GET / HTTP/1.1\r\n\
Host: a\r\n\
X-Forwarded-For: 192.0.2.1\r\n\
Accept: */*\r\n\
x-forwarded-for:   192.0.2.2, 192.0.2.3  \r\n\
X-Forwarded-For:  \r\n\
\r\n";
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Parsed::Complete(req) = parse_request(head, &mut headers).unwrap() else {
        panic!("incomplete");
    };
    let client = ClientInfo {
        client: "192.0.2.3:0".parse().unwrap(),
        forwarded_trusted: true,
        ..client()
    };
    let mut out = Vec::new();
    req.write_upstream(&client, &mut out);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text.matches("X-Forwarded-For").count() + text.matches("x-forwarded-for").count(),
        1,
        "{text}"
    );
    assert!(
        text.contains("\r\nX-Forwarded-For: 192.0.2.1, 192.0.2.2, 192.0.2.3, 203.0.113.7\r\nX-Real-IP: 192.0.2.3\r\n"),
        "{text}"
    );
}

/// A PROXY header's client is the client: the forwarding headers name it, not the peer.
#[test]
fn forwarding_headers_name_the_client_not_the_peer() {
    let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n";
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Parsed::Complete(req) = parse_request(head, &mut headers).unwrap() else {
        panic!("incomplete");
    };
    let client = ClientInfo {
        client: "198.51.100.77:4000".parse().unwrap(),
        ..client()
    };
    let mut out = Vec::new();
    req.write_upstream(&client, &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("\r\nX-Forwarded-For: 198.51.100.77\r\nX-Real-IP: 198.51.100.77\r\n"),
        "{text}"
    );
    assert!(
        !text.contains("6.6.6.6") && !text.contains("203.0.113.7"),
        "{text}"
    );
}

#[test]
fn x_forwarded_for_without_client_value_is_the_peer() {
    let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let text = upstream_text(head);
    assert!(
        text.contains("\r\nX-Forwarded-For: 203.0.113.7\r\n"),
        "{text}"
    );
}

#[test]
fn forwarding_headers_the_proxy_does_not_set_are_dropped() {
    let head = b"GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=10.0.0.1;host=evil\r\nX-Forwarded-Host: evil\r\nx-forwarded-port: 444\r\nFORWARDED: by=x\r\nB: 1\r\n\r\n";
    let text = upstream_text(head);
    for forged in ["10.0.0.1", "evil", "444", "by=x"] {
        assert!(!text.contains(forged), "{forged}: {text}");
    }
    assert!(text.contains("\r\nB: 1\r\n"), "{text}");
}

#[test]
fn forwarding_headers_from_the_client_are_replaced() {
    let head =
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Real-IP: 10.0.0.1\r\nx-forwarded-proto: https\r\n\r\n";
    let text = upstream_text(head);
    assert!(!text.contains("10.0.0.1"), "{text}");
    assert!(!text.contains("https"), "{text}");
    assert!(text.ends_with("\r\nX-Real-IP: 203.0.113.7\r\nX-Forwarded-Proto: http\r\n\r\n"));
}

/// A trusted proxy (one that terminated TLS, say) tells the scheme its client used; from
/// anyone else the header is a forgery. A list or an unknown scheme is not believed either.
#[test]
fn a_trusted_proxys_x_forwarded_proto_is_kept() {
    let proto_sent = |head: &[u8], trusted: bool| {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let Parsed::Complete(req) = parse_request(head, &mut headers).unwrap() else {
            panic!("incomplete");
        };
        let client = ClientInfo {
            forwarded_trusted: trusted,
            ..client()
        };
        let mut out = Vec::new();
        req.write_upstream(&client, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text.to_ascii_lowercase()
                .matches("x-forwarded-proto")
                .count(),
            1,
            "{text}"
        );
        let at = text.find("X-Forwarded-Proto: ").expect(&text) + 19;
        text[at..].split("\r\n").next().unwrap().to_string()
    };
    let https = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto:  HTTPS \r\n\r\n";
    assert_eq!(proto_sent(https, true), "https");
    assert_eq!(proto_sent(https, false), "http");
    for ambiguous in [
        &b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https, http\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: wss\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\nx-forwarded-proto: https\r\n\r\n",
    ] {
        assert_eq!(proto_sent(ambiguous, true), "http");
    }
}

#[test]
fn ipv6_peer_is_written_without_brackets_or_port() {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Parsed::Complete(req) = parse_request(UPGRADE, &mut headers).unwrap() else {
        panic!("incomplete");
    };
    let client = ClientInfo::direct(
        "[2001:db8::1]:4000".parse().unwrap(),
        "[::1]:8080".parse().unwrap(),
    );
    let mut out = Vec::new();
    req.write_upstream(&client, &mut out);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("X-Forwarded-For: 2001:db8::1\r\nX-Real-IP: 2001:db8::1\r\n"),
        "{text}"
    );
}

#[test]
fn plain_request_gets_connection_close() {
    let head =
        b"GET /index.html HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\n";
    let r = rewrite(head);
    assert_eq!(r.upgrade, None);
    assert_eq!(
        String::from_utf8(r.upstream).unwrap(),
        "GET /index.html HTTP/1.1\r\n\
Host: a\r\n\
Accept: */*\r\n\
Connection: close\r\n\
X-Forwarded-For: 203.0.113.7\r\n\
X-Real-IP: 203.0.113.7\r\n\
X-Forwarded-Proto: http\r\n\
\r\n"
    );
}

#[test]
fn other_upgrade_without_connection_upgrade_is_not_an_upgrade() {
    let head = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: keep-alive\r\n\r\n";
    let r = rewrite(head);
    assert_eq!(r.upgrade, None);
    let text = String::from_utf8(r.upstream).unwrap();
    assert!(!text.contains("Upgrade"), "{text}");
    assert!(!text.contains("upgrade"), "{text}");
    assert!(text.contains("\r\nConnection: close\r\n"), "{text}");

    let head = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n";
    let r = rewrite(head);
    assert_eq!(r.upgrade, None);
    assert!(!String::from_utf8(r.upstream).unwrap().contains("Upgrade"));
}

#[test]
fn connection_upgrade_without_upgrade_value_is_not_an_upgrade() {
    for head in [
        &b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n"[..],
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade:\r\n\r\n",
    ] {
        let r = rewrite(head);
        assert_eq!(r.upgrade, None);
        let text = String::from_utf8(r.upstream).unwrap();
        assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
        assert!(!text.contains("Upgrade"), "{text}");
    }
}

#[test]
fn body_from_content_length() {
    let head = b"POST /ws HTTP/1.1\r\nHost: a\r\nContent-Length: 42\r\n\r\n";
    assert_eq!(rewrite(head).body, Body::Length(42));
    let head = b"POST /ws HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(rewrite(head).body, Body::None);
    let head = b"GET /ws HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(rewrite(head).body, Body::None);
}

#[test]
fn body_chunked() {
    let head = b"POST /ws HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(rewrite(head).body, Body::Chunked);
    let head = b"POST /ws HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n";
    assert_eq!(rewrite(head).body, Body::Chunked);
    let head = b"POST /ws HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(rewrite(head).body, Body::Chunked);
}

#[test]
fn body_framing_headers_are_passed_upstream() {
    let head = b"POST /ws HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    let text = upstream_text(head);
    assert!(
        text.contains("\r\nTransfer-Encoding: chunked\r\n"),
        "{text}"
    );
}

#[test]
fn rejects_content_length_with_transfer_encoding() {
    let head =
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(
        rejection(head),
        HandshakeError::Malformed("both Content-Length and Transfer-Encoding")
    );
    let head =
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(
        rejection(head),
        HandshakeError::Malformed("both Content-Length and Transfer-Encoding")
    );
}

#[test]
fn rejects_transfer_encoding_not_ending_in_chunked() {
    for te in ["gzip", "chunked, gzip", "identity", ""] {
        let head = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {te}\r\n\r\n");
        assert_eq!(
            rejection(head.as_bytes()),
            HandshakeError::Malformed("Transfer-Encoding does not end in chunked"),
            "Transfer-Encoding: {te}"
        );
    }
    let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n";
    assert_eq!(
        rejection(head),
        HandshakeError::Malformed("Transfer-Encoding does not end in chunked")
    );
}

#[test]
fn rejects_conflicting_content_lengths() {
    let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
    assert_eq!(
        rejection(head),
        HandshakeError::Malformed("conflicting Content-Length headers")
    );
}

#[test]
fn accepts_duplicate_identical_content_lengths() {
    let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n";
    assert_eq!(rewrite(head).body, Body::Length(5));
}

#[test]
fn rejects_invalid_content_length() {
    for cl in [
        "abc",
        "-1",
        "+5",
        "5 5",
        "0x10",
        "5, 5",
        "99999999999999999999",
        "",
    ] {
        let head = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {cl}\r\n\r\n");
        assert_eq!(
            rejection(head.as_bytes()),
            HandshakeError::Malformed("invalid Content-Length"),
            "Content-Length: {cl}"
        );
    }
}

#[test]
fn accepts_largest_content_length() {
    let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9999999999999999999\r\n\r\n";
    assert_eq!(rewrite(head).body, Body::Length(9_999_999_999_999_999_999));
}

#[test]
fn rejects_http_1_1_without_host() {
    let head = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
    assert_eq!(
        rejection(head),
        HandshakeError::Malformed("HTTP/1.1 request without Host")
    );
    let head = b"GET /ws HTTP/1.1\r\nHost:\r\n\r\n";
    assert_eq!(
        rejection(head),
        HandshakeError::Malformed("HTTP/1.1 request without Host")
    );
}

#[test]
fn http_1_0_without_host_gets_the_local_address() {
    let head = b"GET /ws HTTP/1.0\r\nAccept: */*\r\n\r\n";
    let text = upstream_text(head);
    assert_eq!(
        text,
        "GET /ws HTTP/1.1\r\n\
Accept: */*\r\n\
Host: 127.0.0.1:8080\r\n\
Connection: close\r\n\
X-Forwarded-For: 203.0.113.7\r\n\
X-Real-IP: 203.0.113.7\r\n\
X-Forwarded-Proto: http\r\n\
\r\n"
    );
}

#[test]
fn http_1_0_with_an_empty_host_gets_the_local_address() {
    let text = upstream_text(b"GET /ws HTTP/1.0\r\nHost: \r\n\r\n");
    assert!(text.contains("Host: 127.0.0.1:8080\r\n"), "{text}");
    assert_eq!(text.matches("Host:").count(), 1, "{text}");
}

#[test]
fn rejects_duplicate_host() {
    let head = b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n";
    assert_eq!(
        rejection(head),
        HandshakeError::Malformed("more than one Host header")
    );
    let head = b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n";
    assert_eq!(
        rejection(head),
        HandshakeError::Malformed("more than one Host header")
    );
}

fn head_with_headers(n: usize) -> Vec<u8> {
    let mut head = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 1..n {
        head.extend_from_slice(format!("X-H{i}: {i}\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    head
}

#[test]
fn accepts_max_headers() {
    let head = head_with_headers(MAX_HEADERS);
    assert_eq!(rewrite(&head).len, head.len());
}

#[test]
fn rejects_too_many_headers() {
    let head = head_with_headers(MAX_HEADERS + 1);
    assert_eq!(rejection(&head), HandshakeError::TooManyHeaders);
    assert_eq!(HandshakeError::TooManyHeaders.status(), 431);
}

#[test]
fn rejects_garbage() {
    assert!(matches!(
        rejection(b"GET / HTTP/1.1\r\nHost a\r\n\r\n"),
        HandshakeError::Malformed(_)
    ));
    assert!(matches!(
        rejection(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"),
        HandshakeError::Malformed(_)
    ));
    assert!(matches!(
        rejection(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        HandshakeError::Malformed(_)
    ));
}

fn assert_same_at_every_split(head: &[u8]) {
    let whole = rewrite(head);
    let mut buf = Vec::with_capacity(head.len());
    for (i, &byte) in head.iter().enumerate() {
        assert_eq!(
            try_rewrite(&buf),
            Ok(Parsed::Incomplete),
            "split at {i}: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte);
    }
    assert_eq!(rewrite(&buf), whole);
}

#[test]
fn request_split_at_every_byte_offset() {
    assert_same_at_every_split(UPGRADE);
    assert_same_at_every_split(b"GET /ws HTTP/1.0\r\nX-Forwarded-For: 192.0.2.1\r\n\r\n");
    assert_same_at_every_split(
        b"POST /ws HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nConnection: close\r\n\r\n",
    );
}

#[test]
fn request_split_with_a_frame_behind_it() {
    let mut buf = UPGRADE.to_vec();
    buf.extend_from_slice(FRAME);
    let whole = rewrite(&buf);
    assert_eq!(whole.upstream, UPGRADE_UPSTREAM);
    for i in 0..UPGRADE.len() {
        assert_eq!(
            try_rewrite(&buf[..i]),
            Ok(Parsed::Incomplete),
            "split at {i}"
        );
    }
    for i in UPGRADE.len()..=buf.len() {
        assert_eq!(rewrite(&buf[..i]), whole, "split at {i}");
    }
}

#[test]
fn pipelined_frame_is_not_part_of_the_head() {
    let mut buf = UPGRADE.to_vec();
    buf.extend_from_slice(FRAME);
    let r = rewrite(&buf);
    assert_eq!(r.len, UPGRADE.len());
    assert_eq!(&buf[r.len..], FRAME);
    assert_eq!(r.upstream, UPGRADE_UPSTREAM);
}

fn path_of(target: &str) -> String {
    let head = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
    String::from_utf8(rewrite(head.as_bytes()).path).unwrap()
}

#[test]
fn path_strips_query_and_fragment() {
    assert_eq!(path_of("/chat"), "/chat");
    assert_eq!(path_of("/chat?room=1"), "/chat");
    assert_eq!(path_of("/chat#top"), "/chat");
    assert_eq!(path_of("/chat?room=1#top"), "/chat");
    assert_eq!(path_of("/?x"), "/");
    assert_eq!(path_of("/chat/?"), "/chat/");
}

#[test]
fn path_reduces_absolute_form() {
    assert_eq!(path_of("http://example.com/chat?room=1"), "/chat");
    assert_eq!(path_of("ws://example.com:8080/a/b"), "/a/b");
    assert_eq!(path_of("http://example.com"), "/");
    assert_eq!(path_of("http://example.com?x=1"), "/");
}

#[test]
fn path_ignores_a_url_in_the_query() {
    assert_eq!(path_of("/ws?next=http://evil.example/admin"), "/ws");
    assert_eq!(path_of("/login?return=https://example.com/"), "/login");
}

/// The request line the upstream gets for `target`.
fn request_line_of(target: &str) -> String {
    let head = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
    let text = upstream_text(head.as_bytes());
    text.split("\r\n").next().unwrap().to_string()
}

#[test]
fn path_is_routed_and_sent_normalised_with_the_query_as_written() {
    for (target, path, line) in [
        ("/websocket/../admin", "/admin", "GET /admin HTTP/1.1"),
        (
            "/websocket/./x",
            "/websocket/x",
            "GET /websocket/x HTTP/1.1",
        ),
        (
            "/a/b/../../websocket",
            "/websocket",
            "GET /websocket HTTP/1.1",
        ),
        (
            "/websocket/%2e%2e/admin?x",
            "/admin",
            "GET /admin?x HTTP/1.1",
        ),
        ("/%77s?q=/../a%2F#f", "/ws", "GET /ws?q=/../a%2F HTTP/1.1"),
        ("//ws//", "/ws/", "GET /ws/ HTTP/1.1"),
    ] {
        assert_eq!(path_of(target), path, "{target}");
        assert_eq!(request_line_of(target), line, "{target}");
    }
}

#[test]
fn absolute_form_goes_up_in_origin_form_with_its_authority_as_host() {
    for (target, line) in [
        ("http://x/websocket?q", "GET /websocket?q HTTP/1.1"),
        ("http://x?/websocket", "GET /?/websocket HTTP/1.1"),
        ("http://x#/websocket", "GET / HTTP/1.1"),
        ("ws://x/a/../b", "GET /b HTTP/1.1"),
    ] {
        let head = format!("GET {target} HTTP/1.1\r\nHost: other\r\nA: 1\r\n\r\n");
        let text = upstream_text(head.as_bytes());
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines[..3], [line, "Host: x", "A: 1"], "{target}");
        assert!(!text.contains("other"), "{text}");
    }
    let http_1_0 = upstream_text(b"GET http://x:81/ws HTTP/1.0\r\n\r\n");
    assert!(
        http_1_0.starts_with("GET /ws HTTP/1.1\r\nHost: x:81\r\n"),
        "{http_1_0}"
    );
    let empty_host = upstream_text(b"GET http://x/ws HTTP/1.0\r\nHost:\r\n\r\n");
    assert_eq!(empty_host.matches("Host:").count(), 1, "{empty_host}");
    assert!(empty_host.contains("\r\nHost: x\r\n"), "{empty_host}");
}

#[test]
fn rejects_paths_upstreams_split_differently() {
    for target in [
        "/websocket/..%2Fadmin",
        "/websocket%2fadmin",
        "/websocket%5C..%5Cadmin",
        "/websocket\\..\\admin",
        "/websocket/..;/admin",
        "/a%2",
        "http://x/a%2Fb",
        "http://user@x/",
        "http:///ws",
    ] {
        let head = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(
            matches!(rejection(head.as_bytes()), HandshakeError::Malformed(_)),
            "{target}"
        );
    }
    // Not in the path: the query is the upstream's business.
    assert_eq!(path_of("/ws?a=%2F\\"), "/ws");
}

#[test]
fn absolute_form_split_at_every_byte_offset() {
    assert_same_at_every_split(
        b"GET http://x:8080/a/./b/../ws?q=1#f HTTP/1.1\r\nHost: y\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
}

#[test]
fn response_101_is_parsed() {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Parsed::Complete(resp) = parse_response(SWITCHING, &mut headers).unwrap() else {
        panic!("incomplete");
    };
    assert_eq!(resp.status, 101);
    assert_eq!(resp.reason, "Switching Protocols");
    assert_eq!(resp.len, SWITCHING.len());
    let names: Vec<&str> = resp.headers.iter().map(|h| h.name).collect();
    assert_eq!(
        names,
        [
            "Upgrade",
            "Connection",
            "Sec-WebSocket-Accept",
            "Sec-WebSocket-Protocol"
        ]
    );
}

#[test]
fn response_followed_by_a_frame_keeps_its_len() {
    let mut buf = SWITCHING.to_vec();
    buf.extend_from_slice(&[0x81, 0x05, b'H', b'e', b'l', b'l', b'o']);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Parsed::Complete(resp) = parse_response(&buf, &mut headers).unwrap() else {
        panic!("incomplete");
    };
    assert_eq!(resp.len, SWITCHING.len());
}

/// Status, reason, head length and the closing rewrite of a parsed response.
type Closing = (u16, String, usize, Vec<u8>);

/// `parse_response` reduced to owned values: status, reason, and the closing rewrite.
fn closing(buf: &[u8]) -> Result<Parsed<Closing>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    Ok(match parse_response(buf, &mut headers)? {
        Parsed::Incomplete => Parsed::Incomplete,
        Parsed::Complete(resp) => {
            let mut out = Vec::new();
            resp.write_closing(&mut out, &[]);
            Parsed::Complete((resp.status, resp.reason.to_string(), resp.len, out))
        }
    })
}

#[test]
fn response_split_at_every_byte_offset() {
    for head in [
        SWITCHING,
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\n",
    ] {
        let whole = closing(head).unwrap();
        assert!(matches!(whole, Parsed::Complete(_)));
        for i in 0..head.len() {
            assert_eq!(
                closing(&head[..i]),
                Ok(Parsed::Incomplete),
                "split at {i}: {:?}",
                String::from_utf8_lossy(&head[..i])
            );
        }
    }
}

#[test]
fn rejects_invalid_response() {
    for head in [
        &b"HTTP/1.1 abc OK\r\n\r\n"[..],
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nBad Header\r\n\r\n",
        // Found by the response_head fuzz target: `050` was read as 50 and passed on as
        // the invalid status line `HTTP/1.1 50 `.
        b"HTTP/1.1 050 x\r\n\r\n",
        b"HTTP/1.1 000 x\r\n\r\n",
    ] {
        assert!(
            matches!(closing(head), Err(HandshakeError::BadResponse(_))),
            "{:?}",
            String::from_utf8_lossy(head)
        );
    }
    assert_eq!(HandshakeError::BadResponse("x").status(), 502);
}

#[test]
fn write_closing_drops_connection_headers() {
    let head = b"HTTP/1.1 403 Forbidden\r\n\
Content-Type: text/plain\r\n\
Connection: keep-alive\r\n\
Keep-Alive: timeout=5\r\n\
Proxy-Connection: keep-alive\r\n\
Content-Length: 3\r\n\
\r\n";
    let Ok(Parsed::Complete((status, reason, len, out))) = closing(head) else {
        panic!("not complete");
    };
    assert_eq!(
        (status, reason.as_str(), len),
        (403, "Forbidden", head.len())
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 403 Forbidden\r\n\
Content-Type: text/plain\r\n\
Content-Length: 3\r\n\
Connection: close\r\n\
\r\n"
    );
}

#[test]
fn write_closing_without_headers() {
    let Ok(Parsed::Complete((_, _, _, out))) = closing(b"HTTP/1.0 200 OK\r\n\r\n") else {
        panic!("not complete");
    };
    assert_eq!(out, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
}

const ALL_ERRORS: [HandshakeError; 17] = [
    HandshakeError::Malformed("x"),
    HandshakeError::BadBody("x"),
    HandshakeError::OriginRefused("x"),
    HandshakeError::UnsupportedVersion,
    HandshakeError::BadSwitch("x"),
    HandshakeError::RequestWriteTimeout,
    HandshakeError::OutOfFiles,
    HandshakeError::HeadTooLarge,
    HandshakeError::TooManyHeaders,
    HandshakeError::HeadTimeout,
    HandshakeError::NoRoute,
    HandshakeError::UpstreamFailed,
    HandshakeError::UpstreamTimeout,
    HandshakeError::BadResponse("x"),
    HandshakeError::ResponseTimeout,
    HandshakeError::Overloaded,
    HandshakeError::Misdirected,
];

#[test]
fn error_responses_are_valid_and_close() {
    for error in ALL_ERRORS {
        let response = error.response();
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(len) = parsed.parse(response).unwrap() else {
            panic!("{error:?}: incomplete response");
        };
        assert_eq!(parsed.version, Some(1), "{error:?}");
        assert_eq!(parsed.code, Some(error.status()), "{error:?}");
        let header = |name: &str| {
            let values: Vec<&[u8]> = parsed
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
                .collect();
            assert_eq!(values.len(), 1, "{error:?}: one {name}");
            std::str::from_utf8(values[0]).unwrap()
        };
        let body = &response[len..];
        assert_eq!(
            header("content-length").parse::<usize>().unwrap(),
            body.len(),
            "{error:?}"
        );
        assert_eq!(header("connection"), "close", "{error:?}");
        assert!(body.ends_with(b"\n"), "{error:?}");
    }
}

#[test]
fn error_statuses() {
    let statuses: Vec<u16> = ALL_ERRORS.iter().map(HandshakeError::status).collect();
    assert_eq!(
        statuses,
        [
            400, 400, 403, 426, 502, 504, 503, 431, 431, 408, 404, 502, 504, 502, 504, 503, 421
        ]
    );
}

/// Where a response body ends, per RFC 9112 section 6.3.
fn response_framing(head: &str, to_head: bool) -> Result<Framing, HandshakeError> {
    let text = format!("{head}\r\n\r\n");
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Parsed::Complete(resp) = parse_response(text.as_bytes(), &mut headers).unwrap() else {
        panic!("incomplete");
    };
    resp.framing(to_head)
}

#[test]
fn response_body_framing() {
    use crate::http::chunked::Chunked;
    let ok = |head: &str, to_head: bool| response_framing(head, to_head).unwrap();
    let length = "HTTP/1.1 200 OK\r\nContent-Length: 12";
    assert_eq!(ok(length, false), Framing::Length(12));
    assert_eq!(ok(length, true), Framing::Length(0), "a response to HEAD");
    for status in ["204 No Content", "304 Not Modified", "103 Early Hints"] {
        let head = format!("HTTP/1.1 {status}\r\nContent-Length: 12");
        assert_eq!(ok(&head, false), Framing::Length(0), "{status}");
    }
    let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked";
    assert_eq!(ok(chunked, false), Framing::Chunked(Chunked::default()));
    let unframed = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip";
    assert_eq!(ok(unframed, false), Framing::UntilClose);
    assert_eq!(ok("HTTP/1.1 200 OK", false), Framing::UntilClose);
    let same_twice = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3";
    assert_eq!(ok(same_twice, false), Framing::Length(3));
}

#[test]
fn response_framing_that_cannot_be_trusted_is_a_bad_gateway() {
    let cases = [
        (
            "Content-Length: 3\r\nContent-Length: 4",
            "conflicting Content-Length headers",
        ),
        ("Content-Length: -1", "invalid Content-Length"),
        ("Content-Length: 3, 3", "invalid Content-Length"),
        (
            "Content-Length: 3\r\nTransfer-Encoding: chunked",
            "both Content-Length and Transfer-Encoding",
        ),
    ];
    for (fields, reason) in cases {
        let head = format!("HTTP/1.1 200 OK\r\n{fields}");
        assert_eq!(
            response_framing(&head, false),
            Err(HandshakeError::BadResponse(reason)),
            "{fields}"
        );
    }
}

#[test]
fn closing_head_carries_extra_lines_before_its_end() {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let head = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
    let Parsed::Complete(resp) = parse_response(head, &mut headers).unwrap() else {
        panic!("incomplete");
    };
    let mut out = Vec::new();
    resp.write_closing(&mut out, &[b"Set-Cookie: s=1\r\n", b"X-A: b\r\n"]);
    assert_eq!(
        out,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nSet-Cookie: s=1\r\nX-A: b\r\nConnection: close\r\n\r\n"
    );
}

#[test]
fn fields_end_is_before_the_final_empty_line() {
    for (head, at) in [
        (&b"HTTP/1.1 101 S\r\nA: b\r\n\r\n"[..], 22),
        (b"HTTP/1.1 101 S\nA: b\n\n", 20),
        (b"HTTP/1.1 101 S\r\nA: b\r\n\n", 22),
        (b"HTTP/1.1 101 S\nA: b\n\r\n", 20),
    ] {
        assert_eq!(fields_end(head), at, "{:?}", String::from_utf8_lossy(head));
        let mut with = head.to_vec();
        with.splice(at..at, b"X: y\r\n".iter().copied());
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let Parsed::Complete(resp) = parse_response(&with, &mut headers).unwrap() else {
            panic!("incomplete");
        };
        assert_eq!(resp.len, with.len());
        assert_eq!(resp.headers.len(), 2);
        assert_eq!(resp.headers[1].name, "X");
    }
}

#[test]
fn the_routing_host_drops_the_port_and_prefers_the_absolute_form() {
    let host = |request: &[u8]| {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match parse_request(request, &mut headers) {
            Ok(Parsed::Complete(head)) => head.routing_host().to_vec(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        host(b"GET / HTTP/1.1\r\nHost: Chat.Example.com:8443\r\n\r\n"),
        b"Chat.Example.com"
    );
    assert_eq!(host(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"), b"[::1]");
    assert_eq!(
        host(b"GET http://a.example.com:80/x HTTP/1.1\r\nHost: b.example.com\r\n\r\n"),
        b"a.example.com"
    );
    assert_eq!(host(b"GET / HTTP/1.0\r\n\r\n"), b"");
}
