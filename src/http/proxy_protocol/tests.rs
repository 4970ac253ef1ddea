use super::*;

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn proxy(source: &str, destination: &str) -> Header {
    Header::Proxy {
        source: addr(source),
        destination: addr(destination),
    }
}

/// Parses `header` followed by `rest`; checks every strict prefix of the header is
/// `Incomplete` (a truncated header is never taken nor refused early), and that the header's
/// length leaves `rest` untouched.
fn complete(header: &[u8], rest: &[u8]) -> Header {
    for cut in 0..header.len() {
        assert_eq!(
            parse(&header[..cut]),
            Ok(Parsed::Incomplete),
            "cut at {cut} of {header:?}"
        );
    }
    let mut buf = header.to_vec();
    buf.extend_from_slice(rest);
    match parse(&buf) {
        Ok(Parsed::Complete((h, len))) => {
            assert_eq!(len, header.len());
            assert_eq!(&buf[len..], rest);
            h
        }
        other => panic!("{header:?}: {other:?}"),
    }
}

fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x20 | command);
    out.push(family);
    out.extend_from_slice(&(block.len() as u16).to_be_bytes());
    out.extend_from_slice(block);
    out
}

fn inet_block() -> Vec<u8> {
    let mut b = vec![192, 0, 2, 1, 198, 51, 100, 2];
    b.extend_from_slice(&51234u16.to_be_bytes());
    b.extend_from_slice(&443u16.to_be_bytes());
    b
}

fn inet6_block() -> Vec<u8> {
    let mut b = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets().to_vec();
    b.extend_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&65535u16.to_be_bytes());
    b
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";

#[test]
fn v1_tcp4_tcp6_and_unknown() {
    let h = complete(b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\r\n", GET);
    assert_eq!(h, proxy("192.0.2.1:51234", "198.51.100.2:443"));
    let h = complete(b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.9 0 65535\r\n", GET);
    assert_eq!(h, proxy("[2001:db8::1]:0", "[::ffff:192.0.2.9]:65535"));
    assert_eq!(complete(b"PROXY UNKNOWN\r\n", GET), Header::Local);
    // What follows UNKNOWN is ignored, addresses or not.
    let unknown = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n";
    assert_eq!(complete(unknown, b""), Header::Local);
}

#[test]
fn v1_of_the_longest_length_is_taken_and_one_longer_refused() {
    let long = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_eq!(long.len(), V1_MAX - 3);
    complete(long.as_bytes(), b"");
    let at_max = b"PROXY UNKNOWN ".iter().copied();
    let mut at_max: Vec<u8> = at_max.chain(std::iter::repeat_n(b'x', 91)).collect();
    at_max.extend_from_slice(b"\r\n");
    assert_eq!(at_max.len(), V1_MAX);
    assert_eq!(complete(&at_max, GET), Header::Local);
    let mut over = at_max.clone();
    over.insert(10, b'x');
    assert!(matches!(parse(&over), Err(Error::V1(_))));
    // With no line end at all, refused as soon as 107 bytes are there, not waited on.
    let endless = vec![b'x'; 200];
    let endless = [b"PROXY UNKNOWN ".as_slice(), &endless].concat();
    assert_eq!(parse(&endless[..V1_MAX - 1]), Ok(Parsed::Incomplete));
    assert!(matches!(parse(&endless[..V1_MAX]), Err(Error::V1(_))));
    // A CR as the 107th byte: its LF would be the 108th.
    let mut cr_last: Vec<u8> = b"PROXY UNKNOWN ".to_vec();
    cr_last.resize(V1_MAX - 1, b'x');
    cr_last.push(b'\r');
    assert!(matches!(parse(&cr_last), Err(Error::V1(_))));
}

#[test]
fn v1_bad_addresses_ports_and_shapes_are_refused() {
    let bad: &[&[u8]] = &[
        b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 65536\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 051234 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2  443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 443\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 3\r\n",
        b"PROXY TCP4 192.0.2.256 198.51.100.2 1 2\r\n",
        b"PROXY TCP4 192.0.02.1 198.51.100.2 1 2\r\n",
        b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
        b"PROXY TCP6 192.0.2.1 2001:db8::2 1 2\r\n",
        b"PROXY TCP6 [2001:db8::1] 2001:db8::2 1 2\r\n",
        b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
        b"PROXY tcp4 192.0.2.1 198.51.100.2 1 2\r\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\rX",
        b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n",
        b"PROXY  TCP4 192.0.2.1 198.51.100.2 1 2\r\n",
        b"PROXY UNKNOWNX\r\n",
        b"PROXY \r\n",
    ];
    for header in bad {
        assert!(
            matches!(parse(header), Err(Error::V1(_))),
            "{:?}: {:?}",
            String::from_utf8_lossy(header),
            parse(header)
        );
    }
}

#[test]
fn anything_else_is_missing_at_its_first_wrong_byte() {
    assert_eq!(parse(GET), Err(Error::Missing));
    assert_eq!(parse(b"POST / HTTP/1.1\r\n"), Err(Error::Missing));
    assert_eq!(parse(b"PROXX"), Err(Error::Missing));
    assert_eq!(parse(b"proxy TCP4"), Err(Error::Missing));
    // A TLS ClientHello record.
    assert_eq!(parse(&[0x16, 0x03, 0x01, 0x02, 0x00]), Err(Error::Missing));
    assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX\n"), Err(Error::Missing));
    assert_eq!(parse(b"\r\nGET"), Err(Error::Missing));
    assert_eq!(parse(b""), Ok(Parsed::Incomplete));
    assert_eq!(parse(b"PRO"), Ok(Parsed::Incomplete));
}

#[test]
fn v2_proxy_over_ipv4_and_ipv6() {
    let h = complete(&v2(1, 0x11, &inet_block()), GET);
    assert_eq!(h, proxy("192.0.2.1:51234", "198.51.100.2:443"));
    let h = complete(&v2(1, 0x21, &inet6_block()), b"");
    assert_eq!(h, proxy("[2001:db8::1]:1", "[2001:db8::2]:65535"));
    // UDP (transport 2) and unspecified transport keep their addresses too.
    let h = complete(&v2(1, 0x12, &inet_block()), b"");
    assert_eq!(h, proxy("192.0.2.1:51234", "198.51.100.2:443"));
}

#[test]
fn v2_local_unspec_and_unix_are_served_as_the_peer() {
    assert_eq!(complete(&v2(0, 0x00, &[]), GET), Header::Local);
    // LOCAL with addresses: they are ignored.
    assert_eq!(complete(&v2(0, 0x11, &inet_block()), GET), Header::Local);
    assert_eq!(complete(&v2(1, 0x00, &[]), GET), Header::Local);
    let mut unix = vec![0u8; 216];
    unix[..9].copy_from_slice(b"/run/a.so");
    assert_eq!(complete(&v2(1, 0x31, &unix), GET), Header::Local);
}

#[test]
fn v2_tlvs_are_skipped_when_they_tile_the_block() {
    let mut block = inet_block();
    // PP2_TYPE_ALPN "h2", PP2_TYPE_AUTHORITY "example.com", NOOP of length 0, and a
    // type we do not know.
    block.extend_from_slice(&[0x01, 0, 2, b'h', b'2']);
    block.extend_from_slice(&[0x02, 0, 11]);
    block.extend_from_slice(b"example.com");
    block.extend_from_slice(&[0x04, 0, 0]);
    block.extend_from_slice(&[0xEE, 0, 3, 1, 2, 3]);
    let h = complete(&v2(1, 0x11, &block), GET);
    assert_eq!(h, proxy("192.0.2.1:51234", "198.51.100.2:443"));

    for broken in [&[0x01u8][..], &[0x01, 0], &[0x01, 0, 5, b'h', b'2']] {
        let mut block = inet_block();
        block.extend_from_slice(broken);
        assert!(
            matches!(parse(&v2(1, 0x11, &block)), Err(Error::V2(_))),
            "{broken:?}"
        );
    }
}

#[test]
fn v2_bad_fixed_part_is_refused() {
    let good = v2(1, 0x11, &inet_block());
    let with = |at: usize, byte: u8| {
        let mut h = good.clone();
        h[at] = byte;
        h
    };
    // Version 1 and 3, commands 2 and 15, family 4, transport 3.
    for (at, byte) in [
        (12, 0x11),
        (12, 0x31),
        (12, 0x22),
        (12, 0x2F),
        (13, 0x41),
        (13, 0x13),
    ] {
        assert!(
            matches!(parse(&with(at, byte)), Err(Error::V2(_))),
            "{at} {byte:#x}"
        );
    }
    // A wrong version is seen as soon as its byte comes.
    assert!(matches!(parse(&with(12, 0x11)[..13]), Err(Error::V2(_))));
    // Shorter than the family's addresses.
    let short = v2(1, 0x21, &inet_block());
    assert!(matches!(parse(&short), Err(Error::V2(_))));
    let short = v2(1, 0x11, &inet_block()[..11]);
    assert!(matches!(parse(&short), Err(Error::V2(_))));
    // Longer than we take: refused on the length, before its bytes are awaited.
    let mut huge = v2(0, 0x00, &[]);
    huge[14..16].copy_from_slice(&60000u16.to_be_bytes());
    assert!(matches!(parse(&huge), Err(Error::V2(_))));
    for cut in 0..12 {
        let mut sig = V2_SIGNATURE[..cut].to_vec();
        sig.push(b'x');
        assert_eq!(parse(&sig), Err(Error::Missing), "{cut}");
    }
}

#[test]
fn written_headers_parse_back() {
    let cases = [
        ("192.0.2.1:51234", "198.51.100.2:443"),
        ("[2001:db8::1]:1", "[2001:db8::2]:65535"),
        ("192.0.2.1:0", "[2001:db8::2]:8080"),
    ];
    for (source, destination) in cases {
        let (s, d) = (addr(source), addr(destination));
        let expected = {
            let (s, d) = same_family(s, d);
            Header::Proxy {
                source: s,
                destination: d,
            }
        };
        for version in [Version::V1, Version::V2] {
            let mut out = Vec::new();
            version.write(s, d, &mut out);
            assert_eq!(complete(&out, GET), expected, "{version:?} {source}");
        }
    }
    let mut out = Vec::new();
    Version::Off.write(addr(cases[0].0), addr(cases[0].1), &mut out);
    assert!(out.is_empty());
    let mut v1 = Vec::new();
    write_v1(addr(cases[0].0), addr(cases[0].1), &mut v1);
    assert_eq!(v1, b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\r\n");
    let mut mixed = Vec::new();
    write_v1(addr(cases[2].0), addr(cases[2].1), &mut mixed);
    assert_eq!(mixed, b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 0 8080\r\n");
}

#[test]
fn version_names() {
    assert_eq!(Version::parse("off"), Some(Version::Off));
    assert_eq!(Version::parse("v1"), Some(Version::V1));
    assert_eq!(Version::parse("v2"), Some(Version::V2));
    assert_eq!(Version::parse("V2"), None);
    assert_eq!(Version::parse("true"), None);
}

#[test]
fn a_local_header_of_each_version_reads_back_as_local() {
    for version in [Version::V1, Version::V2] {
        let mut out = Vec::new();
        version.write_local(&mut out);
        assert_eq!(complete(&out, GET), Header::Local, "{version:?}");
    }
    let mut out = Vec::new();
    Version::Off.write_local(&mut out);
    assert!(out.is_empty());
}

#[test]
fn a_v2_local_header_is_served_whatever_its_address_block() {
    // A family without its addresses, and a block of garbage: both are discarded for LOCAL.
    assert_eq!(complete(&v2(0, 0x11, &[]), GET), Header::Local);
    assert_eq!(complete(&v2(0, 0x21, &[0xff; 7]), GET), Header::Local);
    let header = v2(0, 0x11, &[]);
    for cut in 0..header.len() {
        assert_eq!(
            parse(&header[..cut]),
            Ok(Parsed::Incomplete),
            "cut at {cut}"
        );
    }
}
