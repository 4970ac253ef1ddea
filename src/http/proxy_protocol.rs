//! The PROXY protocol (HAProxy, versions 1 and 2), sans-IO: a load balancer in front of
//! wsplice writes it first on each connection to say who the client is, and wsplice writes it
//! to upstreams that want the same. Parsing borrows the bytes read so far and returns
//! "need more" as a value, like the request head parser, so it is unit-tested and fuzzed alone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::head::Parsed;

/// The v2 signature: no HTTP request, TLS record or v1 header starts this way.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (the specification's own bound).
pub const V1_MAX: usize = 107;
/// The longest header this parser takes: a v2 header's address block and TLVs may say up to
/// 64 KiB, but a balancer sends a few hundred bytes; the reader's buffer bounds it anyway.
pub const MAX_HEADER: usize = 16 + 4096;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_FIXED: usize = 16;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A relayed connection: the client's address and the address it connected to.
    Proxy {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The connection is the balancer's own (v2 `LOCAL`, e.g. a health check), or it could
    /// not say the client's address (v1 `UNKNOWN`, v2 `AF_UNSPEC` or `AF_UNIX`): the TCP
    /// peer is the client.
    Local,
}

/// Why bytes are not a PROXY header. Every variant is fatal: the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The first bytes are neither `PROXY ` nor the v2 signature.
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("malformed PROXY v1 header: {0}")]
    V1(&'static str),
    #[error("malformed PROXY v2 header: {0}")]
    V2(&'static str),
}

/// Parses the header at the start of `buf`: the header and its length (the bytes after it
/// belong to the next protocol), or `Incomplete` while `buf` is a strict prefix of one.
pub fn parse(buf: &[u8]) -> Result<Parsed<(Header, usize)>, Error> {
    let Some(&first) = buf.first() else {
        return Ok(Parsed::Incomplete);
    };
    if first == V1_PREFIX[0] {
        parse_v1(buf)
    } else if first == V2_SIGNATURE[0] {
        parse_v2(buf)
    } else {
        Err(Error::Missing)
    }
}

/// Whether `buf` is a prefix of `want` or starts with all of it.
fn prefix_matches(buf: &[u8], want: &[u8]) -> bool {
    let n = buf.len().min(want.len());
    buf[..n] == want[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Parsed<(Header, usize)>, Error> {
    if !prefix_matches(buf, V1_PREFIX) {
        return Err(Error::Missing);
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(cr) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        if buf.len() >= V1_MAX {
            return Err(Error::V1("no CRLF within 107 bytes"));
        }
        return Ok(Parsed::Incomplete);
    };
    if window[cr] != b'\r' {
        return Err(Error::V1("line ends in a bare LF"));
    }
    if cr + 2 > V1_MAX {
        return Err(Error::V1("no CRLF within 107 bytes"));
    }
    match buf.get(cr + 1) {
        None => return Ok(Parsed::Incomplete),
        Some(b'\n') => {}
        Some(_) => return Err(Error::V1("CR not followed by LF")),
    }
    let len = cr + 2;
    let line = &buf[V1_PREFIX.len()..cr];
    if line.starts_with(b"UNKNOWN") && matches!(line.get(7), None | Some(b' ')) {
        // The rest of the line is to be ignored (specification, section 2.1).
        return Ok(Parsed::Complete((Header::Local, len)));
    }
    let mut fields = line.split(|&b| b == b' ');
    let (Some(family), Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(Error::V1(
            "expected TCP4|TCP6, two addresses and two ports, separated by single spaces",
        ));
    };
    let v6 = match family {
        b"TCP4" => false,
        b"TCP6" => true,
        _ => return Err(Error::V1("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let ip = |text: &[u8]| -> Result<IpAddr, Error> {
        let text = std::str::from_utf8(text).map_err(|_| Error::V1("invalid address"))?;
        let ip = if v6 {
            text.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            text.parse::<Ipv4Addr>().map(IpAddr::V4)
        };
        ip.map_err(|_| Error::V1("address is not of the protocol's family"))
    };
    let source = SocketAddr::new(ip(src)?, port(sport)?);
    let destination = SocketAddr::new(ip(dst)?, port(dport)?);
    Ok(Parsed::Complete((
        Header::Proxy {
            source,
            destination,
        },
        len,
    )))
}

/// A v1 port: 0 to 65535 in decimal, without a leading zero.
fn port(text: &[u8]) -> Result<u16, Error> {
    let valid = !text.is_empty()
        && text.len() <= 5
        && text.iter().all(u8::is_ascii_digit)
        && (text[0] != b'0' || text.len() == 1);
    let n = valid
        .then(|| text.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0')))
        .and_then(|n| u16::try_from(n).ok());
    n.ok_or(Error::V1("port is not a number from 0 to 65535"))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed<(Header, usize)>, Error> {
    if !prefix_matches(buf, &V2_SIGNATURE) {
        return Err(Error::Missing);
    }
    if buf.len() < V2_FIXED {
        // Check what has come of the version byte early: a v1 client never gets here.
        if let Some(&vc) = buf.get(12)
            && vc >> 4 != 2
        {
            return Err(Error::V2("version is not 2"));
        }
        return Ok(Parsed::Incomplete);
    }
    let (vc, fam, len) = (buf[12], buf[13], u16::from_be_bytes([buf[14], buf[15]]));
    if vc >> 4 != 2 {
        return Err(Error::V2("version is not 2"));
    }
    let local = match vc & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(Error::V2("command is neither LOCAL nor PROXY")),
    };
    let (family, transport) = (fam >> 4, fam & 0x0f);
    if family > 3 || transport > 2 {
        return Err(Error::V2("unknown address family or transport"));
    }
    let total = V2_FIXED + usize::from(len);
    if total > MAX_HEADER {
        return Err(Error::V2("longer than 4 KiB of addresses and TLVs"));
    }
    if local {
        // The balancer's own connection: whatever the block holds is discarded, family and
        // length included (specification, section 2.2, as HAProxy reads it).
        if buf.len() < total {
            return Ok(Parsed::Incomplete);
        }
        return Ok(Parsed::Complete((Header::Local, total)));
    }
    // The address block's size for the family: INET, INET6, UNIX.
    let addresses = match family {
        1 => 12,
        2 => 36,
        3 => 216,
        _ => 0,
    };
    if usize::from(len) < addresses {
        return Err(Error::V2("too short for its address family"));
    }
    if buf.len() < total {
        return Ok(Parsed::Incomplete);
    }
    let block = &buf[V2_FIXED..total];
    check_tlvs(&block[addresses..])?;
    let header = match family {
        1 => {
            let ip = |at: usize| Ipv4Addr::from(<[u8; 4]>::try_from(&block[at..at + 4]).unwrap());
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            Header::Proxy {
                source: SocketAddr::new(ip(0).into(), port(8)),
                destination: SocketAddr::new(ip(4).into(), port(10)),
            }
        }
        2 => {
            let ip = |at: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&block[at..at + 16]).unwrap());
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            Header::Proxy {
                source: SocketAddr::new(ip(0).into(), port(32)),
                destination: SocketAddr::new(ip(16).into(), port(34)),
            }
        }
        // AF_UNSPEC and AF_UNIX name no IP client: the receiver uses the real connection's
        // addresses (specification, section 2.2).
        _ => Header::Local,
    };
    Ok(Parsed::Complete((header, total)))
}

/// TLVs are skipped, but only once they are seen to tile the rest of the block exactly: a
/// sender whose lengths disagree is not trusted with the addresses either.
fn check_tlvs(mut rest: &[u8]) -> Result<(), Error> {
    while !rest.is_empty() {
        if rest.len() < 3 {
            return Err(Error::V2("truncated TLV"));
        }
        let len = 3 + usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        if rest.len() < len {
            return Err(Error::V2("TLV longer than the header"));
        }
        rest = &rest[len..];
    }
    Ok(())
}

/// The header version an upstream group wants (`send_proxy_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    #[default]
    Off,
    V1,
    V2,
}

impl Version {
    /// The config value: `"off"`, `"v1"` or `"v2"`.
    pub fn parse(text: &str) -> Option<Version> {
        match text {
            "off" => Some(Version::Off),
            "v1" => Some(Version::V1),
            "v2" => Some(Version::V2),
            _ => None,
        }
    }

    /// Appends this version's header for a connection of wsplice's own (a health check): v2
    /// `LOCAL`, v1 `UNKNOWN`, as HAProxy's checks send; nothing when off.
    pub fn write_local(self, out: &mut Vec<u8>) {
        match self {
            Version::Off => {}
            Version::V1 => out.extend_from_slice(b"PROXY UNKNOWN\r\n"),
            Version::V2 => {
                out.extend_from_slice(&V2_SIGNATURE);
                // Version 2, LOCAL; family unspecified; no addresses.
                out.extend_from_slice(&[0x20, 0x00, 0, 0]);
            }
        }
    }

    /// Appends this version's header for a relayed connection (nothing when off). Addresses
    /// of two families are both written as IPv6, IPv4 ones mapped.
    pub fn write(self, source: SocketAddr, destination: SocketAddr, out: &mut Vec<u8>) {
        match self {
            Version::Off => {}
            Version::V1 => write_v1(source, destination, out),
            Version::V2 => write_v2(source, destination, out),
        }
    }
}

/// One family for both ends: IPv4 when both are, else IPv6 with IPv4 mapped.
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(v4.to_ipv6_mapped().into(), a.port()),
        IpAddr::V6(_) => a,
    };
    if source.is_ipv4() == destination.is_ipv4() {
        (source, destination)
    } else {
        (v6(source), v6(destination))
    }
}

/// Appends a v1 header: `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n`.
pub fn write_v1(source: SocketAddr, destination: SocketAddr, out: &mut Vec<u8>) {
    use std::io::Write;
    let (s, d) = same_family(source, destination);
    let family = if s.is_ipv4() { "TCP4" } else { "TCP6" };
    let _ = write!(
        out,
        "PROXY {family} {} {} {} {}\r\n",
        s.ip(),
        d.ip(),
        s.port(),
        d.port()
    );
}

/// Appends a v2 `PROXY` header over TCP, without TLVs.
pub fn write_v2(source: SocketAddr, destination: SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21);
    match same_family(source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.extend_from_slice(&[0x11, 0, 12]);
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V6(ip) => ip.octets(),
                IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
            };
            out.extend_from_slice(&[0x21, 0, 36]);
            out.extend_from_slice(&v6(s));
            out.extend_from_slice(&v6(d));
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests;
