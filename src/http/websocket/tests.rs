//! The key and accept checks against RFC 6455's own example and against near misses.

use super::*;

const KEY: &[u8] = b"dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &[u8] = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

#[test]
fn accept_of_the_rfc_example_key() {
    assert_eq!(Accept::for_key(KEY).as_bytes(), ACCEPT);
}

#[test]
fn valid_keys() {
    assert!(is_valid_key(KEY));
    assert!(is_valid_key(b"AAAAAAAAAAAAAAAAAAAAAA=="));
    assert!(is_valid_key(b"/////////////////////w=="));
}

#[test]
fn invalid_keys() {
    for key in [
        &b""[..],
        b"dGhlIHNhbXBsZSBub25jZQ",       // no padding
        b"dGhlIHNhbXBsZSBub25jZQ=",      // short padding
        b"dGhlIHNhbXBsZSBub25jZQ===",    // too long
        b"dGhlIHNhbXBsZSBub25jZR==",     // non-zero trailing bits
        b"dGhlIHNhbXBsZSBub25jZQ-=",     // not in the alphabet
        b"dGhlIHNhbXBsZSBub25jZQ==\0",   // trailing byte
        b"dGhlIHNhbXBsZSBub25jZXg=",     // 17 bytes
        b"dGhlIHNhbXBsZSBub25j",         // 15 bytes
        b"dGhl IHNhbXBsZSBub25jZQ=",     // space inside
        b"AAAAAAAAAAAAAAAAAAAAAAAAAAAA", // 21 bytes
    ] {
        assert!(!is_valid_key(key), "{:?}", String::from_utf8_lossy(key));
    }
}

fn check(head: &[u8], expected: &Expected<'_>) -> Result<(), &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    assert!(resp.parse(head).unwrap().is_complete());
    check_switch(resp.headers, expected)
}

fn websocket() -> Expected<'static> {
    Expected::WebSocket(Accept::for_key(KEY))
}

#[test]
fn valid_switches() {
    for head in [
        &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"[..],
        b"HTTP/1.1 101 x\r\nupgrade: WebSocket\r\nconnection: keep-alive, upgrade\r\nsec-websocket-accept:   s3pPLMBiTxaQ9kYGzzhZRbK+xOo=  \r\nSec-WebSocket-Protocol: chat\r\n\r\n",
    ] {
        assert_eq!(check(head, &websocket()), Ok(()), "{:?}", String::from_utf8_lossy(head));
    }
    let h2c = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: H2C\r\nConnection: Upgrade\r\n\r\n";
    assert_eq!(check(h2c, &Expected::Protocol("h2c")), Ok(()));
}

#[test]
fn invalid_switches() {
    let accept = "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";
    for (headers, why) in [
        (String::new(), "Upgrade is not the protocol the client asked for"),
        (format!("Connection: Upgrade\r\n{accept}"), "Upgrade is not the protocol the client asked for"),
        (format!("Upgrade: h2c\r\nConnection: Upgrade\r\n{accept}"), "Upgrade is not the protocol the client asked for"),
        (format!("Upgrade: websocket, h2c\r\nConnection: Upgrade\r\n{accept}"), "Upgrade is not the protocol the client asked for"),
        (format!("Upgrade: websocket\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{accept}"), "Upgrade is not the protocol the client asked for"),
        (format!("Upgrade: websocket\r\n{accept}"), "Connection does not contain upgrade"),
        (format!("Upgrade: websocket\r\nConnection: close\r\n{accept}"), "Connection does not contain upgrade"),
        ("Upgrade: websocket\r\nConnection: Upgrade\r\n".into(), "missing or repeated Sec-WebSocket-Accept"),
        (format!("Upgrade: websocket\r\nConnection: Upgrade\r\n{accept}{accept}"), "missing or repeated Sec-WebSocket-Accept"),
        ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: S3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n".into(), "Sec-WebSocket-Accept does not match the client's key"),
        ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: dGhlIHNhbXBsZSBub25jZQ==\r\n".into(), "Sec-WebSocket-Accept does not match the client's key"),
        ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept:\r\n".into(), "Sec-WebSocket-Accept does not match the client's key"),
    ] {
        let head = format!("HTTP/1.1 101 Switching Protocols\r\n{headers}\r\n");
        assert_eq!(check(head.as_bytes(), &websocket()), Err(why), "{head:?}");
    }
    let websocket_to_h2c =
        format!("HTTP/1.1 101 x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{accept}\r\n");
    assert_eq!(
        check(websocket_to_h2c.as_bytes(), &Expected::Protocol("h2c")),
        Err("Upgrade is not the protocol the client asked for")
    );
}
