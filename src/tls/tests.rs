//! Certificates made in the test with rcgen: every key format loads, bad pairs are refused
//! naming the file, SNI picks exact over wildcard, `unknown_sni`, `serves`, reloads, and real
//! in-memory rustls handshakes against the `ServerConfig`.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rcgen::{CertificateParams, KeyPair, SignatureAlgorithm};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};

use super::*;
use crate::config::{CertificatePaths, UnknownSni};
use crate::os::watch::Trigger;

/// A self-signed certificate for `names` with a new key of `alg`; (cert PEM, key).
fn make(alg: &'static SignatureAlgorithm, names: &[&str]) -> (String, KeyPair) {
    let key = KeyPair::generate_for(alg).unwrap();
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    (params.self_signed(&key).unwrap().pem(), key)
}

fn p256(names: &[&str]) -> (String, KeyPair) {
    make(&rcgen::PKCS_ECDSA_P256_SHA256, names)
}

/// The inner key of a PKCS#8 `PrivateKeyInfo`: PKCS#1 `RSAPrivateKey` for RSA, SEC1
/// `ECPrivateKey` for EC.
fn unwrap_pkcs8(der: &[u8]) -> Vec<u8> {
    let (info, _) = certificates::element(der, 0x30).unwrap();
    let (_, rest) = certificates::element(info, 0x02).unwrap();
    let (_, rest) = certificates::element(rest, 0x30).unwrap();
    certificates::element(rest, 0x04).unwrap().0.to_vec()
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// Writes `name.pem` and `name.key` into `dir`.
fn write_pair(dir: &Path, name: &str, cert: &str, key: &str) -> CertificatePaths {
    let paths = CertificatePaths {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&paths.cert, cert).unwrap();
    std::fs::write(&paths.key, key).unwrap();
    paths
}

fn provider() -> CryptoProvider {
    provider::default_provider()
}

fn load(dir: &Path, name: &str, cert: &str, key: &str) -> Result<Pair, CertError> {
    Pair::load(&write_pair(dir, name, cert, key), &provider())
}

#[test]
fn every_key_format_loads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cert, key) = make(&rcgen::PKCS_RSA_SHA256, &["rsa.example.com"]);
    load(d, "rsa8", &cert, &key.serialize_pem()).expect("RSA PKCS#8");
    let pkcs1 = pem("RSA PRIVATE KEY", &unwrap_pkcs8(&key.serialize_der()));
    load(d, "rsa1", &cert, &pkcs1).expect("RSA PKCS#1");

    let (cert, key) = p256(&["ec.example.com"]);
    load(d, "ec8", &cert, &key.serialize_pem()).expect("ECDSA P-256 PKCS#8");
    let sec1 = pem("EC PRIVATE KEY", &unwrap_pkcs8(&key.serialize_der()));
    load(d, "sec1", &cert, &sec1).expect("ECDSA P-256 SEC1");

    let (cert, key) = make(&rcgen::PKCS_ECDSA_P384_SHA384, &["ec384.example.com"]);
    load(d, "ec384", &cert, &key.serialize_pem()).expect("ECDSA P-384 PKCS#8");
    let (cert, key) = make(&rcgen::PKCS_ED25519, &["ed.example.com"]);
    load(d, "ed", &cert, &key.serialize_pem()).expect("Ed25519");
}

#[test]
fn names_come_from_the_subject_alt_names_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = p256(&["Example.com", "*.example.net", "www.example.com"]);
    let pair = load(dir.path(), "a", &cert, &key.serialize_pem()).unwrap();
    let names: Vec<String> = pair.names.iter().map(|n| n.to_string()).collect();
    assert_eq!(names, ["example.com", "*.example.net", "www.example.com"]);
    assert_eq!(pair.label(), "example.com");
    assert!(pair.warnings(certificates::unix_now()).is_empty());
}

#[test]
fn validity_dates_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec!["old.example.com".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2019, 3, 1);
    params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let cert = params.self_signed(&key).unwrap().pem();
    let pair = load(dir.path(), "old", &cert, &key.serialize_pem()).expect("expired loads");
    assert_eq!(pair.not_before, 1_551_398_400);
    assert_eq!(pair.not_after, 1_577_836_800);
    let warnings = pair.warnings(certificates::unix_now());
    assert!(
        warnings[0].contains("expired at 2020-01-01 00:00:00 UTC"),
        "{warnings:?}"
    );
    assert!(warnings[0].contains("old.pem"), "{warnings:?}");
    let early = pair.warnings(1_500_000_000);
    assert!(
        early[0].contains("not valid before 2019-03-01"),
        "{early:?}"
    );
}

#[test]
fn a_key_of_another_certificate_is_refused_naming_the_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = p256(&["a.example.com"]);
    let (_, other) = p256(&["b.example.com"]);
    let e = load(dir.path(), "mixed", &cert, &other.serialize_pem()).unwrap_err();
    assert!(e.file.ends_with("mixed.key"), "{e}");
    assert!(
        e.reason.contains("does not belong to the certificate"),
        "{e}"
    );
    assert!(e.reason.contains("mixed.pem"), "{e}");
}

#[test]
fn unreadable_or_unparsable_files_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cert, key) = p256(&["a.example.com"]);
    let key = key.serialize_pem();
    let cases: [(&str, &str, &str, &str); 5] = [
        ("garbage", "hello", "garbage.pem", "holds no certificate"),
        (
            "cut",
            &cert[..cert.len() - 30],
            "cut.pem",
            "no -----END line",
        ),
        ("keyless", &cert, "keyless.key", "holds no private key"),
        (
            "badder",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            "badder.pem",
            "not a valid X.509 certificate",
        ),
        ("ok", &cert, "", ""),
    ];
    for (name, cert_text, file, says) in cases {
        let key_text = if name == "keyless" { cert_text } else { &key };
        let outcome = load(d, name, cert_text, key_text);
        if file.is_empty() {
            outcome.expect("the good pair");
            continue;
        }
        let e = outcome.unwrap_err();
        assert!(e.file.ends_with(file), "{name}: {e}");
        assert!(e.reason.contains(says), "{name}: {e}");
    }
    let missing = CertificatePaths {
        cert: d.join("none.pem"),
        key: d.join("none.key"),
    };
    let e = Pair::load(&missing, &provider()).unwrap_err();
    assert!(e.to_string().contains("none.pem: cannot read"), "{e}");
}

/// A `[tls]` section over pairs written into `dir`: one per list of names, in order.
fn tls_for(dir: &Path, sets: &[&[&str]], unknown_sni: UnknownSni) -> Tls {
    let certificates = sets
        .iter()
        .enumerate()
        .map(|(i, names)| {
            let (cert, key) = p256(names);
            write_pair(dir, &format!("c{i}"), &cert, &key.serialize_pem())
        })
        .collect();
    Tls::load(&TlsSettings {
        certificates,
        unknown_sni,
        min_version: MinVersion::Tls12,
    })
    .unwrap()
}

fn chosen(tls: &Tls, sni: Option<&str>) -> Option<String> {
    tls.resolver.pick(sni).map(|p| p.label())
}

#[test]
fn sni_prefers_an_exact_name_to_a_wildcard_in_any_case() {
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_for(
        dir.path(),
        &[
            &["example.com", "www.example.com"],
            &["*.example.net"],
            &["a.example.net"],
        ],
        UnknownSni::Default,
    );
    assert_eq!(
        chosen(&tls, Some("www.example.com")).unwrap(),
        "example.com"
    );
    assert_eq!(
        chosen(&tls, Some("a.example.net")).unwrap(),
        "a.example.net"
    );
    assert_eq!(
        chosen(&tls, Some("A.Example.NET")).unwrap(),
        "a.example.net"
    );
    assert_eq!(
        chosen(&tls, Some("b.example.net")).unwrap(),
        "*.example.net"
    );
    assert_eq!(
        chosen(&tls, Some("b.example.net.")).unwrap(),
        "*.example.net"
    );
    // One label only: neither the bare domain nor a deeper name falls under the wildcard.
    assert_eq!(
        chosen(&tls, Some("x.b.example.net")).unwrap(),
        "example.com"
    );
    assert_eq!(chosen(&tls, Some("example.net")).unwrap(), "example.com");
    assert_eq!(chosen(&tls, None).unwrap(), "example.com");
    let long = "a".repeat(300);
    assert_eq!(chosen(&tls, Some(&long)).unwrap(), "example.com");
}

#[test]
fn unknown_sni_reject_gives_no_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_for(dir.path(), &[&["example.com"]], UnknownSni::Reject);
    assert_eq!(chosen(&tls, Some("example.com")).unwrap(), "example.com");
    assert_eq!(chosen(&tls, Some("other.com")), None);
    assert_eq!(chosen(&tls, None), None);
}

#[test]
fn serves_holds_the_host_to_the_certificate_its_sni_got() {
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_for(
        dir.path(),
        &[&["example.com", "www.example.com"], &["*.example.net"]],
        UnknownSni::Default,
    );
    let table: [(Option<&str>, &str, bool); 12] = [
        (Some("example.com"), "example.com", true),
        (Some("example.com"), "WWW.example.com", true),
        (Some("example.com"), "a.example.net", false),
        (Some("a.example.net"), "b.example.net", true),
        (Some("a.example.net"), "example.com", false),
        (Some("a.example.net"), "x.b.example.net", false),
        // Unknown SNI and no SNI get the default (first) certificate.
        (Some("other.org"), "example.com", true),
        (Some("other.org"), "other.org", false),
        (None, "www.example.com", true),
        (None, "a.example.net", false),
        // No SNI can name an address: a request by address is let through.
        (None, "127.0.0.1", true),
        (Some("example.com"), "127.0.0.1", false),
    ];
    for (sni, host, want) in table {
        assert_eq!(tls.serves(sni, host.as_bytes()), want, "{sni:?} {host}");
    }
    let reject = tls_for(dir.path(), &[&["example.com"]], UnknownSni::Reject);
    assert!(!reject.serves(Some("other.org"), b"example.com"));
    assert!(reject.serves(None, b"[::1]"));
}

#[test]
fn a_reload_takes_good_pairs_and_keeps_the_old_for_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_for(
        dir.path(),
        &[&["a.example.com"], &["b.example.com"]],
        UnknownSni::Reject,
    );
    let counts = || {
        (
            tls.reloads.ok.load(Ordering::Relaxed),
            tls.reloads.failed.load(Ordering::Relaxed),
        )
    };
    assert_eq!(tls.reload(Trigger::Watch), 0, "nothing changed");
    assert_eq!(counts(), (0, 0));

    let c1 = dir.path().join("c1.pem");
    std::fs::write(&c1, "not a certificate").unwrap();
    assert_eq!(tls.reload(Trigger::Watch), 0);
    assert_eq!(counts(), (0, 1));
    assert_eq!(
        chosen(&tls, Some("b.example.com")).unwrap(),
        "b.example.com"
    );
    assert_eq!(
        tls.reload(Trigger::Watch),
        0,
        "the same bad file is not counted again"
    );
    assert_eq!(counts(), (0, 1));

    let (cert, key) = p256(&["b.example.com", "c.example.com"]);
    write_pair(dir.path(), "c1", &cert, &key.serialize_pem());
    assert_eq!(tls.reload(Trigger::Watch), 1);
    assert_eq!(counts(), (1, 1));
    assert_eq!(
        chosen(&tls, Some("c.example.com")).unwrap(),
        "b.example.com"
    );
    assert_eq!(
        chosen(&tls, Some("a.example.com")).unwrap(),
        "a.example.com"
    );

    std::fs::remove_file(dir.path().join("c0.key")).unwrap();
    assert_eq!(tls.reload(Trigger::Signal), 1, "SIGHUP reads every pair");
    assert_eq!(counts(), (2, 2));
    assert_eq!(
        chosen(&tls, Some("a.example.com")).unwrap(),
        "a.example.com"
    );
    assert_eq!(tls.files().len(), 4);
    let expiry = tls.expiry();
    assert_eq!(expiry[1].0, "b.example.com");
    assert!(expiry[1].1.ends_with("c1.pem"));
}

/// Runs a handshake in memory; the server's certificate (first SAN) or the error.
fn handshake(
    tls: &Tls,
    sni: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<(Vec<String>, ServerConnection), rustls::Error> {
    let mut client = testing::client_config(Arc::new(provider()), versions)?;
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut c = ClientConnection::new(
        Arc::new(client),
        ServerName::try_from(sni.to_string()).unwrap(),
    )?;
    let mut s = ServerConnection::new(tls.server_config())?;
    testing::handshake(&mut c, &mut s, &mut Vec::new())?;
    let leaf = &c.peer_certificates().unwrap()[0];
    let names = webpki::EndEntityCert::try_from(leaf)
        .unwrap()
        .valid_dns_names()
        .map(String::from)
        .collect();
    Ok((names, s))
}

#[test]
fn handshakes_get_the_certificate_their_sni_names() {
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_for(
        dir.path(),
        &[&["example.com"], &["*.example.net"]],
        UnknownSni::Reject,
    );
    let both = &[&rustls::version::TLS13, &rustls::version::TLS12][..];
    let (names, server) = handshake(&tls, "chat.example.net", both).unwrap();
    assert_eq!(names, ["*.example.net"]);
    assert_eq!(server.server_name(), Some("chat.example.net"));
    assert_eq!(server.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(
        server.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    // The tunnel's record layer takes the traffic secrets over.
    assert!(server.dangerous_extract_secrets().is_ok());

    let (names, _) = handshake(&tls, "example.com", &[&rustls::version::TLS12]).unwrap();
    assert_eq!(names, ["example.com"]);
    assert_eq!(tls.unknown_sni(), [0, 0]);
    assert!(
        handshake(&tls, "other.org", both).is_err(),
        "unknown_sni = reject"
    );
    assert_eq!(tls.unknown_sni(), [0, 1]);
}

#[test]
fn min_version_1_3_refuses_a_tls_1_2_client() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = p256(&["example.com"]);
    let paths = write_pair(dir.path(), "a", &cert, &key.serialize_pem());
    let tls = Tls::load(&TlsSettings {
        certificates: vec![paths],
        unknown_sni: UnknownSni::Default,
        min_version: MinVersion::Tls13,
    })
    .unwrap();
    assert!(handshake(&tls, "example.com", &[&rustls::version::TLS12]).is_err());
    assert!(handshake(&tls, "example.com", &[&rustls::version::TLS13]).is_ok());
    let (names, _) = handshake(&tls, "other.org", &[&rustls::version::TLS13]).unwrap();
    assert_eq!(names, ["example.com"], "unknown_sni = default");
    assert_eq!(tls.unknown_sni(), [1, 0]);
    assert_eq!(tls.server_config().max_early_data_size, 0);
    assert!(tls.server_config().ticketer.enabled());
}
