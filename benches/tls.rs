//! The TLS costs wsplice pays, through its own `tls` module: a full TLS 1.3 handshake
//! (ECDSA P-256, X25519) against the `ServerConfig` that `Tls::load` builds, with the SNI
//! resolver in the path, and sealing 16 KiB records with `wsplice::tls::aead`, the AEAD the
//! tunnel's record layer uses. The figures that chose the provider are in Cargo.toml.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConnection};
use wsplice::config::{CertificatePaths, MinVersion, TlsSettings, UnknownSni};
use wsplice::tls::{Tls, aead, testing};

const RECORD: usize = 16 * 1024;

/// The client trusts the bench's self-signed certificate without a chain but still checks
/// the handshake signature ([`testing::AnyCertificate`]), so the server signs as it would
/// for a browser.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<rustls::ServerConfig>, buf: &mut Vec<u8>) {
    let name = ServerName::try_from("bench.example.com").unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    testing::handshake(&mut c, &mut s, buf).unwrap();
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
    let client = Arc::new(testing::client_config(provider, &[&rustls::version::TLS13]).unwrap());
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
