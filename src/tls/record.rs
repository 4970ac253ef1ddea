//! The TLS record layer of an open `wss://` tunnel, done by the tunnel engine itself: rustls
//! runs the handshake, then hands over the traffic secrets (as it would to kTLS, which this
//! kernel lacks), and records are opened and sealed in place in the relay's own buffers with
//! the provider's AEAD. rustls's connection types copy every record into a fresh `Vec`;
//! this does not allocate at all.
//!
//! What the engine needs besides application data is here too: `close_notify` (a
//! half-close), TLS 1.3 `KeyUpdate` both ways (through rustls's [`KernelConnection`], which
//! derives the next secrets), and the AEAD limits (a TLS 1.3 tunnel rekeys before its
//! sealing key's confidentiality limit; a TLS 1.2 one ends there).

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};

/// Record header: content type, legacy version, length.
pub const HEADER: usize = 5;
/// The most plaintext one record carries (2^14).
pub const MAX_PLAIN: usize = 16384;
/// The largest record a peer may send, header included (RFC 8446 5.2: 2^14 + 256).
pub const MAX_RECORD: usize = HEADER + MAX_PLAIN + 256;
/// What sealing adds to a record's plaintext at most: header, TLS 1.2 explicit nonce, TLS 1.3
/// inner content type, tag.
pub const MAX_OVERHEAD: usize = HEADER + EXPLICIT_NONCE + 1 + TAG;
/// Room a sealed record may need before its plaintext besides the header: a pending
/// `KeyUpdate` record and the explicit nonce.
pub const MAX_PREFIX: usize = KEY_UPDATE_RECORD + HEADER + EXPLICIT_NONCE;

const TAG: usize = 16;
const EXPLICIT_NONCE: usize = 8;
const KEY_UPDATE: [u8; 4] = [24, 0, 0, 1];
/// A TLS 1.3 `KeyUpdate` record: header, message, its request byte, inner type, tag.
const KEY_UPDATE_RECORD: usize = HEADER + KEY_UPDATE.len() + 1 + 1 + TAG;

const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
const CLOSE_NOTIFY: u8 = 0;
const USER_CANCELED: u8 = 90;
const WARNING: u8 = 1;

/// Why a tunnel's TLS stream cannot go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("a TLS record is longer than the protocol allows")]
    Oversized,
    #[error("a TLS record did not decrypt (bad_record_mac)")]
    BadRecordMac,
    #[error("the client sent TLS alert {0}")]
    Alert(u8),
    #[error("the client sent an unexpected TLS message (content type {0})")]
    Unexpected(u8),
    #[error("the TLS session ran out of sequence numbers for its key")]
    KeysExhausted,
    #[error("the negotiated cipher suite has no record layer here")]
    Unsupported,
}

/// One direction's key, IV and sequence number.
struct Keys {
    key: LessSafeKey,
    iv: [u8; 12],
    seq: u64,
    /// TLS 1.2 AES-GCM: each record carries the nonce's last 8 bytes.
    explicit_nonce: bool,
    /// Records this key may seal before it must be replaced.
    limit: u64,
}

impl Keys {
    fn new(
        version: ProtocolVersion,
        (seq, secrets): (u64, ConnectionTrafficSecrets),
    ) -> Result<Self, RecordError> {
        let tls12 = version == ProtocolVersion::TLSv1_2;
        let (algorithm, key, iv, gcm) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv, true),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv, true),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv, false)
            }
            _ => return Err(RecordError::Unsupported),
        };
        let key = UnboundKey::new(algorithm, key.as_ref()).map_err(|_| RecordError::Unsupported)?;
        let iv: [u8; 12] = iv
            .as_ref()
            .try_into()
            .map_err(|_| RecordError::Unsupported)?;
        Ok(Keys {
            key: LessSafeKey::new(key),
            iv,
            seq,
            explicit_nonce: tls12 && gcm,
            // rustls's limits for these suites: 2^24 records under AES-GCM, none for ChaCha.
            limit: if gcm { 1 << 24 } else { u64::MAX },
        })
    }

    fn nonce(&self) -> [u8; 12] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }
}

/// What [`TunnelTls::open`] found in a buffer of records.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Opened {
    /// Application data now at the buffer's start, in order.
    pub plain: usize,
    /// Bytes of whole records taken; the rest is the start of a record still arriving.
    pub consumed: usize,
    /// The client sent `close_notify`: no more data comes (anything after it is ignored).
    pub closed: bool,
}

impl Opened {
    /// Of the `n` bytes opened, those of a record still arriving, to keep for the next
    /// read: none once the client closed, as nothing after `close_notify` counts.
    pub fn tail(&self, n: usize) -> usize {
        if self.closed { 0 } else { n - self.consumed }
    }
}

/// The TLS state an open tunnel carries: both directions' keys and what rustls needs to
/// derive the next ones.
pub struct TunnelTls {
    rx: Keys,
    tx: Keys,
    tls13: bool,
    kernel: KernelConnection<ServerConnectionData>,
    /// The next sealed data goes after a `KeyUpdate` of ours (asked for by the client, or
    /// our key reached its limit).
    key_update_due: bool,
}

impl std::fmt::Debug for TunnelTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelTls")
            .field("tls13", &self.tls13)
            .field("rx_seq", &self.rx.seq)
            .field("tx_seq", &self.tx.seq)
            .finish()
    }
}

impl TunnelTls {
    /// Takes over a finished handshake's secrets.
    pub fn new(
        secrets: rustls::ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
    ) -> Result<Self, RecordError> {
        let version = kernel.protocol_version();
        Ok(TunnelTls {
            rx: Keys::new(version, secrets.rx)?,
            tx: Keys::new(version, secrets.tx)?,
            tls13: version == ProtocolVersion::TLSv1_3,
            kernel,
            key_update_due: false,
        })
    }

    /// Opens the whole records at the start of `buf` in place, moving their application data
    /// to the buffer's start. Stops after `close_notify`.
    pub fn open(&mut self, buf: &mut [u8]) -> Result<Opened, RecordError> {
        let mut out = Opened::default();
        while buf.len() - out.consumed >= HEADER {
            let at = out.consumed;
            let typ = buf[at];
            let len = usize::from(u16::from_be_bytes([buf[at + 3], buf[at + 4]]));
            if len > MAX_RECORD - HEADER {
                return Err(RecordError::Oversized);
            }
            if buf.len() - at - HEADER < len {
                break;
            }
            out.consumed = at + HEADER + len;
            let (typ, range) = self.open_one(buf, at, typ, len)?;
            match typ {
                APPLICATION_DATA => {
                    buf.copy_within(range.clone(), out.plain);
                    out.plain += range.len();
                }
                ALERT => match buf[range] {
                    [_, CLOSE_NOTIFY] => {
                        out.closed = true;
                        return Ok(out);
                    }
                    [WARNING, USER_CANCELED] => {}
                    [_, description] => return Err(RecordError::Alert(description)),
                    _ => return Err(RecordError::Unexpected(ALERT)),
                },
                HANDSHAKE if self.tls13 => {
                    self.handshake(&buf[range])?;
                }
                other => return Err(RecordError::Unexpected(other)),
            }
        }
        Ok(out)
    }

    /// Decrypts the record at `at` in place; its real content type and where its content lies.
    fn open_one(
        &mut self,
        buf: &mut [u8],
        at: usize,
        outer: u8,
        len: usize,
    ) -> Result<(u8, std::ops::Range<usize>), RecordError> {
        if self.tls13 && outer != APPLICATION_DATA {
            return Err(RecordError::Unexpected(outer));
        }
        let explicit = if self.rx.explicit_nonce {
            EXPLICIT_NONCE
        } else {
            0
        };
        if len < explicit + TAG {
            return Err(RecordError::BadRecordMac);
        }
        let body = at + HEADER;
        let mut nonce = self.rx.nonce();
        if explicit > 0 {
            nonce[4..].copy_from_slice(&buf[body..body + EXPLICIT_NONCE]);
        }
        let header: [u8; HEADER] = buf[at..body].try_into().expect("a header");
        let sealed = &mut buf[body + explicit..body + len];
        let plain_len = if self.tls13 {
            self.rx.key.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(header),
                sealed,
            )
        } else {
            let aad = tls12_aad(self.rx.seq, outer, len - explicit - TAG);
            self.rx
                .key
                .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), sealed)
        }
        .map_err(|_| RecordError::BadRecordMac)?
        .len();
        self.rx.seq += 1;
        let start = body + explicit;
        if !self.tls13 {
            if plain_len > MAX_PLAIN {
                return Err(RecordError::Oversized);
            }
            return Ok((outer, start..start + plain_len));
        }
        // TLS 1.3 inner plaintext: content, content type, zero padding.
        let inner = &buf[start..start + plain_len];
        let Some(end) = inner.iter().rposition(|&b| b != 0) else {
            return Err(RecordError::Unexpected(0));
        };
        if end > MAX_PLAIN {
            return Err(RecordError::Oversized);
        }
        Ok((inner[end], start..start + end))
    }

    /// Post-handshake messages: only `KeyUpdate` is expected from a client.
    fn handshake(&mut self, mut messages: &[u8]) -> Result<(), RecordError> {
        while !messages.is_empty() {
            match messages {
                [24, 0, 0, 1, request, rest @ ..] if *request <= 1 => {
                    let next = self
                        .kernel
                        .update_rx_secret()
                        .map_err(|_| RecordError::Unexpected(HANDSHAKE))?;
                    self.rx = Keys::new(ProtocolVersion::TLSv1_3, next)?;
                    if *request == 1 {
                        self.key_update_due = true;
                    }
                    // Records after a KeyUpdate use the new key, so nothing may follow it
                    // in this record.
                    if !rest.is_empty() {
                        return Err(RecordError::Unexpected(HANDSHAKE));
                    }
                    messages = rest;
                }
                _ => return Err(RecordError::Unexpected(HANDSHAKE)),
            }
        }
        Ok(())
    }

    /// Where [`TunnelTls::seal`] wants the plaintext in its output buffer.
    pub fn prefix(&self) -> usize {
        let update = if self.key_update_due {
            KEY_UPDATE_RECORD
        } else {
            0
        };
        update
            + HEADER
            + if self.tx.explicit_nonce {
                EXPLICIT_NONCE
            } else {
                0
            }
    }

    /// Seals the `len` bytes of plaintext at `out[self.prefix()..]` into one record at the
    /// start of `out` (after a `KeyUpdate` of ours if one is due). `len <= MAX_PLAIN`, and
    /// `out` has `MAX_OVERHEAD` bytes of room after the plaintext. Returns the bytes to send.
    pub fn seal(&mut self, out: &mut [u8], len: usize) -> Result<usize, RecordError> {
        debug_assert!(len <= MAX_PLAIN);
        if self.tx.seq >= self.tx.limit {
            if !self.tls13 {
                return Err(RecordError::KeysExhausted);
            }
            self.key_update_due = true;
        }
        let mut at = 0;
        if self.key_update_due {
            let start = HEADER;
            out[start..start + 4].copy_from_slice(&KEY_UPDATE);
            out[start + 4] = 0; // update_not_requested
            at = self.seal_record(out, 0, HANDSHAKE, 5)?;
            debug_assert_eq!(at, KEY_UPDATE_RECORD);
            let next = self
                .kernel
                .update_tx_secret()
                .map_err(|_| RecordError::KeysExhausted)?;
            self.tx = Keys::new(ProtocolVersion::TLSv1_3, next)?;
            self.key_update_due = false;
        }
        let end = self.seal_record(out, at, APPLICATION_DATA, len)?;
        Ok(end)
    }

    /// A sealed `close_notify` alert at the start of `out` (at least `MAX_OVERHEAD + 2`
    /// bytes); returns its length.
    pub fn seal_close_notify(&mut self, out: &mut [u8]) -> Result<usize, RecordError> {
        let start = HEADER
            + if self.tx.explicit_nonce {
                EXPLICIT_NONCE
            } else {
                0
            };
        out[start..start + 2].copy_from_slice(&[WARNING, CLOSE_NOTIFY]);
        self.seal_record(out, 0, ALERT, 2)
    }

    /// Seals content `out[at + HEADER + explicit..][..len]` of type `typ` into a record at
    /// `at`; returns where the record ends.
    fn seal_record(
        &mut self,
        out: &mut [u8],
        at: usize,
        typ: u8,
        len: usize,
    ) -> Result<usize, RecordError> {
        let explicit = if self.tx.explicit_nonce {
            EXPLICIT_NONCE
        } else {
            0
        };
        let start = at + HEADER + explicit;
        let nonce = self.tx.nonce();
        let (content_len, outer) = if self.tls13 {
            out[start + len] = typ;
            (len + 1, APPLICATION_DATA)
        } else {
            (len, typ)
        };
        let record_len = explicit + content_len + TAG;
        let header = [outer, 3, 3, (record_len >> 8) as u8, record_len as u8];
        out[at..at + HEADER].copy_from_slice(&header);
        if explicit > 0 {
            out[at + HEADER..start].copy_from_slice(&nonce[4..]);
        }
        let content = &mut out[start..start + content_len];
        let tag = if self.tls13 {
            self.tx.key.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(header),
                content,
            )
        } else {
            let aad = tls12_aad(self.tx.seq, typ, len);
            self.tx.key.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                content,
            )
        }
        .map_err(|_| RecordError::KeysExhausted)?;
        let end = start + content_len;
        out[end..end + TAG].copy_from_slice(tag.as_ref());
        self.tx.seq += 1;
        Ok(end + TAG)
    }
}

/// TLS 1.2 additional data: sequence number, type, version, plaintext length.
fn tls12_aad(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = typ;
    aad[9] = 3;
    aad[10] = 3;
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}

#[cfg(test)]
mod tests;
