//! One certificate pair read from its PEM files: the chain, the private key (PKCS#8, PKCS#1
//! or SEC1), the DNS names it serves (its subjectAltNames) and its validity dates. A pair is
//! checked whole before use: a key that does not sign for the certificate is refused here,
//! never discovered by a client's failed handshake.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::config::{CertificatePaths, read_file_bytes};
use crate::http::host::HostPattern;

/// Why a pair cannot be used, always naming the file at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct CertError {
    pub file: PathBuf,
    pub reason: String,
}

impl CertError {
    fn new(file: &Path, reason: impl Into<String>) -> Self {
        CertError {
            file: file.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// The two files' bytes as last read, to tell a real change from a repeated event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemFiles {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl PemFiles {
    pub fn read(paths: &CertificatePaths) -> Result<Self, CertError> {
        let read = |path: &Path| {
            read_file_bytes(path).map_err(|e| CertError::new(path, format!("cannot read: {e}")))
        };
        Ok(PemFiles {
            cert: read(&paths.cert)?,
            key: read(&paths.key)?,
        })
    }
}

/// A checked certificate chain with its key, ready for the resolver.
#[derive(Debug)]
pub struct Pair {
    pub paths: CertificatePaths,
    /// What rustls hands a client: the chain and the signing key.
    pub key: Arc<CertifiedKey>,
    /// The DNS names of the leaf's subjectAltName, in order.
    pub names: Vec<HostPattern>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl Pair {
    /// Reads and checks the pair at `paths`.
    pub fn load(paths: &CertificatePaths, provider: &CryptoProvider) -> Result<Self, CertError> {
        Self::parse(paths, &PemFiles::read(paths)?, provider)
    }

    /// Checks a pair whose files were read into `files`.
    pub fn parse(
        paths: &CertificatePaths,
        files: &PemFiles,
        provider: &CryptoProvider,
    ) -> Result<Self, CertError> {
        let cert_file = &paths.cert;
        let key_file = &paths.key;
        let chain = CertificateDer::pem_slice_iter(&files.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertError::new(cert_file, format!("not valid PEM: {}", pem_reason(&e))))?;
        let Some(leaf) = chain.first() else {
            return Err(CertError::new(
                cert_file,
                "holds no certificate (no -----BEGIN CERTIFICATE----- block)",
            ));
        };
        let parsed = webpki::EndEntityCert::try_from(leaf).map_err(|e| {
            CertError::new(
                cert_file,
                format!("the first certificate is not a valid X.509 certificate ({e})"),
            )
        })?;
        let names = parsed
            .valid_dns_names()
            .filter_map(|name| HostPattern::parse(name).ok())
            .collect();
        let (not_before, not_after) = validity(leaf).ok_or_else(|| {
            CertError::new(
                cert_file,
                "the first certificate has no readable validity dates",
            )
        })?;

        let der = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| match e {
            pem::Error::NoItemsFound => CertError::new(
                key_file,
                "holds no private key (a PKCS#8 \"PRIVATE KEY\", PKCS#1 \"RSA PRIVATE KEY\" or SEC1 \"EC PRIVATE KEY\" block)",
            ),
            e => CertError::new(key_file, format!("not valid PEM: {}", pem_reason(&e))),
        })?;
        let signer = provider.key_provider.load_private_key(der).map_err(|e| {
            CertError::new(
                key_file,
                format!("unsupported private key ({e}); use RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519"),
            )
        })?;
        let key = CertifiedKey::new(chain, signer);
        if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
            key.keys_match()
        {
            return Err(CertError::new(
                key_file,
                format!(
                    "this private key does not belong to the certificate in {}",
                    cert_file.display()
                ),
            ));
        }
        Ok(Pair {
            paths: paths.clone(),
            key: Arc::new(key),
            names,
            not_before,
            not_after,
        })
    }

    /// The name metrics and logs use: the first DNS name, else the certificate file.
    pub fn label(&self) -> String {
        self.names
            .first()
            .map_or_else(|| self.paths.cert.display().to_string(), |n| n.to_string())
    }

    /// Whether this certificate names `host` (no port, any case).
    pub fn covers(&self, host: &[u8]) -> bool {
        self.names.iter().any(|n| n.matches(host))
    }

    /// What an operator should hear about a pair that loads: expired, not yet valid, or
    /// serving no name.
    pub fn warnings(&self, now: i64) -> Vec<String> {
        let file = self.paths.cert.display();
        let mut out = Vec::new();
        if now > self.not_after {
            out.push(format!(
                "{file}: the certificate expired at {}; clients will refuse it until it is renewed",
                format_time(self.not_after)
            ));
        } else if now < self.not_before {
            out.push(format!(
                "{file}: the certificate is not valid before {}; clients will refuse it until then",
                format_time(self.not_before)
            ));
        }
        if self.names.is_empty() {
            out.push(format!(
                "{file}: the certificate has no DNS name in subjectAltName: it is chosen for no SNI name, only as the default"
            ));
        }
        out
    }
}

fn pem_reason(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "a block has no -----END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a -----BEGIN line is malformed".into(),
        pem::Error::Base64Decode(_) => "a block is not valid base64".into(),
        e => e.to_string(),
    }
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `2026-12-02 16:27:47 UTC`.
pub fn format_time(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The leaf's notBefore and notAfter, in Unix seconds. webpki checks validity against a
/// given time but does not expose the dates, and x509-parser would be a dozen crates for two
/// fields: so this walks the DER to them (RFC 5280 section 4.1).
fn validity(cert: &[u8]) -> Option<(i64, i64)> {
    let (certificate, _) = element(cert, 0x30)?;
    let (tbs, _) = element(certificate, 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = element(rest, 0xa0)?.1;
    }
    for tag in [0x02, 0x30, 0x30] {
        // serialNumber, signature, issuer
        rest = element(rest, tag)?.1;
    }
    let (validity, _) = element(rest, 0x30)?;
    let (not_before, rest) = time(validity)?;
    let (not_after, _) = time(rest)?;
    Some((not_before, not_after))
}

/// One DER element with tag `tag`: its content and what follows it.
pub(crate) fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&len, rest) = rest.split_first()?;
    let (len, rest) = match len {
        0..=0x7f => (usize::from(len), rest),
        0x81..=0x84 => {
            let n = usize::from(len & 0x7f);
            let bytes = rest.get(..n)?;
            let len = bytes.iter().fold(0usize, |l, &b| (l << 8) | usize::from(b));
            (len, &rest[n..])
        }
        _ => return None,
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(input: &[u8]) -> Option<(i64, &[u8])> {
    let (text, year, rest) = match element(input, 0x17) {
        Some((text, rest)) if text.len() == 13 => {
            let yy = digits(&text[..2])?;
            (
                &text[2..],
                if yy < 50 { 2000 + yy } else { 1900 + yy },
                rest,
            )
        }
        _ => {
            let (text, rest) = element(input, 0x18)?;
            if text.len() != 15 {
                return None;
            }
            (&text[4..], digits(&text[..4])?, rest)
        }
    };
    if text.last() != Some(&b'Z') {
        return None;
    }
    let field = |i: usize| digits(&text[i..i + 2]);
    let (month, day) = (field(0)?, field(2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some((
        days * 86_400 + field(4)? * 3600 + field(6)? * 60 + field(8)?,
        rest,
    ))
}

fn digits(text: &[u8]) -> Option<i64> {
    text.iter().try_fold(0i64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0'))
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for days in [-1, 0, 59, 11_016, 20_000, 30_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(format_time(1_798_761_600), "2027-01-01 00:00:00 UTC");
    }

    #[test]
    fn der_times_are_read() {
        let utc = b"\x17\x0d491231235959Z";
        assert_eq!(time(utc).unwrap().0, 2_524_607_999);
        let generalized = b"\x18\x0f20500101000000Z";
        assert_eq!(time(generalized).unwrap().0, 2_524_608_000);
        assert!(time(b"\x17\x0d491331235959Z").is_none());
        assert!(element(b"\x30\x05abc", 0x30).is_none());
    }
}
