//! For tests and benches only (hidden from the docs): a rustls client that trusts wsplice's
//! self-signed test certificates, and a handshake run in memory against a `ServerConnection`.
//! Here rather than in each test so the unit tests, `tests/` and `benches/` share one copy.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, ServerConnection,
    SupportedProtocolVersion,
};

/// Accepts any server certificate (test certificates are self-signed, without a chain) but
/// still checks the handshake signature, so the server signs as it would for a browser.
#[derive(Debug)]
pub struct AnyCertificate(pub Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client configuration of `provider` and `versions` that trusts any certificate
/// ([`AnyCertificate`]).
pub fn client_config(
    provider: Arc<CryptoProvider>,
    versions: &[&'static SupportedProtocolVersion],
) -> Result<ClientConfig, rustls::Error> {
    Ok(ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth())
}

/// Passes records between `client` and `server`, through `buf`, until both have finished
/// the handshake; the first error either side finds. A handshake takes at most a few
/// flights: one that has not finished after ten is an error too.
pub fn handshake(
    client: &mut ClientConnection,
    server: &mut ServerConnection,
    buf: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    for _ in 0..10 {
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
        buf.clear();
        while client.wants_write() {
            client.write_tls(buf).map_err(io_error)?;
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).map_err(io_error)?;
            server.process_new_packets()?;
        }
        buf.clear();
        while server.wants_write() {
            server.write_tls(buf).map_err(io_error)?;
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).map_err(io_error)?;
            client.process_new_packets()?;
        }
    }
    match client.is_handshaking() || server.is_handshaking() {
        true => Err(rustls::Error::General(
            "the handshake did not finish in ten flights".into(),
        )),
        false => Ok(()),
    }
}

fn io_error(e: std::io::Error) -> rustls::Error {
    rustls::Error::General(format!("in-memory record transfer: {e}"))
}
