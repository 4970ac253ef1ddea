//! The request heads wsplice refuses, each with the status the client must get. Shared by the
//! tests that send them through the real binary; the unit tests in src/http/strict/
//! check the same rules with their reasons.

const WS: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

/// A WebSocket upgrade of `/ws` with `extra` header lines.
fn ws(extra: &str) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"
    )
    .into_bytes()
}

fn get(headers: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: a\r\n{headers}\r\n").into_bytes()
}

fn post(headers: &str) -> Vec<u8> {
    format!("POST / HTTP/1.1\r\nHost: a\r\n{headers}\r\n").into_bytes()
}

/// (what is wrong, the raw request, the status).
pub fn catalogue() -> Vec<(&'static str, Vec<u8>, u16)> {
    let mut many = String::new();
    for i in 0..100 {
        many += &format!("X-{i}: {i}\r\n");
    }
    vec![
        // RFC 6455 section 4.1
        ("WebSocket upgrade with POST", format!("POST /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{WS}\r\n").into_bytes(), 400),
        ("WebSocket upgrade over HTTP/1.0", format!("GET /ws HTTP/1.0\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{WS}\r\n").into_bytes(), 400),
        ("Upgrade: websocket without Connection: upgrade", format!("GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n{WS}\r\n").into_bytes(), 400),
        ("no Sec-WebSocket-Key", ws("Sec-WebSocket-Version: 13\r\n"), 400),
        ("two Sec-WebSocket-Keys", ws(&format!("{WS}Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n")), 400),
        ("Sec-WebSocket-Key of 17 bytes", ws("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZXg=\r\nSec-WebSocket-Version: 13\r\n"), 400),
        ("Sec-WebSocket-Key not base64", ws("Sec-WebSocket-Key: !!!!!!!!!!!!!!!!!!!!!!==\r\nSec-WebSocket-Version: 13\r\n"), 400),
        ("WebSocket upgrade with a body", ws(&format!("{WS}Content-Length: 5\r\n")), 400),
        ("WebSocket upgrade with a chunked body", ws(&format!("{WS}Transfer-Encoding: chunked\r\n")), 400),
        ("no Sec-WebSocket-Version", ws("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"), 426),
        ("Sec-WebSocket-Version: 8", ws("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n"), 426),
        ("Sec-WebSocket-Version: 13, 8", ws("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13, 8\r\n"), 426),
        // RFC 9112 framing and syntax
        ("Content-Length with Transfer-Encoding", post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"), 400),
        ("Transfer-Encoding with Content-Length", post("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"), 400),
        ("two different Content-Lengths", post("Content-Length: 5\r\nContent-Length: 6\r\n"), 400),
        ("Content-Length list", post("Content-Length: 5, 5\r\n"), 400),
        ("Content-Length not a number", post("Content-Length: 0x5\r\n"), 400),
        ("Content-Length overflowing", post("Content-Length: 99999999999999999999\r\n"), 400),
        ("Transfer-Encoding gzip", post("Transfer-Encoding: gzip\r\n"), 400),
        ("Transfer-Encoding chunked, gzip", post("Transfer-Encoding: chunked, gzip\r\n"), 400),
        ("chunked twice", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"), 400),
        ("Transfer-Encoding in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), 400),
        ("obs-fold", get("X-A: 1\r\n folded\r\n"), 400),
        ("obs-fold with a tab", get("X-A: 1\r\n\tfolded\r\n"), 400),
        ("space before the colon", get("Transfer-Encoding : chunked\r\n"), 400),
        ("tab before the colon", get("X-A\t: 1\r\n"), 400),
        ("bare CR in a value", get("X-A: 1\rX-B: 2\r\n"), 400),
        ("bare LF line ending", b"GET / HTTP/1.1\nHost: a\n\n".to_vec(), 400),
        ("bare LF after a header", get("X-A: 1\n"), 400),
        ("NUL in a value", get("X-A: a\0b\r\n"), 400),
        ("NUL in a name", get("X-\0: 1\r\n"), 400),
        ("control character in a value", get("X-A: a\x01b\r\n"), 400),
        ("DEL in a value", get("X-A: a\x7fb\r\n"), 400),
        ("NUL in the target", b"GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 400),
        ("encoded NUL in the target", b"GET /a%00b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 400),
        ("non-ASCII in the target", "GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n".as_bytes().to_vec(), 400),
        ("two spaces in the request line", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 400),
        ("HTTP/2.0 request line", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n".to_vec(), 400),
        ("CONNECT authority form", b"CONNECT internal:22 HTTP/1.1\r\nHost: internal:22\r\n\r\n".to_vec(), 400),
        ("asterisk form with GET", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 400),
        ("TLS hello on the plain port", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(), 400),
        ("no Host in HTTP/1.1", b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("empty Host in HTTP/1.1", b"GET / HTTP/1.1\r\nHost:\r\n\r\n".to_vec(), 400),
        ("two Hosts", get("Host: b\r\n"), 400),
        ("Host with a space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n".to_vec(), 400),
        ("Host with userinfo", b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n".to_vec(), 400),
        ("Host with a path", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n".to_vec(), 400),
        ("more than 100 header fields", format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").into_bytes(), 431),
        ("head over limits.max_request_head", get(&format!("Cookie: {}\r\n", "x".repeat(20_000))), 431),
    ]
}
