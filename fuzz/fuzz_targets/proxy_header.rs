//! Any bytes as the start of a connection on a `proxy_protocol` listener: `proxy_protocol::parse`
//! never panics and never claims more bytes than it got; a header reads the same however it
//! is split (a strict prefix is only ever `Incomplete`, never a different answer); and a
//! header's addresses, written again as v1 and v2, parse back to the same addresses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsplice::http::Parsed;
use wsplice::http::proxy_protocol::{Header, Version, parse};

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    if let Ok(Parsed::Complete((_, len))) = whole {
        assert!(len <= data.len());
        // The header ends where it says: nothing after it changes the answer.
        assert_eq!(parse(&data[..len]), whole);
    }

    let n = data.len();
    for cut in [n.saturating_sub(1), n / 2, n / 3, 13, 16] {
        if cut < n {
            let part = parse(&data[..cut]);
            assert!(
                part == Ok(Parsed::Incomplete) || part == whole,
                "split at {cut}: {part:?} vs {whole:?}"
            );
        }
    }

    if let Ok(Parsed::Complete((
        Header::Proxy {
            source,
            destination,
        },
        _,
    ))) = whole
    {
        for version in [Version::V1, Version::V2] {
            let mut out = Vec::new();
            version.write(source, destination, &mut out);
            match parse(&out) {
                Ok(Parsed::Complete((
                    Header::Proxy {
                        source: s,
                        destination: d,
                    },
                    len,
                ))) => {
                    assert_eq!(len, out.len());
                    // Same addresses, up to IPv4 shown as IPv4-mapped IPv6 when the families mix.
                    assert_eq!(s.ip().to_canonical(), source.ip().to_canonical());
                    assert_eq!(d.ip().to_canonical(), destination.ip().to_canonical());
                    assert_eq!((s.port(), d.port()), (source.port(), destination.port()));
                }
                other => panic!("{version:?} of {source} {destination}: {other:?}"),
            }
        }
    }
});
