//! The TLS side of the benchmark: one CA and one ECDSA P-256 certificate made at start (the
//! same files for every proxy), and the client's configuration, which offers exactly one
//! protocol version (TLS 1.3), one cipher suite (TLS_AES_128_GCM_SHA256) and one key
//! exchange (X25519) and never resumes, so every proxy negotiates the same thing and every
//! handshake is a full one.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The name the certificate is for, the client's SNI and its `Host`.
pub const SERVER_NAME: &str = "localhost";

/// Certificate files in a directory, for the proxies' configs.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The leaf then the CA, PEM (nginx `ssl_certificate`, wsplice `cert`).
    pub chain: PathBuf,
    /// The leaf's PKCS#8 key, PEM.
    pub key: PathBuf,
    /// The chain then the key in one file (HAProxy's `crt`).
    pub combined: PathBuf,
    /// The CA alone, PEM (the client's root).
    pub ca: PathBuf,
}

/// Makes a CA and an ECDSA P-256 certificate for [`SERVER_NAME`] and 127.0.0.1 that it
/// signed, and writes them into `dir`.
pub fn make_certificates(dir: &Path) -> Result<CertFiles, String> {
    let alg = &rcgen::PKCS_ECDSA_P256_SHA256;
    let err = |e: rcgen::Error| format!("making the benchmark certificate: {e}");
    let ca_key = rcgen::KeyPair::generate_for(alg).map_err(err)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wsplice-bench CA");
    let ca = ca_params.clone().self_signed(&ca_key).map_err(err)?;
    let key = rcgen::KeyPair::generate_for(alg).map_err(err)?;
    let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(err)?;
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, SERVER_NAME);
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let leaf = params.signed_by(&key, &issuer).map_err(err)?;

    let chain = leaf.pem() + &ca.pem();
    let key_pem = key.serialize_pem();
    let files = CertFiles {
        chain: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        combined: dir.join("cert+key.pem"),
        ca: dir.join("ca.pem"),
    };
    let write = |path: &Path, text: &str| {
        fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write(&files.chain, &chain)?;
    write(&files.key, &key_pem)?;
    write(&files.combined, &(chain.clone() + &key_pem))?;
    write(&files.ca, &ca.pem())?;
    Ok(files)
}

/// The client's TLS settings: cheap to clone (one `Arc`).
#[derive(Debug, Clone)]
pub struct Client {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    /// The `Host` the upgrade request names (without the port).
    pub host: String,
}

impl Client {
    /// Trusts the CA in the PEM file `ca` and sends `name` as SNI and `Host`.
    pub fn new(ca: &Path, name: &str) -> Result<Client, String> {
        let mut roots = rustls::RootCertStore::empty();
        let certs =
            CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", ca.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("{}: no certificate", ca.display()));
        }
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider.cipher_suites =
            vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256];
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS client config: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Every handshake a full one: no session tickets or IDs kept.
        config.resumption = Resumption::disabled();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let server_name =
            ServerName::try_from(name.to_string()).map_err(|e| format!("{name:?}: {e}"))?;
        Ok(Client {
            config: Arc::new(config),
            name: server_name,
            host: name.to_string(),
        })
    }

    /// The TLS handshake over a connected socket.
    pub async fn handshake(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        TlsConnector::from(self.config.clone())
            .connect(self.name.clone(), tcp)
            .await
    }
}
