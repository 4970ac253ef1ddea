//! The request target reduced to the one path that is both routed on and sent upstream, so an
//! upstream that resolves `..` or decodes `%2e` cannot act on a path another route owns.
//! Paths that upstreams split into segments differently are refused instead of guessed at.

use super::strict::is_valid_host;

/// A request target split into the parts the rewrite uses; the fragment is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Target<'b> {
    /// The authority of an absolute-form target: the `Host` the upstream gets (RFC 9112
    /// section 3.2.2).
    pub authority: Option<&'b [u8]>,
    /// The path as the client wrote it: `/...`, or `*` for `OPTIONS *`.
    pub path: &'b [u8],
    /// `?` and the query, passed on verbatim; empty when there is none.
    pub query: &'b [u8],
}

impl<'b> Target<'b> {
    /// Splits a target that `strict::check_target` accepted and checks its path ([`check`]).
    pub fn parse(target: &'b [u8]) -> Result<Self, &'static str> {
        let scheme_end = match target.first() {
            Some(b'/') => None,
            _ => find(target, b"://"),
        };
        let (authority, rest) = match scheme_end {
            Some(scheme_end) => {
                let rest = &target[scheme_end + 3..];
                let end = rest
                    .iter()
                    .position(|&b| matches!(b, b'/' | b'?' | b'#'))
                    .unwrap_or(rest.len());
                let authority = &rest[..end];
                if authority.contains(&b'@') {
                    return Err("userinfo in the request target");
                }
                if authority.is_empty() || !is_valid_host(authority) {
                    return Err("absolute-form target without a valid host");
                }
                (Some(authority), &rest[end..])
            }
            None => (None, target),
        };
        let rest = rest
            .iter()
            .position(|&b| b == b'#')
            .map_or(rest, |i| &rest[..i]);
        let (path, query) = rest
            .iter()
            .position(|&b| b == b'?')
            .map_or((rest, &rest[rest.len()..]), |i| rest.split_at(i));
        if path != b"*" {
            check(path)?;
        }
        Ok(Target {
            authority,
            path,
            query,
        })
    }
}

/// The paths refused outright, because upstreams disagree on what they mean: a `\` or an
/// encoded `/` or `\` (one segment or two?), a `%` not followed by two hex digits, and a
/// dot segment with parameters (`..;x`, which Tomcat-style servers resolve as `..`). An
/// encoded control character is refused too (nginx answers `%00` with 400): decoded, a NUL
/// ends a C string early and a CR or LF splits a line an upstream logs or forwards.
pub(crate) fn check(path: &[u8]) -> Result<(), &'static str> {
    for segment in path.split(|&b| b == b'/') {
        let mut rest = segment;
        while let Some((&b, after)) = rest.split_first() {
            match b {
                b'\\' => return Err("backslash in the path"),
                b'%' => match decode(after) {
                    Some(b'/' | b'\\') => {
                        return Err("encoded slash or backslash (%2F, %5C) in the path");
                    }
                    Some(c) if c.is_ascii_control() => {
                        return Err("encoded control character (%00 to %1F, %7F) in the path");
                    }
                    Some(_) => {}
                    None => return Err("'%' not followed by two hex digits in the path"),
                },
                _ => {}
            }
            rest = after;
        }
        if let Some(semicolon) = segment.iter().position(|&b| b == b';')
            && dots(&segment[..semicolon]).is_some()
        {
            return Err("dot segment with parameters (\"..;\") in the path");
        }
    }
    Ok(())
}

/// Appends the normal form of `path` (one that passed [`check`]) to `out`, without
/// allocating beyond `out`'s growth: percent-encoded unreserved characters decoded and other
/// escapes in upper case (RFC 3986 section 6.2.2), empty segments merged (as nginx's
/// `merge_slashes`), then `.` and `..` removed (section 5.2.4). The result starts with `/`
/// and has no dot segment, so routing on it and sending it upstream agree; `*` stays `*`.
pub(crate) fn normalize(path: &[u8], out: &mut Vec<u8>) {
    if path == b"*" {
        out.extend_from_slice(path);
        return;
    }
    // An absolute-form target may have an empty path: that is `/` (RFC 9112 section 3.2.2).
    let mut rest = path.strip_prefix(b"/").unwrap_or(path);
    let start = out.len();
    loop {
        let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
        let (segment, last) = (&rest[..end], end == rest.len());
        let dots = dots(segment);
        match dots {
            Some(1) => {}
            Some(_) => {
                let parent = out[start..].iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(start + parent);
            }
            None if segment.is_empty() && !last => {}
            None => {
                out.push(b'/');
                push_decoded(segment, out);
            }
        }
        if last {
            // A path ending in `/.` or `/..` names a directory, as one ending in `/` does.
            if dots.is_some() {
                out.push(b'/');
            }
            return;
        }
        rest = &rest[end + 1..];
    }
}

/// `Some(1)` for `.`, `Some(2)` for `..`, each dot possibly written `%2E`; else `None`.
fn dots(segment: &[u8]) -> Option<usize> {
    let mut n = 0;
    let mut rest = segment;
    while !rest.is_empty() {
        rest = match rest {
            [b'.', after @ ..] => after,
            [b'%', b'2', b'e' | b'E', after @ ..] => after,
            _ => return None,
        };
        n += 1;
    }
    matches!(n, 1 | 2).then_some(n)
}

fn push_decoded(segment: &[u8], out: &mut Vec<u8>) {
    let mut rest = segment;
    while let Some((&b, after)) = rest.split_first() {
        match (b, decode(after)) {
            (b'%', Some(c))
                if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') =>
            {
                out.push(c);
                rest = &after[2..];
            }
            (b'%', Some(_)) => {
                out.extend([
                    b'%',
                    after[0].to_ascii_uppercase(),
                    after[1].to_ascii_uppercase(),
                ]);
                rest = &after[2..];
            }
            _ => {
                out.push(b);
                rest = after;
            }
        }
    }
}

/// The byte that two hex digits at the start of `s` encode.
fn decode(s: &[u8]) -> Option<u8> {
    let hex = |d: u8| char::from(d).to_digit(16);
    match s {
        [hi, lo, ..] => Some((hex(*hi)? * 16 + hex(*lo)?) as u8),
        _ => None,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
#[path = "path/tests.rs"]
mod tests;
