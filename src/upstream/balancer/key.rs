//! What `balance = "hash"` hashes (`hash_key`): the client's address, a header field, a
//! cookie, a query parameter, or the path. The value is found in the parsed request head and
//! hashed where it lies, with no copy and no allocation; a request that does not carry it
//! (or carries it empty) has no key and is balanced by round robin.

use std::net::IpAddr;

use super::stable_hash::{StableHasher, stable_hash};
use crate::http::RequestHead;
use crate::http::lookup::{cookie, header, is_token, query_param};

/// A group's `hash_key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The address wsplice reports as the client's (nginx `ip_hash`, but the whole address).
    ClientIp,
    /// The first field of this name (nginx `hash $http_x_user consistent`).
    Header(String),
    /// This cookie's value (nginx `hash $cookie_x consistent`).
    Cookie(String),
    /// This query parameter's value, as written (nginx `hash $arg_x consistent`).
    Query(String),
    /// The normalised path, without the query (nginx `hash $uri consistent`).
    Path,
}

/// The forms `hash_key` takes, for error messages.
pub const FORMS: &str =
    "\"client_ip\", \"path\", \"header:NAME\", \"cookie:NAME\" or \"query:NAME\"";

impl std::fmt::Display for HashKey {
    /// As `hash_key` is written.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HashKey::ClientIp => f.write_str("client_ip"),
            HashKey::Header(name) => write!(f, "header:{name}"),
            HashKey::Cookie(name) => write!(f, "cookie:{name}"),
            HashKey::Query(name) => write!(f, "query:{name}"),
            HashKey::Path => f.write_str("path"),
        }
    }
}

impl HashKey {
    /// Reads `hash_key`; Err says what is wrong with it.
    pub fn parse(text: &str) -> Result<HashKey, String> {
        match text {
            "client_ip" => return Ok(HashKey::ClientIp),
            "path" => return Ok(HashKey::Path),
            _ => {}
        }
        let Some((kind, name)) = text.split_once(':') else {
            return Err(format!("{text:?} is not a hash key; use {FORMS}"));
        };
        let check = |valid: bool, what: &str| {
            if valid {
                Ok(name.to_string())
            } else {
                Err(format!("{text:?}: {name:?} is not {what}"))
            }
        };
        match kind {
            "header" => check(
                is_token(name.as_bytes()),
                "a header name (letters, digits and !#$%&'*+-.^_`|~)",
            )
            .map(HashKey::Header),
            "cookie" => check(
                is_token(name.as_bytes()),
                "a cookie name (an RFC 6265 token: letters, digits and !#$%&'*+-.^_`|~)",
            )
            .map(HashKey::Cookie),
            "query" => check(
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_graphic() && !b"&=#?".contains(&b)),
                "a query parameter name (printable, without & = # ?)",
            )
            .map(HashKey::Query),
            _ => Err(format!("{text:?} is not a hash key; use {FORMS}")),
        }
    }

    /// The hash of this key in a request, or None when the request does not carry it.
    /// `path` is the normalised path the request was routed on; `client` the client address.
    pub fn hash(&self, head: &RequestHead<'_, '_>, path: &[u8], client: IpAddr) -> Option<u64> {
        let value = match self {
            HashKey::ClientIp => {
                return Some(match client.to_canonical() {
                    IpAddr::V4(ip) => stable_hash(&ip.octets()),
                    IpAddr::V6(ip) => stable_hash(&ip.octets()),
                });
            }
            HashKey::Header(name) => header(head.headers, name),
            HashKey::Cookie(name) => cookie(head.headers, name.as_bytes()),
            HashKey::Query(name) => query_param(head.query(), name.as_bytes()),
            HashKey::Path => Some(path),
        }?;
        (!value.is_empty()).then(|| StableHasher::default().write(value).finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{MAX_HEADERS, Parsed, parse_request};

    #[test]
    fn forms_parse_and_mistakes_say_why() {
        assert_eq!(HashKey::parse("client_ip"), Ok(HashKey::ClientIp));
        assert_eq!(HashKey::parse("path"), Ok(HashKey::Path));
        assert_eq!(
            HashKey::parse("header:X-User"),
            Ok(HashKey::Header("X-User".into()))
        );
        assert_eq!(
            HashKey::parse("cookie:sid"),
            Ok(HashKey::Cookie("sid".into()))
        );
        assert_eq!(
            HashKey::parse("query:room"),
            Ok(HashKey::Query("room".into()))
        );
        for (bad, says) in [
            ("ip", "is not a hash key"),
            ("url:x", "is not a hash key"),
            ("header:", "is not a header name"),
            ("header:X User", "is not a header name"),
            ("cookie:a=b", "is not a cookie name"),
            ("query:a&b", "is not a query parameter name"),
        ] {
            let err = HashKey::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    fn key_of(key: &str, request: &[u8], client: &str) -> Option<u64> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let Ok(Parsed::Complete(head)) = parse_request(request, &mut headers) else {
            panic!("a complete head");
        };
        let mut out = Vec::new();
        let path = head.write_request_line(&mut out);
        HashKey::parse(key)
            .unwrap()
            .hash(&head, &out[path], client.parse().unwrap())
    }

    const REQUEST: &[u8] =
        b"GET /a/./b?room=7&u= HTTP/1.1\r\nHost: x\r\nX-User: alice\r\nCookie: sid=s1; e=\r\n\r\n";

    #[test]
    fn each_key_hashes_its_bytes_and_a_missing_or_empty_one_is_none() {
        let ip = "10.0.0.1";
        assert_eq!(
            key_of("header:x-user", REQUEST, ip),
            Some(stable_hash(b"alice"))
        );
        assert_eq!(key_of("cookie:sid", REQUEST, ip), Some(stable_hash(b"s1")));
        assert_eq!(key_of("query:room", REQUEST, ip), Some(stable_hash(b"7")));
        assert_eq!(key_of("path", REQUEST, ip), Some(stable_hash(b"/a/b")));
        for missing in [
            "header:x-other",
            "cookie:e",
            "cookie:x",
            "query:u",
            "query:x",
        ] {
            assert_eq!(key_of(missing, REQUEST, ip), None, "{missing}");
        }
    }

    #[test]
    fn client_ip_is_the_address_alone() {
        let a = key_of("client_ip", REQUEST, "10.0.0.1");
        assert_eq!(a, Some(stable_hash(&[10, 0, 0, 1])));
        assert_eq!(a, key_of("client_ip", REQUEST, "::ffff:10.0.0.1"));
        assert_ne!(a, key_of("client_ip", REQUEST, "10.0.0.2"));
    }
}
