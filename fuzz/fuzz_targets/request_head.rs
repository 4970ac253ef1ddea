//! Any bytes as a client's request head: `parse_request`, the routed (normalised) path, the per-route
//! upgrade allowance and the upstream rewrite never panic; a head reads the same however
//! it is split across reads; and what is written upstream is a head the parser accepts
//! with the same upgrade and body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsplice::http::{Body, ClientInfo, HandshakeError, MAX_HEADERS, Parsed, parse_request};

/// Head length, upgrade, body and the rewritten head, owned.
type Outcome = (usize, Option<Vec<u8>>, Body, Vec<u8>);

fn outcome(buf: &[u8]) -> Result<Parsed<Outcome>, HandshakeError> {
    let direct = ClientInfo::direct(
        "[2001:db8::7]:51234".parse().unwrap(),
        "127.0.0.1:8080".parse().unwrap(),
    );
    // Both rewrites of X-Forwarded-For: replaced (a direct client) and extended (a trusted
    // proxy's); chosen by the first byte, which every split of the input shares.
    let client = ClientInfo {
        forwarded_trusted: buf.first().is_some_and(|b| b & 1 == 1),
        client: "192.0.2.9:0".parse().unwrap(),
        ..direct
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    Ok(match parse_request(buf, &mut headers)? {
        Parsed::Incomplete => Parsed::Incomplete,
        Parsed::Complete(mut head) => {
            assert!(head.len <= buf.len());
            let mut out = Vec::new();
            let path = head.write_request_line(&mut out);
            let path = &out[path];
            // The routed path is in normal form: no empty or dot segment left to resolve.
            let normal = path.starts_with(b"/")
                && !path.windows(2).any(|w| w == b"//")
                && path.split(|&b| b == b'/').all(|s| s != b"." && s != b"..");
            assert!(normal || path == b"*", "{path:?}");
            head.allow_upgrade(&["connect-udp", "foo/1"]);
            head.write_fields(&client, &mut out);
            Parsed::Complete((head.len, head.upgrade.map(<[u8]>::to_vec), head.body, out))
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let whole = outcome(data);

    // A few split points rather than all: the fuzzer's speed matters more per input.
    let n = data.len();
    for cut in [n.saturating_sub(1), n / 2, n / 3, n / 7] {
        if cut < n {
            let part = outcome(&data[..cut]);
            assert!(
                part == Ok(Parsed::Incomplete) || part == whole,
                "split at {cut}: {part:?} vs {whole:?}"
            );
        }
    }

    if let Ok(Parsed::Complete((_, upgrade, body, out))) = whole {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 8];
        match parse_request(&out, &mut headers) {
            Ok(Parsed::Complete(again)) => {
                assert_eq!(again.len, out.len());
                assert_eq!(again.body, body);
                let again_upgrade = again.upgrade.map(<[u8]>::to_vec);
                // A listed protocol is only an offer to the parser; WebSocket must survive.
                if upgrade
                    .as_deref()
                    .is_some_and(|u| u.eq_ignore_ascii_case(b"websocket"))
                {
                    assert_eq!(again_upgrade, upgrade);
                } else {
                    assert_eq!(again_upgrade, None);
                }
            }
            other => panic!(
                "rewrite {:?} does not parse: {other:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
});
