//! Who the client is when a proxy stands in front of wsplice: `trusted_proxies` (the peers
//! whose PROXY headers and `X-Forwarded-For` are believed) and the walk that finds the client
//! in an `X-Forwarded-For` written by them (nginx's `real_ip_recursive on`). Sans-IO.

use std::net::IpAddr;

use super::head::{tokens, trim};

/// One `trusted_proxies` entry: an address and how many of its leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    bits: u8,
}

impl Cidr {
    /// `"10.0.0.0/8"`, `"2001:db8::/32"`, or a single address (all its bits). Bits set past
    /// the prefix are refused: `10.0.0.1/8` is more likely a typo than a network.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (ip, bits) = match text.split_once('/') {
            Some((ip, bits)) => (ip, Some(bits)),
            None => (text, None),
        };
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("{ip:?} is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => match b.parse::<u8>() {
                Ok(n) if n <= max && (b.len() == 1 || !b.starts_with('0')) => n,
                _ => {
                    return Err(format!(
                        "prefix length {b:?} is not a number from 0 to {max}"
                    ));
                }
            },
        };
        let cidr = Cidr { addr, bits };
        if cidr.network() != addr {
            return Err(format!(
                "has bits set past its /{bits} prefix; write the network, {}/{bits}",
                cidr.network()
            ));
        }
        Ok(cidr)
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(v4) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }

    /// Whether `ip` is in this network; an IPv4-mapped IPv6 address counts as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        Cidr { addr: ip, ..*self }.network() == self.addr
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.bits)
    }
}

/// The `trusted_proxies` list. Empty (the default): nobody is trusted, so every incoming
/// `X-Forwarded-For` is replaced and a PROXY listener takes its header from any peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub fn new(list: Vec<Cidr>) -> Self {
        TrustedProxies(list)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client behind trusted `peer`, from the `X-Forwarded-For` values of a request
    /// (`values`, in header order): walking the addresses from the right, the first one not
    /// trusted; the leftmost if all are. An entry that is not an address stops the walk at
    /// the last address reached (the sender before it cannot be told apart from a forger).
    pub fn real_ip<'a>(
        &self,
        peer: IpAddr,
        values: impl DoubleEndedIterator<Item = &'a [u8]>,
    ) -> IpAddr {
        let mut client = peer;
        for entry in values.rev().flat_map(|v| tokens(v).rev()) {
            let Some(ip) = std::str::from_utf8(trim(entry))
                .ok()
                .and_then(|t| t.parse::<IpAddr>().ok())
            else {
                break;
            };
            client = ip;
            if !self.contains(ip) {
                break;
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn list(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::new(entries.iter().map(|e| Cidr::parse(e).unwrap()).collect())
    }

    #[test]
    fn cidrs_parse_and_match() {
        let ten = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(ten.contains(ip("10.255.1.2")));
        assert!(ten.contains(ip("::ffff:10.1.2.3")));
        assert!(!ten.contains(ip("11.0.0.0")));
        assert!(!ten.contains(ip("::a00:1")));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("203.0.113.9")) && !all.contains(ip("2001:db8::1")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        assert!(
            Cidr::parse("2001:db8::1/128")
                .unwrap()
                .contains(ip("2001:db8::1"))
        );
        assert_eq!(ten.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn bad_cidrs_say_why() {
        for (text, why) in [
            ("10.0.0.0/33", "prefix length"),
            ("10.0.0.0/", "prefix length"),
            ("10.0.0.0/08", "prefix length"),
            ("10.0.0.0/x", "prefix length"),
            ("2001:db8::/129", "prefix length"),
            ("10.0.0.1/8", "write the network, 10.0.0.0/8"),
            ("10.0.0/8", "not an IPv4 or IPv6 address"),
            ("localhost", "not an IPv4 or IPv6 address"),
            ("", "not an IPv4 or IPv6 address"),
        ] {
            let err = Cidr::parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn real_ip_walks_from_the_right_past_trusted_addresses() {
        let trusted = list(&["127.0.0.1", "10.0.0.0/8"]);
        let peer = ip("127.0.0.1");
        let walk = |values: &[&str]| trusted.real_ip(peer, values.iter().map(|v| v.as_bytes()));
        assert_eq!(walk(&["203.0.113.9, 127.0.0.5"]), ip("127.0.0.5"));
        assert_eq!(walk(&["203.0.113.9, 10.1.1.1"]), ip("203.0.113.9"));
        assert_eq!(
            walk(&["198.51.100.1, 203.0.113.9, 10.1.1.1"]),
            ip("203.0.113.9")
        );
        // Several headers read as one list, in order.
        assert_eq!(
            walk(&["198.51.100.1", " 10.2.2.2 ,10.1.1.1"]),
            ip("198.51.100.1")
        );
        // All trusted: the leftmost.
        assert_eq!(walk(&["10.3.3.3, 10.1.1.1"]), ip("10.3.3.3"));
        // None: the peer itself.
        assert_eq!(walk(&[]), peer);
        assert_eq!(walk(&[" , "]), peer);
        // Garbage stops the walk at the last address reached.
        assert_eq!(walk(&["203.0.113.9, nonsense, 10.1.1.1"]), ip("10.1.1.1"));
        assert_eq!(walk(&["203.0.113.9:80"]), peer);
        assert_eq!(walk(&["2001:db8::9, 10.1.1.1"]), ip("2001:db8::9"));
    }
}
