//! The TLS costs wsplice pays, through its own `tls` module: a full TLS 1.3 handshake
//! (ECDSA P-256, X25519) against the `ServerConfig` that `Tls::load` builds, with the SNI
//! resolver in the path, and sealing 16 KiB records with `wsplice::tls::aead`, the AEAD the
//! tunnel's record layer uses. The figures that chose the provider are in Cargo.toml.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, ServerConnection};
use wsplice::config::{CertificatePaths, MinVersion, TlsSettings, UnknownSni};
use wsplice::tls::{Tls, aead};

const RECORD: usize = 16 * 1024;

/// The client side trusts the bench's self-signed certificate without a chain but still
/// checks the handshake signature, so the server's signing is exercised as with a browser.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

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

fn handshake(client: &Arc<ClientConfig>, server: &Arc<rustls::ServerConfig>, buf: &mut Vec<u8>) {
    let name = ServerName::try_from("bench.example.com").unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    while c.is_handshaking() || s.is_handshaking() {
        buf.clear();
        while c.wants_write() {
            c.write_tls(buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets().unwrap();
        }
        buf.clear();
        while s.wants_write() {
            s.write_tls(buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
        }
    }
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = rcgen::CertificateParams::new(vec!["bench.example.com".to_string()]).unwrap();
    let paths = CertificatePaths {
        cert: dir.path().join("bench.pem"),
        key: dir.path().join("bench.key"),
    };
    std::fs::write(&paths.cert, params.self_signed(&key).unwrap().pem()).unwrap();
    std::fs::write(&paths.key, key.serialize_pem()).unwrap();
    let tls = Tls::load(&TlsSettings {
        certificates: vec![paths],
        unknown_sni: UnknownSni::Default,
        min_version: MinVersion::Tls13,
    })
    .unwrap();
    let server = tls.server_config();
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let provider = Arc::new(provider);
    let client = Arc::new(
        ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    );
    let mut buf = Vec::with_capacity(8192);
    c.bench_function("tls13_handshake_p256_x25519_client_and_server", |b| {
        b.iter(|| handshake(&client, &server, &mut buf))
    });

    let mut group = c.benchmark_group("seal_16k_record");
    group.throughput(Throughput::Bytes(RECORD as u64));
    for (name, alg) in [
        ("aes_128_gcm", &aead::AES_128_GCM),
        ("chacha20_poly1305", &aead::CHACHA20_POLY1305),
    ] {
        let key =
            aead::LessSafeKey::new(aead::UnboundKey::new(alg, &[7; 32][..alg.key_len()]).unwrap());
        let mut record = vec![0u8; RECORD];
        let mut seq = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&seq.to_be_bytes());
                seq += 1;
                let tag = key
                    .seal_in_place_separate_tag(
                        aead::Nonce::assume_unique_for_key(nonce),
                        aead::Aad::from([23, 3, 3, 0x40, 0x11]),
                        &mut record,
                    )
                    .unwrap();
                black_box(tag.as_ref()[0]);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
