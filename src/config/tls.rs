//! The `[tls]` section: which certificate pairs TLS listeners serve, what a client without
//! a known SNI name gets, and the oldest TLS version. The files themselves are read and
//! checked by `tls`, at start-up, by `--check` and on every change.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::FieldError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    certificates: Spanned<Vec<Spanned<RawCertificate>>>,
    unknown_sni: Option<Spanned<String>>,
    min_version: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertificate {
    cert: Spanned<String>,
    key: Spanned<String>,
}

/// What a client without a name we serve gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownSni {
    /// The first certificate of `tls.certificates`.
    #[default]
    Default,
    /// No certificate: the handshake ends with an alert.
    Reject,
}

/// The oldest TLS version a client may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinVersion {
    #[default]
    Tls12,
    Tls13,
}

/// One certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePaths {
    /// Relative paths are taken from the config file's directory.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The validated `[tls]` section. The files are read by `tls`, at start-up and on change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// At least one; the first is the default for `unknown_sni = "default"`.
    pub certificates: Vec<CertificatePaths>,
    pub unknown_sni: UnknownSni,
    pub min_version: MinVersion,
}

/// The `[tls]` section; an offset of 0 stands for the section itself.
pub(super) fn parse_tls(base: &Path, raw: &RawTls) -> Result<TlsSettings, FieldError> {
    if raw.certificates.get_ref().is_empty() {
        return Err((
            raw.certificates.span().start,
            "tls.certificates: needs at least one, e.g. certificates = [ { cert = \"example.com.pem\", key = \"example.com.key\" } ]".into(),
        ));
    }
    let mut certificates = Vec::new();
    for entry in raw.certificates.get_ref() {
        let c = entry.get_ref();
        for (field, value) in [("cert", &c.cert), ("key", &c.key)] {
            if value.get_ref().trim().is_empty() {
                return Err((
                    value.span().start,
                    format!("tls.certificates: {field} needs the path of a PEM file"),
                ));
            }
        }
        let paths = CertificatePaths {
            cert: base.join(c.cert.get_ref()),
            key: base.join(c.key.get_ref()),
        };
        if certificates.contains(&paths) {
            return Err((
                entry.span().start,
                format!("tls.certificates: {:?} is listed twice", c.cert.get_ref()),
            ));
        }
        certificates.push(paths);
    }
    let unknown_sni = match raw.unknown_sni.as_ref().map(|v| (v, v.get_ref().as_str())) {
        None | Some((_, "default")) => UnknownSni::Default,
        Some((_, "reject")) => UnknownSni::Reject,
        Some((v, other)) => {
            return Err((
                v.span().start,
                format!(
                    "tls.unknown_sni: {other:?} is not a choice; write \"default\" (the first certificate) or \"reject\" (end the handshake)"
                ),
            ));
        }
    };
    let min_version = match raw.min_version.as_ref().map(|v| (v, v.get_ref().as_str())) {
        None | Some((_, "1.2")) => MinVersion::Tls12,
        Some((_, "1.3")) => MinVersion::Tls13,
        Some((v, other)) => {
            return Err((
                v.span().start,
                format!("tls.min_version: {other:?} is not a version; write \"1.2\" or \"1.3\""),
            ));
        }
    };
    Ok(TlsSettings {
        certificates,
        unknown_sni,
        min_version,
    })
}
