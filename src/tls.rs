//! TLS termination: the pairs of the `[tls]` section loaded and checked, the resolver that
//! picks one per handshake by SNI, the one long-lived rustls `ServerConfig` every TLS
//! listener uses (its resolver also notes each ClientHello's server name for the 421 check),
//! the hot swap of renewed pairs, and the
//! record layer an open `wss://` tunnel runs in place in the relay's buffers once rustls has
//! done the handshake. The handshake itself is driven from `proxy`.
//!
//! The crypto provider is aws-lc-rs (the measurement is in Cargo.toml). Its AEAD module is
//! re-exported as [`aead`] so the tunnel's record layer seals and opens with the same crate
//! rustls negotiated the keys with.

pub mod certificates;
pub mod record;
mod reload;
pub mod sni;
#[doc(hidden)]
pub mod testing;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs as provider;

pub use aws_lc_rs::aead;
pub use certificates::{CertError, Pair};
pub use reload::CertificateReloads;

use crate::config::{MinVersion, TlsSettings};
use crate::http::host;
use certificates::{PemFiles, unix_now};
use sni::{CertificateSet, Resolver};

/// What a TLS client may get: ALPN names offered (HTTP/1.1 only: the upgrade to WebSocket
/// is an HTTP/1.1 mechanism, RFC 8441's HTTP/2 one is not served).
const ALPN: &[&[u8]] = &[b"http/1.1"];

/// The loaded certificates and the rustls configuration built around them.
#[derive(Debug)]
pub struct Tls {
    config: Arc<ServerConfig>,
    resolver: Arc<Resolver>,
    provider: Arc<CryptoProvider>,
    /// Per configured pair, in config order: the files as last read. The lock makes reloads
    /// one at a time; handshakes never take it.
    last_read: Mutex<Vec<Option<PemFiles>>>,
    settings: TlsSettings,
    pub reloads: CertificateReloads,
}

impl Tls {
    /// Loads every pair of `settings` (start-up and `--check`): the first bad one is the
    /// error, naming its file.
    pub fn load(settings: &TlsSettings) -> Result<Tls, CertError> {
        let provider = Arc::new(provider::default_provider());
        let mut pairs = Vec::with_capacity(settings.certificates.len());
        let mut last_read = Vec::with_capacity(settings.certificates.len());
        for paths in &settings.certificates {
            let files = PemFiles::read(paths)?;
            pairs.push(Arc::new(Pair::parse(paths, &files, &provider)?));
            last_read.push(Some(files));
        }
        let resolver = Arc::new(Resolver::new(
            CertificateSet::new(pairs),
            settings.unknown_sni,
        ));
        let config = server_config(provider.clone(), resolver.clone(), settings.min_version)
            .map_err(|e| CertError {
                file: settings.certificates[0].cert.clone(),
                reason: format!("cannot build the TLS configuration: {e}"),
            })?;
        Ok(Tls {
            config,
            resolver,
            provider,
            last_read: Mutex::new(last_read),
            settings: settings.clone(),
            reloads: CertificateReloads::default(),
        })
    }

    /// The configuration for every TLS connection (`rustls::server::UnbufferedServerConnection::new`).
    /// Long-lived: a renewal changes what its resolver returns, never the configuration.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// Whether a connection whose client sent `sni` (`None`: no SNI) may carry a request for
    /// `host` (no port, any case, as `RequestHead::routing_host` gives it): the certificate
    /// that SNI gets covers that host. A request that fails this is answered 421. A client
    /// that sent no SNI and asks for an IP address is let through: SNI cannot carry an
    /// address (RFC 6066 section 3), so there is no name to hold it to.
    pub fn serves(&self, sni: Option<&str>, host: &[u8]) -> bool {
        if sni.is_none() && host::is_ip_literal(host) {
            return true;
        }
        // No Arc clone: one arc-swap load per request.
        let set = self.resolver.current.load();
        set.choose(sni, self.resolver.unknown_sni)
            .is_some_and(|i| set.pairs[i].covers(host))
    }

    /// Handshakes without a known SNI name: [given the default certificate, rejected].
    pub fn unknown_sni(&self) -> [u64; 2] {
        [
            self.resolver
                .defaulted
                .load(std::sync::atomic::Ordering::Relaxed),
            self.resolver
                .rejected
                .load(std::sync::atomic::Ordering::Relaxed),
        ]
    }

    /// The certificate and key files, for the watcher.
    pub fn files(&self) -> Vec<PathBuf> {
        self.settings
            .certificates
            .iter()
            .flat_map(|p| [p.cert.clone(), p.key.clone()])
            .collect()
    }

    /// The pairs in use, in config order.
    pub fn pairs(&self) -> Vec<Arc<Pair>> {
        self.resolver.current.load().pairs.clone()
    }

    /// What an operator should hear about the pairs in use (expired, not yet valid, no name).
    pub fn warnings(&self) -> Vec<String> {
        let now = unix_now();
        self.pairs().iter().flat_map(|p| p.warnings(now)).collect()
    }

    /// `example.com, www.example.com (until 2027-03-01 ...); *.example.net (until ...)`.
    pub fn summary(&self) -> String {
        self.pairs()
            .iter()
            .map(|p| {
                let names: Vec<String> = p.names.iter().map(|n| n.to_string()).collect();
                let names = if names.is_empty() {
                    p.paths.cert.display().to_string()
                } else {
                    names.join(", ")
                };
                format!("{names} (until {})", certificates::format_time(p.not_after))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// One `ServerConfig` for every TLS listener: the resolver, HTTP/1.1 by ALPN, the versions
/// `min_version` allows, no 0-RTT (early data could be replayed, and a proxy cannot tell
/// which requests are safe to replay), secrets extractable for the tunnel's own record
/// layer, and stateless session tickets (TLS 1.3 resumption works across workers without a
/// shared cache; the ticket key rotates every 6 hours).
fn server_config(
    provider: Arc<CryptoProvider>,
    resolver: Arc<Resolver>,
    min_version: MinVersion,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match min_version {
        MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    config.enable_secret_extraction = true;
    config.max_early_data_size = 0;
    config.ticketer = provider::Ticketer::new()?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests;
