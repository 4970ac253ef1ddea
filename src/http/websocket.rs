//! The RFC 6455 opening handshake as a proxy must check it: the client's key, and the
//! upstream's `101`, which must prove it read that key before a single byte is tunnelled
//! (a `101` without it is how an upstream is tricked into a smuggling tunnel).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

use super::head::{tokens, trim};

/// The fixed suffix of RFC 6455 section 1.3 that makes the accept value.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The only protocol version a client may ask for.
pub const VERSION: &[u8] = b"13";

/// The `Sec-WebSocket-Accept` value an upstream must answer a key with: base64 of a SHA-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accept([u8; 28]);

impl Accept {
    /// base64(SHA-1(key + GUID)) of the key exactly as the client sent it (trimmed).
    pub fn for_key(key: &[u8]) -> Accept {
        let digest = Sha1::new().chain_update(key).chain_update(GUID).finalize();
        let mut out = [0u8; 28];
        let written = STANDARD
            .encode_slice(digest, &mut out)
            .expect("20 bytes encode to 28");
        debug_assert_eq!(written, 28);
        Accept(out)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Whether `key` is base64 (with padding, canonical) of exactly 16 bytes, as RFC 6455
/// section 4.1 requires of `Sec-WebSocket-Key`.
pub fn is_valid_key(key: &[u8]) -> bool {
    let mut decoded = [0u8; 18];
    key.len() == 24 && matches!(STANDARD.decode_slice(key, &mut decoded), Ok(16))
}

/// What the upstream's `101` must carry before the tunnel opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected<'a> {
    /// `Upgrade: websocket` and the accept value of the client's key.
    WebSocket(Accept),
    /// `Upgrade: <token>` for a protocol the route lists explicitly.
    Protocol(&'a str),
}

/// Checks the headers of an upstream's `101` against what the request asked for: exactly
/// the requested protocol in `Upgrade`, `upgrade` in `Connection`, and for WebSocket exactly
/// one `Sec-WebSocket-Accept` with the right value. `Err` says what was wrong.
pub fn check_switch(
    headers: &[httparse::Header<'_>],
    expected: &Expected<'_>,
) -> Result<(), &'static str> {
    let protocol: &[u8] = match expected {
        Expected::WebSocket(_) => b"websocket",
        Expected::Protocol(token) => token.as_bytes(),
    };
    let mut upgrade_tokens = 0usize;
    let mut upgrade_matches = false;
    let mut connection_upgrade = false;
    let mut accepts = 0usize;
    let mut accept_matches = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("upgrade") {
            for token in tokens(h.value) {
                upgrade_tokens += 1;
                upgrade_matches = token.eq_ignore_ascii_case(protocol);
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= tokens(h.value).any(|t| t.eq_ignore_ascii_case(b"upgrade"));
        } else if h.name.eq_ignore_ascii_case("sec-websocket-accept") {
            accepts += 1;
            if let Expected::WebSocket(accept) = expected {
                accept_matches = trim(h.value) == accept.as_bytes();
            }
        }
    }
    if upgrade_tokens != 1 || !upgrade_matches {
        return Err("Upgrade is not the protocol the client asked for");
    }
    if !connection_upgrade {
        return Err("Connection does not contain upgrade");
    }
    if let Expected::WebSocket(_) = expected {
        if accepts != 1 {
            return Err("missing or repeated Sec-WebSocket-Accept");
        }
        if !accept_matches {
            return Err("Sec-WebSocket-Accept does not match the client's key");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
