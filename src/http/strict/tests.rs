//! Every request head wsplice refuses, with the reason, checked against `parse_request`; the
//! ones httparse alone would let through are marked. Then the property that a head parses
//! the same however it is split across reads, over the catalogue and mutations of it.

use super::super::*;

const WS: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

fn ws(extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"
    )
}

/// (head, error): every refusal rule, most of them more than once.
fn refused() -> Vec<(String, HandshakeError)> {
    use HandshakeError::{Malformed as M, TooManyHeaders, UnsupportedVersion};
    let name = M("invalid header name");
    let value = M("invalid header value");
    let token = M("invalid token");
    let te = M("Transfer-Encoding does not end in chunked");
    let key = M("Sec-WebSocket-Key missing, repeated, or not base64 of 16 bytes");
    let g = |headers: &str| format!("GET / HTTP/1.1\r\nHost: a\r\n{headers}\r\n");
    let p = |headers: &str| format!("POST / HTTP/1.1\r\nHost: a\r\n{headers}\r\n");
    let mut many = String::new();
    for i in 0..MAX_HEADERS {
        many += &format!("X-{i}: {i}\r\n");
    }
    vec![
        // obs-fold (RFC 9112 section 5.2), whitespace before the colon (section 5.1)
        (g("X-A: 1\r\n folded\r\n"), name),
        (g("X-A: 1\r\n\tfolded\r\n"), name),
        ("GET / HTTP/1.1\r\n Host: a\r\n\r\n".into(), name),
        (g("X-A : 1\r\n"), name),
        (g("X-A\t: 1\r\n"), name),
        ("GET / HTTP/1.1\r\nHost : a\r\n\r\n".into(), name),
        (g(": empty name\r\n"), name),
        // bare CR, bare LF (httparse takes a bare LF as a line end), NUL, controls
        (g("X-A: 1\rX-B: 2\r\n"), value),
        (g("X-A: 1\r\r\n"), value),
        (
            "GET / HTTP/1.1\rHost: a\r\n\r\n".into(),
            M("invalid line ending"),
        ),
        (
            "GET / HTTP/1.1\nHost: a\n\n".into(),
            M("bare LF line ending"),
        ),
        (g("X-A: 1\n"), M("bare LF line ending")),
        (
            "GET / HTTP/1.1\r\nHost: a\r\n\n".into(),
            M("bare LF line ending"),
        ),
        (g("X-A: 1\0 2\r\n"), value),
        (g("X-\0: 1\r\n"), name),
        (g("X-A: \x01\r\n"), value),
        (g("X-A: a\x1bb\r\n"), value),
        (g("X-A: a\x7fb\r\n"), value),
        (g("X-A: a\x0bb\r\n"), value),
        ("GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n".into(), token),
        ("GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n".into(), token),
        (
            "GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n".into(),
            M("request target is not visible ASCII"),
        ),
        // request line
        ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n".into(), token),
        (
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n".into(),
            M("invalid HTTP version"),
        ),
        (
            "GET / http/1.1\r\nHost: a\r\n\r\n".into(),
            M("invalid HTTP version"),
        ),
        ("GET /\r\nHost: a\r\n\r\n".into(), token),
        ("G(T / HTTP/1.1\r\nHost: a\r\n\r\n".into(), token),
        (
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".into(),
            M("request target form not allowed"),
        ),
        (
            "GET * HTTP/1.1\r\nHost: a\r\n\r\n".into(),
            M("request target form not allowed"),
        ),
        (
            "GET ws HTTP/1.1\r\nHost: a\r\n\r\n".into(),
            M("request target form not allowed"),
        ),
        (
            "GET 1http://a/ HTTP/1.1\r\nHost: a\r\n\r\n".into(),
            M("request target form not allowed"),
        ),
        // Host (RFC 9112 section 3.2)
        (
            "GET / HTTP/1.1\r\n\r\n".into(),
            M("HTTP/1.1 request without Host"),
        ),
        (
            "GET / HTTP/1.1\r\nHost:\r\n\r\n".into(),
            M("HTTP/1.1 request without Host"),
        ),
        (g("Host: a\r\n"), M("more than one Host header")),
        (g("host: b\r\n"), M("more than one Host header")),
        (
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n".into(),
            M("invalid Host"),
        ),
        (
            "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n".into(),
            M("invalid Host"),
        ),
        (
            "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n".into(),
            M("invalid Host"),
        ),
        (
            "GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n".into(),
            M("invalid Host"),
        ),
        (
            "GET / HTTP/1.1\r\nHost: a:123456\r\n\r\n".into(),
            M("invalid Host"),
        ),
        (
            "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n".into(),
            M("invalid Host"),
        ),
        (
            "GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n".into(),
            M("invalid Host"),
        ),
        (
            "GET / HTTP/1.1\r\nHost: []\r\n\r\n".into(),
            M("invalid Host"),
        ),
        (
            "GET / HTTP/1.1\r\nHost: caf\u{e9}\r\n\r\n".into(),
            M("invalid Host"),
        ),
        // body framing (RFC 9112 section 6)
        (
            p("Content-Length: 1\r\nTransfer-Encoding: chunked\r\n"),
            M("both Content-Length and Transfer-Encoding"),
        ),
        (
            p("Transfer-Encoding: chunked\r\nContent-Length: 1\r\n"),
            M("both Content-Length and Transfer-Encoding"),
        ),
        (
            p("Content-Length: 1\r\nContent-Length: 2\r\n"),
            M("conflicting Content-Length headers"),
        ),
        (p("Content-Length: 1, 1\r\n"), M("invalid Content-Length")),
        (p("Content-Length: +1\r\n"), M("invalid Content-Length")),
        (p("Content-Length: 0x1\r\n"), M("invalid Content-Length")),
        (p("Content-Length:\r\n"), M("invalid Content-Length")),
        (
            p("Content-Length: 18446744073709551616\r\n"),
            M("invalid Content-Length"),
        ),
        (p("Transfer-Encoding: gzip\r\n"), te),
        (p("Transfer-Encoding: chunked, gzip\r\n"), te),
        (p("Transfer-Encoding: chunked, chunked\r\n"), te),
        (
            p("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"),
            te,
        ),
        (p("Transfer-Encoding: chunked;x=1\r\n"), te),
        (p("Transfer-Encoding: xchunked\r\n"), te),
        (p("Transfer-Encoding:\r\n"), te),
        (p("Transfer-Encoding: ,\r\n"), te),
        (
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
            M("Transfer-Encoding in an HTTP/1.0 request"),
        ),
        // RFC 6455 section 4.1
        (
            format!(
                "POST /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{WS}\r\n"
            ),
            M("WebSocket upgrade with a method other than GET"),
        ),
        (
            format!(
                "GET /ws HTTP/1.0\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{WS}\r\n"
            ),
            M("WebSocket upgrade over HTTP/1.0"),
        ),
        (
            format!("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n{WS}\r\n"),
            M("Upgrade: websocket without Connection: upgrade"),
        ),
        (
            format!(
                "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n{WS}\r\n"
            ),
            M("Upgrade: websocket without Connection: upgrade"),
        ),
        (
            ws(&format!("{WS}Content-Length: 2\r\n")),
            M("WebSocket upgrade with a body"),
        ),
        (
            ws(&format!("{WS}Transfer-Encoding: chunked\r\n")),
            M("WebSocket upgrade with a body"),
        ),
        (ws("Sec-WebSocket-Version: 13\r\n"), key),
        (
            ws(&format!(
                "{WS}Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            )),
            key,
        ),
        (
            ws("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\nSec-WebSocket-Version: 13\r\n"),
            key,
        ),
        (
            ws("Sec-WebSocket-Key: not base64 at all!!!!!!\r\nSec-WebSocket-Version: 13\r\n"),
            key,
        ),
        (
            ws("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZXg=\r\nSec-WebSocket-Version: 13\r\n"),
            key,
        ),
        (
            ws("Sec-WebSocket-Key:\r\nSec-WebSocket-Version: 13\r\n"),
            key,
        ),
        (
            ws("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"),
            UnsupportedVersion,
        ),
        (
            ws("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n"),
            UnsupportedVersion,
        ),
        (
            ws("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13, 8\r\n"),
            UnsupportedVersion,
        ),
        (
            ws(&format!("{WS}Sec-WebSocket-Version: 13\r\n")),
            UnsupportedVersion,
        ),
        // more than 100 header fields
        (
            format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n"),
            TooManyHeaders,
        ),
    ]
}

/// Heads that must be accepted, close to the refused ones.
fn accepted() -> Vec<String> {
    vec![
        ws(WS),
        ws(&format!("{WS}Content-Length: 0\r\n")),
        format!("GET /ws HTTP/1.1\r\nHost: a\r\nupgrade: WebSocket, h2c\r\nconnection: keep-alive, upgrade\r\n{WS}\r\n"),
        "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n".into(),
        "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n".into(),
        "GET / HTTP/1.1\r\nHost: a\r\nX-A: caf\u{e9} \t x\r\n\r\n".into(),
        "GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\n".into(),
        "GET / HTTP/1.1\r\nHost: 192.0.2.1:80\r\n\r\n".into(),
        "GET / HTTP/1.1\r\nHost: xn--caf-dma.example.\r\n\r\n".into(),
        "GET http://a.example/x?y=1 HTTP/1.1\r\nHost: a.example\r\n\r\n".into(),
        "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n".into(),
        "GET / HTTP/1.0\r\n\r\n".into(),
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, ,chunked\r\n\r\n".into(),
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc".into(),
        "GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\n\r\n".into(),
    ]
}

/// Head length, upgrade, body and the rewritten head, owned.
type Outcome = (usize, Option<Vec<u8>>, Body, Vec<u8>);

fn parse_one(head: &[u8]) -> Result<Parsed<Outcome>, HandshakeError> {
    let client = ClientInfo::direct(
        "203.0.113.7:51234".parse().unwrap(),
        "127.0.0.1:8080".parse().unwrap(),
    );
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    Ok(match parse_request(head, &mut headers)? {
        Parsed::Incomplete => Parsed::Incomplete,
        Parsed::Complete(req) => {
            let mut out = Vec::new();
            req.write_upstream(&client, &mut out);
            Parsed::Complete((req.len, req.upgrade.map(<[u8]>::to_vec), req.body, out))
        }
    })
}

#[test]
fn refused_heads_get_their_reason() {
    for (head, error) in refused() {
        assert_eq!(parse_one(head.as_bytes()), Err(error), "{head:?}");
    }
}

#[test]
fn accepted_heads_are_complete() {
    for head in accepted() {
        assert!(
            matches!(parse_one(head.as_bytes()), Ok(Parsed::Complete(_))),
            "{head:?}: {:?}",
            parse_one(head.as_bytes())
        );
    }
}

/// What httparse on its own does with the heads the strict checks exist for: a test that
/// fails when an httparse upgrade starts refusing them itself (then the check may go).
#[test]
fn httparse_alone_accepts_what_the_strict_checks_refuse() {
    for head in [
        &b"GET / HTTP/1.1\nHost: a\n\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\n\r\n",
        "GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n".as_bytes(),
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let parsed = httparse::Request::new(&mut headers).parse(head);
        assert!(
            matches!(parsed, Ok(httparse::Status::Complete(_))),
            "{:?}",
            String::from_utf8_lossy(head)
        );
    }
}

#[test]
fn other_upgrades_need_the_route_to_list_them() {
    let head = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: foo/2, H2C\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: x\r\n\r\n";
    let client = ClientInfo::direct(
        "203.0.113.7:1".parse().unwrap(),
        "127.0.0.1:8080".parse().unwrap(),
    );
    let rewrite = |extra: &[&str], head: &[u8]| {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let Ok(Parsed::Complete(mut req)) = parse_request(head, &mut headers) else {
            panic!("not complete");
        };
        req.allow_upgrade(extra);
        let mut out = Vec::new();
        req.write_upstream(&client, &mut out);
        (
            req.upgrade.map(<[u8]>::to_vec),
            String::from_utf8(out).unwrap(),
        )
    };

    let (upgrade, text) = rewrite(&[], head);
    assert_eq!(upgrade, None);
    assert!(!text.to_ascii_lowercase().contains("upgrade"), "{text}");
    assert!(!text.contains("HTTP2-Settings"), "{text}");
    assert!(text.contains("\r\nConnection: close\r\n"), "{text}");

    let (upgrade, text) = rewrite(&["other", "h2c"], head);
    assert_eq!(upgrade.as_deref(), Some(&b"H2C"[..]));
    assert!(
        text.contains("\r\nUpgrade: H2C\r\nConnection: upgrade\r\n"),
        "{text}"
    );

    let with_body = b"POST / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nContent-Length: 1\r\n\r\n";
    assert_eq!(rewrite(&["h2c"], with_body).0, None);
    let http_1_0 = b"GET / HTTP/1.0\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n";
    assert_eq!(rewrite(&["h2c"], http_1_0).0, None);
    let no_connection = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n";
    assert_eq!(rewrite(&["h2c"], no_connection).0, None);
}

#[test]
fn websocket_upgrade_sends_only_the_websocket_token() {
    let head = format!(
        "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: h2c, WebSocket\r\nConnection: upgrade\r\n{WS}\r\n"
    );
    let Ok(Parsed::Complete((_, upgrade, _, out))) = parse_one(head.as_bytes()) else {
        panic!("not complete");
    };
    assert_eq!(upgrade.as_deref(), Some(&b"WebSocket"[..]));
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("\r\nUpgrade: WebSocket\r\nConnection: upgrade\r\n"),
        "{text}"
    );
    assert!(!text.contains("h2c"), "{text}");
}

/// The proxy parses the whole buffer again after each read: every prefix must be either
/// "incomplete" or exactly the whole head's result, so no split of the reads changes it.
#[track_caller]
fn assert_split_invariant(head: &[u8]) {
    let whole = parse_one(head);
    for i in 0..head.len() {
        let part = parse_one(&head[..i]);
        assert!(
            part == Ok(Parsed::Incomplete) || part == whole,
            "{:?} split at {i}: {part:?}, whole: {whole:?}",
            String::from_utf8_lossy(head)
        );
    }
}

#[test]
fn every_catalogue_head_is_the_same_at_every_split() {
    for head in accepted() {
        assert_split_invariant(head.as_bytes());
    }
    for (head, _) in refused() {
        assert_split_invariant(head.as_bytes());
    }
}

/// What wsplice writes upstream is itself a head that the strict parser accepts with the
/// same request: the rewrite never produces what it would refuse.
#[track_caller]
fn assert_rewrite_reparses(head: &[u8]) {
    let Ok(Parsed::Complete((_, upgrade, body, out))) = parse_one(head) else {
        return;
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 8];
    match parse_request(&out, &mut headers) {
        Ok(Parsed::Complete(again)) => {
            assert_eq!(again.len, out.len());
            assert_eq!(again.upgrade.map(<[u8]>::to_vec), upgrade);
            assert_eq!(again.body, body);
        }
        other => panic!(
            "{:?} rewritten to {:?}: {other:?}",
            String::from_utf8_lossy(head),
            String::from_utf8_lossy(&out)
        ),
    }
}

/// Mutations of the catalogue (bytes replaced, inserted, removed, picked from the bytes
/// that matter to HTTP framing) keep both properties. Deterministic, so a failure repeats.
#[test]
fn mutated_heads_keep_the_split_and_rewrite_properties() {
    const INTERESTING: &[u8] = b"\r\n :\t\0,;=/[]@\x7f\x80\xffaZ09-";
    let seeds: Vec<Vec<u8>> = accepted()
        .into_iter()
        .chain(refused().into_iter().map(|(h, _)| h))
        .map(String::into_bytes)
        .filter(|h| h.len() < 400)
        .collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    for round in 0..1500 {
        let mut head = seeds[round % seeds.len()].clone();
        for _ in 0..1 + next(3) {
            let at = next(head.len() + 1);
            let byte = INTERESTING[next(INTERESTING.len())];
            match next(3) {
                0 if at < head.len() => head[at] = byte,
                1 => head.insert(at, byte),
                _ if at < head.len() => {
                    head.remove(at);
                }
                _ => head.push(byte),
            }
        }
        assert_split_invariant(&head);
        assert_rewrite_reparses(&head);
    }
    for head in accepted() {
        assert_rewrite_reparses(head.as_bytes());
    }
}
