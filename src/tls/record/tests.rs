//! The record layer against a real rustls client: a handshake in memory, then records both
//! ways, `KeyUpdate` both ways, `close_notify`, and damaged records, for every suite.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::SupportedCipherSuite;
use rustls::client::{ClientConfig, ClientConnection};
use rustls::crypto::aws_lc_rs as provider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ServerConfig, UnbufferedServerConnection};
use rustls::unbuffered::ConnectionState;

use super::*;

fn configs(suite: SupportedCipherSuite) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let cert = rcgen::generate_simple_self_signed(vec!["example.test".into()]).unwrap();
    let der = CertificateDer::from(cert.cert.der().to_vec());
    let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
    let mut provider = provider::default_provider();
    provider.cipher_suites = vec![suite];
    let provider = Arc::new(provider);
    let version = match suite {
        SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
        SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
    };
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .unwrap();
    server.enable_secret_extraction = true;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

/// Moves what the client wrote to `wire`.
fn flush(client: &mut ClientConnection, wire: &mut Vec<u8>) {
    while client.wants_write() {
        client.write_tls(wire).unwrap();
    }
}

/// Feeds `wire` to the client.
fn feed(client: &mut ClientConnection, wire: &mut Vec<u8>) {
    let mut slice = &wire[..];
    while !slice.is_empty() {
        client.read_tls(&mut slice).unwrap();
        client.process_new_packets().unwrap();
    }
    wire.clear();
}

/// Runs the handshake between a rustls client and an unbuffered server in memory, as
/// `proxy::client` does over a socket.
fn connect(suite: SupportedCipherSuite) -> (ClientConnection, TunnelTls) {
    let (server_config, client_config) = configs(suite);
    let name = ServerName::try_from("example.test").unwrap();
    let mut client = ClientConnection::new(client_config, name).unwrap();
    let mut server = UnbufferedServerConnection::new(server_config).unwrap();
    let mut to_server: Vec<u8> = Vec::new();
    let mut to_client: Vec<u8> = Vec::new();
    flush(&mut client, &mut to_server);
    for _ in 0..100 {
        let status = server.process_tls_records(&mut to_server);
        let discard = status.discard;
        let mut blocked = false;
        let mut done = false;
        match status.state.unwrap() {
            ConnectionState::EncodeTlsData(mut s) => {
                let mut buf = vec![0; 16384];
                let n = s.encode(&mut buf).unwrap();
                to_client.extend_from_slice(&buf[..n]);
            }
            ConnectionState::TransmitTlsData(s) => s.done(),
            ConnectionState::BlockedHandshake => blocked = true,
            ConnectionState::WriteTraffic(_) => done = true,
            other => panic!("unexpected {other:?}"),
        }
        to_server.drain(..discard);
        if done {
            feed(&mut client, &mut to_client);
            assert!(!client.is_handshaking());
            let (secrets, kernel) = server.dangerous_into_kernel_connection().unwrap();
            return (client, TunnelTls::new(secrets, kernel).unwrap());
        }
        if blocked {
            feed(&mut client, &mut to_client);
            flush(&mut client, &mut to_server);
        }
    }
    panic!("no handshake");
}

fn suites() -> Vec<SupportedCipherSuite> {
    provider::ALL_CIPHER_SUITES
        .iter()
        .copied()
        .filter(|s| {
            let name = format!("{:?}", s.suite());
            name.contains("ECDSA") || name.starts_with("TLS13")
        })
        .collect()
}

fn client_records(client: &mut ClientConnection, data: &[u8]) -> Vec<u8> {
    client.writer().write_all(data).unwrap();
    let mut wire = Vec::new();
    flush(client, &mut wire);
    wire
}

fn client_reads(client: &mut ClientConnection, mut wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while !wire.is_empty() {
        client.read_tls(&mut wire).unwrap();
        client.process_new_packets().unwrap();
        match client.reader().read_to_end(&mut out) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    }
    out
}

fn seal_all(tls: &mut TunnelTls, data: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    for chunk in data.chunks(MAX_PLAIN) {
        let mut out = vec![0; MAX_PREFIX + chunk.len() + MAX_OVERHEAD];
        let prefix = tls.prefix();
        out[prefix..prefix + chunk.len()].copy_from_slice(chunk);
        let n = tls.seal(&mut out, chunk.len()).unwrap();
        wire.extend_from_slice(&out[..n]);
    }
    wire
}

#[test]
fn records_both_ways_for_every_suite() {
    let suites = suites();
    assert!(suites.len() >= 5, "{suites:?}");
    for suite in suites {
        let (mut client, mut tls) = connect(suite);
        let data: Vec<u8> = (0..40_000u32).map(|i| (i * 7) as u8).collect();
        let wire = client_records(&mut client, &data);
        // Fed in pieces that cut records anywhere, as reads do.
        let mut got = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        for piece in wire.chunks(1000) {
            pending.extend_from_slice(piece);
            let opened = tls.open(&mut pending).unwrap();
            got.extend_from_slice(&pending[..opened.plain]);
            pending.drain(..opened.consumed);
        }
        assert!(pending.is_empty());
        assert_eq!(got, data, "{suite:?}");
        let wire = seal_all(&mut tls, &data);
        assert_eq!(client_reads(&mut client, &wire), data, "{suite:?}");
    }
}

#[test]
fn key_updates_both_ways_in_tls13() {
    let tls13 = suites()
        .into_iter()
        .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)));
    for suite in tls13 {
        let (mut client, mut tls) = connect(suite);
        for round in 0..3 {
            // The client rekeys and asks us to: we open its KeyUpdate, and our next record
            // follows a KeyUpdate of ours.
            client.refresh_traffic_keys().unwrap();
            let msg = format!("after update {round}");
            let mut wire = client_records(&mut client, msg.as_bytes());
            let opened = tls.open(&mut wire).unwrap();
            assert_eq!(&wire[..opened.plain], msg.as_bytes());
            assert_eq!(opened.consumed, wire.len());
            assert!(tls.prefix() > HEADER, "a KeyUpdate is due");
            let reply = seal_all(&mut tls, b"reply");
            assert_eq!(client_reads(&mut client, &reply), b"reply");
            assert_eq!(tls.prefix(), HEADER);
        }
    }
}

#[test]
fn close_notify_ends_the_stream() {
    for suite in suites() {
        let (mut client, mut tls) = connect(suite);
        client.writer().write_all(b"last").unwrap();
        client.send_close_notify();
        let mut wire = Vec::new();
        flush(&mut client, &mut wire);
        let opened = tls.open(&mut wire).unwrap();
        assert!(opened.closed);
        assert_eq!(&wire[..opened.plain], b"last");
        // Ours reaches the client as a clean close.
        let mut out = vec![0; MAX_OVERHEAD + 2];
        let n = tls.seal_close_notify(&mut out).unwrap();
        let mut slice = &out[..n];
        client.read_tls(&mut slice).unwrap();
        let state = client.process_new_packets().unwrap();
        assert!(state.peer_has_closed(), "{suite:?}");
    }
}

#[test]
fn damaged_or_oversized_records_are_refused() {
    for suite in suites() {
        let (mut client, mut tls) = connect(suite);
        let mut wire = client_records(&mut client, b"hello");
        let last = wire.len() - 1;
        wire[last] ^= 1;
        assert_eq!(tls.open(&mut wire), Err(RecordError::BadRecordMac));
        let mut huge = vec![23, 3, 3, 0x48, 0x01];
        huge.resize(100, 0);
        assert_eq!(tls.open(&mut huge), Err(RecordError::Oversized));
    }
}
