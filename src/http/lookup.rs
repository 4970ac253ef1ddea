//! Finding one value in a parsed request head without allocating: a header field, a cookie,
//! a query parameter. The balancer hashes what these return, so they borrow the read buffer
//! and never decode or copy.

use super::head::trim;

/// An RFC 9110 token (one or more tchar): what a header name and an RFC 6265 cookie name are.
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The value of the first header field named `name` (case-insensitive), trimmed.
pub fn header<'b>(headers: &[httparse::Header<'b>], name: &str) -> Option<&'b [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| trim(h.value))
}

/// The value of the first cookie named `name` (case-sensitive, RFC 6265 section 5.4) in the
/// request's `Cookie` fields (`a=1; b=2`), trimmed, quotes kept.
pub fn cookie<'b>(headers: &[httparse::Header<'b>], name: &[u8]) -> Option<&'b [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
        .flat_map(|h| h.value.split(|&b| b == b';'))
        .find_map(|pair| {
            let (key, value) = split_once(pair, b'=')?;
            (trim(key) == name).then(|| trim(value))
        })
}

/// The value of the first parameter named `name` (case-sensitive) in `query` (`?a=1&b=2`, or
/// without the `?`), as written: not percent-decoded. A parameter without `=` has an empty
/// value.
pub fn query_param<'b>(query: &'b [u8], name: &[u8]) -> Option<&'b [u8]> {
    let query = query.strip_prefix(b"?").unwrap_or(query);
    query.split(|&b| b == b'&').find_map(|pair| {
        let (key, value) = split_once(pair, b'=').unwrap_or((pair, &[]));
        (key == name).then_some(value)
    })
}

fn split_once(s: &[u8], at: u8) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&b| b == at)?;
    Some((&s[..i], &s[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'b>(name: &'b str, value: &'b str) -> httparse::Header<'b> {
        httparse::Header {
            name,
            value: value.as_bytes(),
        }
    }

    #[test]
    fn tokens_are_tchar_only() {
        assert!(is_token(b"wsplice_srv"));
        assert!(is_token(b"X-User-Id"));
        assert!(!is_token(b""));
        assert!(!is_token(b"a b"));
        assert!(!is_token(b"a=b"));
        assert!(!is_token(b"a;b"));
        assert!(!is_token("é".as_bytes()));
    }

    #[test]
    fn header_is_the_first_field_of_that_name() {
        let fields = [h("Host", "x"), h("x-user", "  alice "), h("X-User", "bob")];
        assert_eq!(header(&fields, "X-User"), Some(&b"alice"[..]));
        assert_eq!(header(&fields, "x-other"), None);
    }

    #[test]
    fn cookie_finds_its_pair_in_any_cookie_field() {
        let fields = [
            h("Cookie", "a=1; session=xyz ;b"),
            h("cookie", "sid=2; sid=3"),
        ];
        assert_eq!(cookie(&fields, b"session"), Some(&b"xyz"[..]));
        assert_eq!(cookie(&fields, b"a"), Some(&b"1"[..]));
        assert_eq!(cookie(&fields, b"sid"), Some(&b"2"[..]));
        assert_eq!(
            cookie(&fields, b"Session"),
            None,
            "names are case-sensitive"
        );
        assert_eq!(cookie(&fields, b"b"), None, "a pair without = has no value");
        assert_eq!(cookie(&fields, b"xyz"), None);
    }

    #[test]
    fn query_param_is_read_as_written() {
        assert_eq!(query_param(b"?room=42&u=a%20b", b"u"), Some(&b"a%20b"[..]));
        assert_eq!(query_param(b"?room=42&u=a", b"room"), Some(&b"42"[..]));
        assert_eq!(query_param(b"?flag&x=1", b"flag"), Some(&b""[..]));
        assert_eq!(query_param(b"room=1", b"room"), Some(&b"1"[..]));
        assert_eq!(query_param(b"?roomy=1", b"room"), None);
        assert_eq!(query_param(b"", b"room"), None);
    }
}
