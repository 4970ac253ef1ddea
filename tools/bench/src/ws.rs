//! Just enough RFC 6455 for a load generator and an echo upstream that must never be the
//! bottleneck: the key/accept pair, frame headers, masking, and the messages the client sends.

use sha1::{Digest, Sha1};

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Frames larger than this are refused as a protocol error rather than buffered.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// The `Sec-WebSocket-Accept` value for a `Sec-WebSocket-Key` (RFC 6455 section 4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    base64(&sha.finalize())
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload_len: usize,
    pub header_len: usize,
}

impl Header {
    pub fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Why a byte stream is not a WebSocket frame sequence we accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(u64),
    #[error("reserved bits set (no extension was negotiated)")]
    Reserved,
}

/// Parses the frame header at the start of `buf`; `Ok(None)` when more bytes are needed.
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if len > MAX_FRAME as u64 {
        return Err(FrameError::TooLarge(len));
    }
    let mask = if masked {
        let Some(m) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        at += 4;
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        mask,
        payload_len: len as usize,
        header_len: at,
    }))
}

/// Appends a frame header (FIN set unless `fin` is false).
pub fn write_header(out: &mut Vec<u8>, fin: bool, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(m) = mask {
        out.extend_from_slice(&m);
    }
}

/// XORs `data` with the 4-byte mask, starting at mask position 0 (eight bytes at a time).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes((&*chunk).try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Appends a masked client frame carrying `payload`.
pub fn write_client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    write_header(out, true, opcode, payload.len(), Some(mask));
    let at = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[at..], mask);
}

/// A small, fast pseudo-random source (xorshift64*) for masks and keys; not for secrets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_ne_bytes()
    }

    /// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
    pub fn key(&mut self) -> String {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&self.next_u64().to_ne_bytes());
        raw[8..].copy_from_slice(&self.next_u64().to_ne_bytes());
        base64(&raw)
    }
}

/// The messages one client connection sends: a fixed per-connection pattern whose first
/// eight bytes carry the sequence number, so every echo is checked byte for byte and a
/// duplicated, reordered or stale message is caught.
#[derive(Debug, Clone)]
pub struct Messages {
    template: Vec<u8>,
}

impl Messages {
    pub fn new(conn: u64, size: usize) -> Self {
        let template = (0..size)
            .map(|i| (i as u64).wrapping_mul(31).wrapping_add(conn) as u8)
            .collect();
        Messages { template }
    }

    pub fn size(&self) -> usize {
        self.template.len()
    }

    /// Appends message `seq` as a masked binary frame.
    pub fn write_frame(&mut self, out: &mut Vec<u8>, seq: u64, mask: [u8; 4]) {
        let n = self.template.len().min(8);
        self.template[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
        write_client_frame(out, OP_BINARY, &self.template, mask);
    }

    /// Whether `payload` is exactly message `seq`.
    pub fn matches(&self, payload: &[u8], seq: u64) -> bool {
        let n = self.template.len().min(8);
        payload.len() == self.template.len()
            && payload[..n] == seq.to_le_bytes()[..n]
            && payload[n..] == self.template[n..]
    }
}

/// The byte at stream offset `o` of a bulk stream (period 251, a prime, so it never lines up
/// with buffer sizes).
pub fn bulk_pattern(len: usize) -> Vec<u8> {
    (0..len + 251).map(|i| ((i % 251) * 7 + 13) as u8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn header_round_trips_every_length_form() {
        for len in [0, 1, 125, 126, 65535, 65536, 1 << 20] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut out = Vec::new();
                write_header(&mut out, true, OP_BINARY, len, mask);
                let h = parse_header(&out).unwrap().unwrap();
                assert_eq!(
                    (h.fin, h.opcode, h.mask, h.payload_len, h.header_len),
                    (true, OP_BINARY, mask, len, out.len())
                );
                for cut in 0..out.len() {
                    assert_eq!(parse_header(&out[..cut]), Ok(None), "cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn refuses_reserved_bits_and_huge_frames() {
        assert_eq!(parse_header(&[0xC2, 0]), Err(FrameError::Reserved));
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&(u64::MAX).to_be_bytes());
        assert!(matches!(parse_header(&huge), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn mask_is_its_own_inverse_and_matches_bytewise() {
        let data: Vec<u8> = (0..=255).collect();
        let mask = [0xde, 0xad, 0xbe, 0xef];
        let mut fast = data.clone();
        apply_mask(&mut fast, mask);
        let slow: Vec<u8> = data
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert_eq!(fast, slow);
        apply_mask(&mut fast, mask);
        assert_eq!(fast, data);
    }

    #[test]
    fn messages_check_sequence_and_body() {
        let mut m = Messages::new(7, 64);
        let mut frame = Vec::new();
        m.write_frame(&mut frame, 42, [9, 8, 7, 6]);
        let h = parse_header(&frame).unwrap().unwrap();
        let mut payload = frame[h.header_len..].to_vec();
        apply_mask(&mut payload, h.mask.unwrap());
        assert!(m.matches(&payload, 42));
        assert!(!m.matches(&payload, 43));
        payload[63] ^= 1;
        assert!(!m.matches(&payload, 42));
        let tiny = Messages::new(1, 3);
        let mut frame = Vec::new();
        tiny.clone().write_frame(&mut frame, 5, [0; 4]);
        assert!(tiny.matches(&frame[6..], 5));
    }
}
