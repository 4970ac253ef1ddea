//! Host names as routes and certificates name them: an exact name or a one-label wildcard
//! (`*.example.com`), compared without the port and without regard to case. One matcher for
//! both, so a route's `host` and a certificate's SAN can never disagree about a name.

/// An exact host name or a wildcard covering exactly one label in front of its suffix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Lower case.
    Exact(String),
    /// `*.example.com`, kept as `.example.com` (lower case): `a.example.com` matches,
    /// `example.com` and `a.b.example.com` do not (RFC 6125 section 6.4.3).
    Wildcard(String),
}

impl HostPattern {
    /// Reads `chat.example.com` or `*.example.com`. Refuses ports, schemes, paths, IP-style
    /// brackets and partial wildcards (`a*.example.com`), which no request's Host could match
    /// as meant.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if name.is_empty() {
            return Err("is empty; write a name such as \"chat.example.com\" or \"*.example.com\"");
        }
        if name.contains('*') {
            return Err(
                "may only be a wildcard as a whole first label, e.g. \"*.example.com\" (one label)",
            );
        }
        if name.contains(':') || name.contains('/') {
            return Err("must be a host name only, without scheme, port or path");
        }
        let valid_label = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.len() > 253 || !name.split('.').all(valid_label) {
            return Err("is not a DNS name (letters, digits, '-' in dot-separated labels)");
        }
        if wildcard && !name.contains('.') {
            return Err(
                "is too broad: a wildcard needs at least two labels after it, e.g. \"*.example.com\"",
            );
        }
        let lower = name.to_ascii_lowercase();
        Ok(if wildcard {
            HostPattern::Wildcard(format!(".{lower}"))
        } else {
            HostPattern::Exact(lower)
        })
    }

    /// Whether `host` (no port; any case) is this name or falls under this wildcard.
    /// Allocation-free: it runs per request.
    pub fn matches(&self, host: &[u8]) -> bool {
        let host = host.strip_suffix(b".").unwrap_or(host);
        match self {
            HostPattern::Exact(name) => host.eq_ignore_ascii_case(name.as_bytes()),
            HostPattern::Wildcard(suffix) => {
                let suffix = suffix.as_bytes();
                host.len() > suffix.len() && {
                    let (label, rest) = host.split_at(host.len() - suffix.len());
                    rest.eq_ignore_ascii_case(suffix) && !label.contains(&b'.')
                }
            }
        }
    }

    /// How specific a match on this pattern is: exact names beat wildcards.
    pub fn rank(&self) -> u8 {
        match self {
            HostPattern::Exact(_) => 2,
            HostPattern::Wildcard(_) => 1,
        }
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

/// The name part of a Host value: `example.com:8443` -> `example.com`, `[::1]:80` -> `[::1]`,
/// surrounding whitespace dropped.
pub fn without_port(host: &[u8]) -> &[u8] {
    let host = host.trim_ascii();
    if host.first() == Some(&b'[') {
        return match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}

/// Whether `host` (no port) is an IP address literal rather than a name.
pub fn is_ip_literal(host: &[u8]) -> bool {
    host.first() == Some(&b'[')
        || std::str::from_utf8(host).is_ok_and(|h| h.parse::<std::net::Ipv4Addr>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> HostPattern {
        HostPattern::parse(text).unwrap()
    }

    #[test]
    fn exact_names_match_in_any_case_and_with_a_final_dot() {
        let chat = p("Chat.Example.com");
        assert_eq!(chat, HostPattern::Exact("chat.example.com".into()));
        assert!(chat.matches(b"chat.example.com"));
        assert!(chat.matches(b"CHAT.EXAMPLE.COM"));
        assert!(chat.matches(b"chat.example.com."));
        assert!(!chat.matches(b"a.chat.example.com"));
        assert!(!chat.matches(b"example.com"));
    }

    #[test]
    fn a_wildcard_covers_one_label_only() {
        let w = p("*.example.net");
        assert!(w.matches(b"a.example.net"));
        assert!(w.matches(b"A.EXAMPLE.NET"));
        assert!(!w.matches(b"example.net"));
        assert!(!w.matches(b".example.net"));
        assert!(!w.matches(b"a.b.example.net"));
        assert!(!w.matches(b"aexample.net"));
        assert_eq!(w.to_string(), "*.example.net");
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "",
            "*.",
            "*",
            "*.com",
            "a*.example.com",
            "*.*.example.com",
            "example.com:443",
            "https://example.com",
            "exa mple.com",
            "a..b",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_port_is_not_part_of_the_name() {
        assert_eq!(without_port(b"example.com:8443"), b"example.com");
        assert_eq!(without_port(b"example.com"), b"example.com");
        assert_eq!(without_port(b" example.com "), b"example.com");
        assert_eq!(without_port(b"[::1]:80"), b"[::1]");
        assert_eq!(without_port(b"[::1]"), b"[::1]");
        assert_eq!(without_port(b"10.0.0.1:80"), b"10.0.0.1");
        assert!(is_ip_literal(b"10.0.0.1"));
        assert!(is_ip_literal(b"[::1]"));
        assert!(!is_ip_literal(b"example.com"));
    }
}
