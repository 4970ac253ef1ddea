//! The RFC 9112 rules httparse leaves to its caller: it accepts a bare LF as a line ending,
//! any byte above 0x7F in the request target, and any Host value. A proxy that lets such a
//! head through hands the upstream something it may read differently, so these are refused.

use super::HandshakeError;

/// Every line of the head ends in CRLF. httparse already refuses a bare CR (and NUL and the
/// other control characters); a bare LF it takes as a line end.
pub(super) fn check_line_endings(head: &[u8]) -> Result<(), HandshakeError> {
    // Every byte against the one before it, without an early exit, so it vectorizes.
    let bare_lf = head.first() == Some(&b'\n')
        || head
            .iter()
            .skip(1)
            .zip(head)
            .fold(false, |found, (&b, &before)| {
                found | (b == b'\n' && before != b'\r')
            });
    if bare_lf {
        Err(HandshakeError::Malformed("bare LF line ending"))
    } else {
        Ok(())
    }
}

/// The request target is visible ASCII in origin form (`/path`), absolute form
/// (`scheme://host/path`), or `*` for OPTIONS. Authority form is CONNECT's, which a reverse
/// proxy does not serve.
pub(super) fn check_target(method: &str, target: &str) -> Result<(), HandshakeError> {
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(HandshakeError::Malformed(
            "request target is not visible ASCII",
        ));
    }
    let absolute = target.split_once("://").is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    });
    if target.starts_with('/') || absolute || (target == "*" && method == "OPTIONS") {
        Ok(())
    } else {
        Err(HandshakeError::Malformed("request target form not allowed"))
    }
}

/// A Host value (trimmed) is empty or `uri-host [":" port]` in the characters RFC 3986 allows
/// there: reg-name, IPv4, or a bracketed IP literal.
pub(super) fn is_valid_host(host: &[u8]) -> bool {
    let (name, port) = match host.first() {
        Some(b'[') => match host.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &host[1..end];
                let valid_literal = !literal.is_empty()
                    && literal
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
                if !valid_literal {
                    return false;
                }
                (&host[..0], &host[end + 1..])
            }
            None => return false,
        },
        _ => match host.iter().position(|&b| b == b':') {
            Some(colon) => (&host[..colon], &host[colon..]),
            None => (host, &host[..0]),
        },
    };
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    let name_ok = name.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    });
    port_ok && name_ok
}

#[cfg(test)]
mod tests;
