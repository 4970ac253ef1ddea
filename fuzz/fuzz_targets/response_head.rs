//! Any bytes as an upstream's response head: `parse_response`, the `101` check, the body
//! framing and the closing rewrite never panic; a head reads the same however it is split,
//! and so does where its body ends;
//! a `101` passes the WebSocket check only with the one right accept value; and the closing
//! rewrite is itself a valid response head with the same status.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsplice::http::{Framing, HandshakeError, MAX_HEADERS, Parsed, parse_response};
use wsplice::http::websocket::{Accept, Expected, check_switch};

const KEY: &[u8] = b"dGhlIHNhbXBsZSBub25jZQ==";

/// Status, head length, WebSocket check, h2c check, body framing, closing rewrite.
type Outcome = (u16, usize, bool, bool, Result<Framing, HandshakeError>, Vec<u8>);

fn outcome(buf: &[u8]) -> Result<Parsed<Outcome>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    Ok(match parse_response(buf, &mut headers)? {
        Parsed::Incomplete => Parsed::Incomplete,
        Parsed::Complete(head) => {
            let websocket = check_switch(head.headers, &Expected::WebSocket(Accept::for_key(KEY)));
            if websocket.is_ok() {
                let accepts: Vec<&[u8]> = head
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
                    .map(|h| h.value.trim_ascii())
                    .collect();
                assert_eq!(accepts, [&b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="[..]]);
            }
            let h2c = check_switch(head.headers, &Expected::Protocol("h2c")).is_ok();
            assert!(!(websocket.is_ok() && h2c));
            let mut out = Vec::new();
            head.write_closing(&mut out, &[]);
            Parsed::Complete((
                head.status,
                head.len,
                websocket.is_ok(),
                h2c,
                head.framing(false),
                out,
            ))
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let whole = outcome(data);
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
    if let Ok(Parsed::Complete((_, len, _, _, Ok(framing), _))) = &whole {
        body_end_is_split_invariant(framing.clone(), &data[*len..]);
    }
    if let Ok(Parsed::Complete((status, _, _, _, _, out))) = whole {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS + 1];
        match parse_response(&out, &mut headers) {
            Ok(Parsed::Complete(again)) => {
                assert_eq!(again.status, status);
                assert_eq!(again.len, out.len());
                let closes = again
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("connection") && h.value == b"close");
                assert!(closes);
            }
            other => panic!(
                "closing rewrite {:?} does not parse: {other:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
});

/// Where the body ends (or that it is malformed) does not depend on how it is read.
fn body_end_is_split_invariant(framing: Framing, body: &[u8]) {
    let end = |step: usize| {
        let mut f = framing.clone();
        let mut taken = 0;
        for piece in body.chunks(step.max(1)) {
            let n = f.take(piece)?;
            taken += n;
            if f.is_done() {
                return Ok(Some(taken));
            }
            assert_eq!(n, piece.len());
        }
        Ok::<_, &str>(None)
    };
    let whole = end(body.len());
    for step in [1, 2, 3, 7, 64] {
        assert_eq!(end(step), whole, "step {step}");
    }
}
