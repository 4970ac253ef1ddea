//! Origin allow-lists (cross-site WebSocket hijacking): a browser lets any page open a
//! WebSocket to any host, with that host's cookies, and tells the server only through
//! `Origin` (RFC 6454) which page asked. A route's `allowed_origins` lists the serialised
//! origins (`scheme://host[:port]`) whose pages may upgrade; `https://*.example.com` stands
//! for any one label in front of `example.com`.

/// One entry of `allowed_origins`, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    scheme: String,
    /// The host after `*.` for a wildcard, else the whole host.
    host: String,
    wildcard: bool,
    /// The port as written (`:8443`), or empty: browsers leave out the scheme's default.
    port: String,
}

impl OriginPattern {
    /// Parses `scheme://host[:port]`, `host` possibly starting with `*.`.
    pub fn parse(text: &str) -> Result<OriginPattern, &'static str> {
        let lower = text.to_ascii_lowercase();
        let Some((scheme, rest)) = lower.split_once("://") else {
            return Err("is not an origin; write e.g. \"https://app.example.com\"");
        };
        if scheme != "http" && scheme != "https" {
            return Err("must start with http:// or https://");
        }
        if rest.contains(['/', '?', '#', '@']) {
            return Err(
                "must be scheme://host[:port] only, without a path (browsers send no path)",
            );
        }
        let (host, port) = split_port(rest).ok_or("has an invalid port")?;
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(base) => (true, base),
            None => (false, host),
        };
        if host.contains('*') {
            return Err("may use * only as the whole first label, e.g. \"https://*.example.com\"");
        }
        if wildcard && !host.contains('.') {
            return Err(
                "wildcard needs at least two labels after it, e.g. \"https://*.example.com\"",
            );
        }
        let valid_host = !host.is_empty()
            && host.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
            || is_bracketed_ipv6(host) && !wildcard;
        if !valid_host {
            return Err("has an invalid host");
        }
        Ok(OriginPattern {
            scheme: scheme.to_string(),
            host: host.to_string(),
            wildcard,
            port: port.to_string(),
        })
    }

    /// Whether an `Origin` header value is one this pattern allows.
    pub fn matches(&self, origin: &[u8]) -> bool {
        let Ok(origin) = std::str::from_utf8(origin) else {
            return false;
        };
        let Some((scheme, rest)) = origin.trim().split_once("://") else {
            return false;
        };
        let Some((host, port)) = split_port(rest) else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case(&self.scheme) || port != self.port {
            return false;
        }
        if !self.wildcard {
            return host.eq_ignore_ascii_case(&self.host);
        }
        // One label, then `.` and the base.
        let Some(cut) = host.len().checked_sub(self.host.len() + 1) else {
            return false;
        };
        let (label, base) = host.split_at(cut);
        base.as_bytes()[0] == b'.'
            && base[1..].eq_ignore_ascii_case(&self.host)
            && !label.is_empty()
            && !label.contains('.')
    }
}

/// Splits `host[:port]` (the host possibly a bracketed IPv6 address); `None`: a bad port.
fn split_port(rest: &str) -> Option<(&str, &str)> {
    let colon = match rest.rfind(':') {
        Some(i) if !rest[i..].contains(']') => i,
        _ => return Some((rest, "")),
    };
    let port = &rest[colon..];
    let digits = &port[1..];
    if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((&rest[..colon], port))
}

fn is_bracketed_ipv6(host: &str) -> bool {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
}

/// What a route's origin policy says of a request's `Origin` headers.
pub fn allowed(
    patterns: &[OriginPattern],
    require: bool,
    headers: &[httparse::Header<'_>],
) -> Result<(), &'static str> {
    if patterns.is_empty() && !require {
        return Ok(());
    }
    let mut origins = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("origin"));
    let origin = match (origins.next(), origins.next()) {
        (None, _) if require => return Err("no Origin, and the route requires one"),
        (None, _) => return Ok(()),
        (Some(_), Some(_)) => return Err("more than one Origin"),
        (Some(h), None) => h.value,
    };
    if patterns.is_empty() || patterns.iter().any(|p| p.matches(origin)) {
        Ok(())
    } else {
        Err("Origin not in the route's allowed_origins")
    }
}

#[cfg(test)]
mod tests;
