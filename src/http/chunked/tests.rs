use super::*;

/// Feeds `input` in pieces of `step` bytes; returns the body's length once it ends.
fn body_len(input: &[u8], step: usize) -> Result<Option<usize>, &'static str> {
    let mut c = Chunked::default();
    let mut taken = 0;
    for piece in input.chunks(step) {
        let n = c.feed(piece)?;
        taken += n;
        if c.is_done() {
            return Ok(Some(taken));
        }
        assert_eq!(n, piece.len(), "a body that goes on takes every byte");
    }
    Ok(None)
}

fn every_split(input: &[u8]) -> Result<Option<usize>, &'static str> {
    let whole = body_len(input, input.len().max(1));
    for step in 1..input.len().max(1) {
        assert_eq!(body_len(input, step), whole, "step {step}");
    }
    whole
}

#[test]
fn ends_after_the_last_chunk_and_trailers() {
    let body = b"5\r\nhello\r\n0\r\n\r\n";
    assert_eq!(every_split(body), Ok(Some(body.len())));
    let mut then_more = body.to_vec();
    then_more.extend_from_slice(b"GET /smuggled HTTP/1.1\r\n\r\n");
    assert_eq!(every_split(&then_more), Ok(Some(body.len())));

    let trailers = b"3;name=\"v\"\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-Sum: 1\r\nY: 2\r\n\r\n";
    assert_eq!(every_split(trailers), Ok(Some(trailers.len())));
    assert_eq!(every_split(b"0\r\n\r\nrest"), Ok(Some(5)));
}

#[test]
fn a_body_cut_short_is_not_done() {
    for cut in [
        &b"5\r\nhel"[..],
        b"5\r\nhello\r\n",
        b"0\r\n",
        b"0\r\nX: 1\r\n",
        b"f",
    ] {
        assert_eq!(
            every_split(cut),
            Ok(None),
            "{:?}",
            String::from_utf8_lossy(cut)
        );
    }
}

#[test]
fn data_is_skipped_not_scanned() {
    let mut body = b"100000\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'\n', 0x100000));
    body.extend_from_slice(b"\r\n0\r\n\r\n");
    assert_eq!(body_len(&body, 65536), Ok(Some(body.len())));
}

#[test]
fn malformed_bodies_are_refused() {
    let cases: [(&[u8], &str); 9] = [
        (b"x\r\n", "invalid chunk size"),
        (b"\r\n", "invalid chunk size"),
        (b"5\nhello\r\n", "invalid byte in a chunk size line"),
        (b"5\r\nhelloX\r\n", "chunk data not followed by CRLF"),
        (b"5\r\nhello\r\r", "CR not followed by LF in a chunked body"),
        (b"1000000000000000\r\n", "chunk size too large"),
        (b"0\r\nX: 1\n\r\n", "invalid byte in a chunked trailer"),
        (b"5;\0\r\n", "invalid byte in a chunk size line"),
        (b"0\r\n\rX", "CR not followed by LF in a chunked body"),
    ];
    for (input, reason) in cases {
        assert_eq!(
            every_split(input),
            Err(reason),
            "{:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn lines_and_trailers_are_bounded() {
    let mut long = b"1;".to_vec();
    long.extend(std::iter::repeat_n(b'a', MAX_LINE));
    assert_eq!(body_len(&long, 100), Err("chunk size line too long"));
    let mut trailers = b"0\r\n".to_vec();
    while trailers.len() < MAX_TRAILERS + 100 {
        trailers.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaa\r\n");
    }
    assert_eq!(body_len(&trailers, 1000), Err("chunked trailers too large"));
}
