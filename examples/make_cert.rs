//! Makes a throwaway CA and a server certificate it signed, for trying TLS locally
//! (`scripts/demo.sh --tls`). Never use these for anything real: the CA's key is thrown away,
//! but anyone who can read `key.pem` can be this server.
//! `cargo run --example make_cert -- DIR [NAME ...]` (names default to `localhost` and
//! `127.0.0.1`) writes into DIR:
//!   ca.pem           the CA certificate: what a client trusts (`curl --cacert`, `ws_send --ca`,
//!                    a browser's "Authorities")
//!   cert.pem         the server's chain, leaf then CA: `[tls] certificates = [{ cert = ...`
//!   key.pem          the server's private key (PKCS#8), readable by its owner only
//!   spki-sha256.txt  base64(SHA-256(the server key's SubjectPublicKeyInfo)): what Chromium's
//!                    `--ignore-certificate-errors-spki-list` takes to trust this key alone

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: make_cert DIR [NAME ...] (names default to localhost 127.0.0.1)")?;
    let mut names: Vec<String> = args.collect();
    if names.is_empty() {
        names = vec!["localhost".into(), "127.0.0.1".into()];
    }
    let dir = Path::new(&dir);
    std::fs::create_dir_all(dir)?;

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "wsplice demo CA (throwaway)");
    let ca = ca_params.clone().self_signed(&ca_key)?;

    // An IP address among the names becomes an IP subjectAltName (rcgen parses it).
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.clone())?;
    params
        .distinguished_name
        .push(DnType::CommonName, names[0].as_str());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = params.signed_by(&key, &Issuer::from_params(&ca_params, &ca_key))?;

    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(dir.join("cert.pem"), leaf.pem() + &ca.pem())?;
    let _ = std::fs::remove_file(dir.join("key.pem"));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join("key.pem"))?
        .write_all(key.serialize_pem().as_bytes())?;
    let spki =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &key.subject_public_key_info());
    let spki = base64::engine::general_purpose::STANDARD.encode(spki.as_ref());
    std::fs::write(dir.join("spki-sha256.txt"), format!("{spki}\n"))?;
    println!(
        "make_cert: {} for {} (CA {})",
        dir.join("cert.pem").display(),
        names.join(", "),
        dir.join("ca.pem").display()
    );
    Ok(())
}
