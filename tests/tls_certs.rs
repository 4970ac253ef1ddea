//! Certificates through the real binary, without TLS I/O: `--check` on good, mismatched and
//! expired pairs; start-up with a `tls = true` listener; a certificate rewritten badly and
//! then well while running, counted in `/metrics`; the expiry gauge.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Proxy, certificate_expiry_key, run_wsplice, wait_certificate_expiry, wait_metric};
use rcgen::{CertificateParams, KeyPair};

const UPSTREAMS: &str = "[backend]\nservers = [\"127.0.0.1:3000\"]\n";
/// 2031-05-01 00:00:00 UTC, the notAfter of the test certificates.
const NOT_AFTER: i64 = 1_935_360_000;

/// A self-signed ECDSA P-256 pair for `names` valid until `until` (y, m, d): PEM texts.
fn pair(names: &[&str], until: (i32, u8, u8)) -> (String, String) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(until.0, until.1, until.2);
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

/// Writes `name.pem` and `name.key` into `dir`; their paths.
fn write(dir: &Path, name: &str, (cert, key): &(String, String)) -> (PathBuf, PathBuf) {
    let paths = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&paths.0, cert).unwrap();
    std::fs::write(&paths.1, key).unwrap();
    paths
}

/// A config with a plain and a TLS listener, the admin endpoint, and `certs` in `[tls]`.
fn config(certs: &[(PathBuf, PathBuf)]) -> String {
    let list: Vec<String> = certs
        .iter()
        .map(|(c, k)| format!("{{ cert = {:?}, key = {:?} }}", c, k))
        .collect();
    format!(
        r#"listen = ["127.0.0.1:0", {{ addr = "127.0.0.2:0", tls = true }}]
workers = 1
upstreams = "upstreams.toml"
admin = "127.0.0.1:0"

[tls]
certificates = [{}]

[[route]]
host = "chat.example.com"
path = "/"
upstream = "backend"
"#,
        list.join(", ")
    )
}

fn check(config: &str) -> (i32, String, String) {
    let out = run_wsplice(config, UPSTREAMS, &["--check"]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_good_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a", &pair(&["chat.example.com"], (2031, 5, 1)));
    let b = write(dir.path(), "b", &pair(&["*.example.net"], (2031, 5, 1)));
    let (code, stdout, stderr) = check(&config(&[a, b]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("is valid") && stdout.contains("2 certificates"),
        "{stdout}"
    );
    assert!(!stderr.contains("warning"), "{stderr}");
    assert!(
        stdout.contains(
            "certificates: chat.example.com (until 2031-05-01 00:00:00 UTC); *.example.net"
        ),
        "{stdout}"
    );
}

#[test]
fn check_refuses_a_key_of_another_certificate_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, _) = pair(&["chat.example.com"], (2031, 5, 1));
    let (_, other_key) = pair(&["chat.example.com"], (2031, 5, 1));
    let a = write(dir.path(), "mixed", &(cert, other_key));
    let (code, stdout, stderr) = check(&config(std::slice::from_ref(&a)));
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("{}: ", a.1.display())) && stderr.contains("does not belong"),
        "{stderr}"
    );
}

#[test]
fn check_refuses_a_missing_or_unparsable_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = pair(&["chat.example.com"], (2031, 5, 1));
    let bad = write(dir.path(), "bad", &("garbage".into(), good.1.clone()));
    let (code, _, stderr) = check(&config(std::slice::from_ref(&bad)));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{}: holds no certificate", bad.0.display())),
        "{stderr}"
    );
    let missing = (dir.path().join("none.pem"), dir.path().join("none.key"));
    let (code, _, stderr) = check(&config(&[missing]));
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("none.pem: cannot read"), "{stderr}");
}

#[test]
fn check_warns_about_an_expired_certificate_but_passes() {
    let dir = tempfile::tempdir().unwrap();
    let old = write(
        dir.path(),
        "old",
        &pair(&["chat.example.com"], (2021, 1, 1)),
    );
    let (code, stdout, stderr) = check(&config(&[old]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("old.pem") && stderr.contains("expired"),
        "{stderr}"
    );
}

#[test]
fn a_tls_listener_without_tls_section_is_refused() {
    let text = config(&[]).replace("[tls]\ncertificates = []\n", "");
    let (code, _, stderr) = check(&text);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("wsplice.toml:1: listen: tls = true needs a [tls] section"),
        "{stderr}"
    );
}

/// Rewrites `path` in place (truncate and write, closed at once), as an editor or `cp` does.
fn rewrite(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test]
async fn certificates_reload_on_change_and_are_counted() {
    let certs = tempfile::tempdir().unwrap();
    let a = write(
        certs.path(),
        "chat",
        &pair(&["chat.example.com"], (2031, 5, 1)),
    );
    let proxy = Proxy::start_raw(&config(std::slice::from_ref(&a)), UPSTREAMS);
    assert!(
        proxy
            .wait_log("admin endpoint on", Duration::from_secs(5))
            .await,
        "{}",
        proxy.log()
    );
    let admin = proxy.admin_addr();
    let served = wait_certificate_expiry(&proxy, &a.0, "chat.example.com", NOT_AFTER).await;
    assert_eq!(served, NOT_AFTER);
    let ok = "wsplice_certificate_reloads_total{result=\"ok\"}";
    let failed = "wsplice_certificate_reloads_total{result=\"failed\"}";
    let first = common::scrape(admin).await;
    assert_eq!(first.get(failed).copied(), Some(0.0));
    let unknown = "wsplice_tls_unknown_sni_total{action=\"default\"}";
    assert_eq!(first.get(unknown).copied(), Some(0.0));

    rewrite(&a.0, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n");
    let n = wait_metric(admin, failed, |v| v >= 1.0, Duration::from_secs(10)).await;
    assert_eq!(n, 1.0, "{}", proxy.log());
    assert!(
        proxy.log().contains("certificate reload refused"),
        "{}",
        proxy.log()
    );
    // The old pair is still the one in use.
    assert_eq!(
        common::scrape(admin)
            .await
            .get(&certificate_expiry_key(&a.0, "chat.example.com"))
            .copied(),
        Some(NOT_AFTER as f64)
    );

    let renewed = pair(&["chat.example.com"], (2032, 1, 1));
    rewrite(&a.1, &renewed.1);
    rewrite(&a.0, &renewed.0);
    let n = wait_metric(admin, ok, |v| v >= 1.0, Duration::from_secs(10)).await;
    assert!(n >= 1.0, "{}", proxy.log());
    let until = wait_certificate_expiry(&proxy, &a.0, "chat.example.com", 1_956_528_000).await;
    assert_eq!(until, 1_956_528_000, "2032-01-01: {}", proxy.log());
}

#[tokio::test]
async fn sighup_reloads_certificates_too() {
    let certs = tempfile::tempdir().unwrap();
    let a = write(
        certs.path(),
        "chat",
        &pair(&["chat.example.com"], (2031, 5, 1)),
    );
    let proxy = Proxy::start_raw(&config(&[a]), UPSTREAMS);
    assert!(
        proxy
            .wait_log("admin endpoint on", Duration::from_secs(5))
            .await
    );
    let admin = proxy.admin_addr();
    proxy.signal("HUP");
    let ok = "wsplice_certificate_reloads_total{result=\"ok\"}";
    assert_eq!(
        wait_metric(admin, ok, |v| v >= 1.0, Duration::from_secs(10)).await,
        1.0
    );
}

/// certbot's layout: `live/NAME/{fullchain,privkey}.pem` are symlinks into `archive/NAME/`,
/// and a renewal writes `fullchain2.pem` + `privkey2.pem` there, then replaces each link
/// (unlink, symlink).
#[tokio::test]
async fn a_certbot_renewal_is_seen_through_its_symlinks() {
    let root = tempfile::tempdir().unwrap();
    let (live, archive) = (
        root.path().join("live/chat"),
        root.path().join("archive/chat"),
    );
    std::fs::create_dir_all(&live).unwrap();
    std::fs::create_dir_all(&archive).unwrap();
    let first = pair(&["chat.example.com"], (2031, 5, 1));
    std::fs::write(archive.join("fullchain1.pem"), &first.0).unwrap();
    std::fs::write(archive.join("privkey1.pem"), &first.1).unwrap();
    let link = |name: &str, target: &str| {
        let path = live.join(name);
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink(format!("../../archive/chat/{target}"), &path).unwrap();
    };
    link("fullchain.pem", "fullchain1.pem");
    link("privkey.pem", "privkey1.pem");
    let paths = (live.join("fullchain.pem"), live.join("privkey.pem"));
    let proxy = Proxy::start_raw(&config(std::slice::from_ref(&paths)), UPSTREAMS);
    assert!(
        proxy
            .wait_log("admin endpoint on", Duration::from_secs(5))
            .await
    );
    assert_eq!(
        wait_certificate_expiry(&proxy, &paths.0, "chat.example.com", NOT_AFTER).await,
        NOT_AFTER
    );

    let renewed = pair(&["chat.example.com"], (2032, 1, 1));
    std::fs::write(archive.join("fullchain2.pem"), &renewed.0).unwrap();
    std::fs::write(archive.join("privkey2.pem"), &renewed.1).unwrap();
    link("fullchain.pem", "fullchain2.pem");
    link("privkey.pem", "privkey2.pem");
    let until = wait_certificate_expiry(&proxy, &paths.0, "chat.example.com", 1_956_528_000).await;
    assert_eq!(until, 1_956_528_000, "{}", proxy.log());
}

/// A Kubernetes Secret volume: `tls.crt` -> `..data/tls.crt`, `..data` -> a timestamped
/// directory; an update writes a new directory and renames a new `..data` link over the old.
#[tokio::test]
async fn a_kubernetes_secret_update_is_seen() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path();
    let publish = |generation: &str, (cert, key): &(String, String)| {
        std::fs::create_dir(dir.join(generation)).unwrap();
        std::fs::write(dir.join(generation).join("tls.crt"), cert).unwrap();
        std::fs::write(dir.join(generation).join("tls.key"), key).unwrap();
        std::os::unix::fs::symlink(generation, dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    };
    publish("..2026_01", &pair(&["chat.example.com"], (2031, 5, 1)));
    for name in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
    }
    let paths = (dir.join("tls.crt"), dir.join("tls.key"));
    let proxy = Proxy::start_raw(&config(std::slice::from_ref(&paths)), UPSTREAMS);
    assert!(
        proxy
            .wait_log("admin endpoint on", Duration::from_secs(5))
            .await
    );
    assert_eq!(
        wait_certificate_expiry(&proxy, &paths.0, "chat.example.com", NOT_AFTER).await,
        NOT_AFTER
    );

    publish("..2026_02", &pair(&["chat.example.com"], (2032, 1, 1)));
    let until = wait_certificate_expiry(&proxy, &paths.0, "chat.example.com", 1_956_528_000).await;
    assert_eq!(until, 1_956_528_000, "{}", proxy.log());
}

/// `GET /` over TLS with server name `sni` and `Host: host`: the names of the certificate
/// the proxy presented and the response, or the handshake's error.
async fn get_tls(
    addr: std::net::SocketAddr,
    sni: &str,
    host: &str,
) -> std::io::Result<(Vec<String>, String)> {
    get_tls_fragmented(addr, sni, host, None).await
}

/// [`get_tls`] from a client that cuts its records at `fragment` bytes (its ClientHello too).
async fn get_tls_fragmented(
    addr: std::net::SocketAddr,
    sni: &str,
    host: &str,
    fragment: Option<usize>,
) -> std::io::Result<(Vec<String>, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config =
        wsplice::tls::testing::client_config(provider, rustls::DEFAULT_VERSIONS).unwrap();
    config.max_fragment_size = fragment;
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let step = Duration::from_secs(10);
    let mut tls = tokio::time::timeout(step, connector.connect(name, tcp))
        .await
        .expect("handshake within 10 s")?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let names = webpki::EndEntityCert::try_from(&leaf)
        .unwrap()
        .valid_dns_names()
        .map(String::from)
        .collect();
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(step, tls.read_to_end(&mut response)).await;
    Ok((names, String::from_utf8_lossy(&response).into_owned()))
}

#[tokio::test]
async fn sni_picks_the_certificate_and_another_host_gets_421() {
    let certs = tempfile::tempdir().unwrap();
    let a = write(certs.path(), "a", &pair(&["a.test"], (2031, 5, 1)));
    let b = write(certs.path(), "b", &pair(&["*.b.test"], (2031, 5, 1)));
    let up = common::record_upstream::start(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
        Duration::from_millis(50),
    )
    .await;
    let list = [a, b]
        .iter()
        .map(|(c, k)| format!("{{ cert = {c:?}, key = {k:?} }}"))
        .collect::<Vec<_>>()
        .join(", ");
    let config = format!(
        "listen = [{{ addr = \"127.0.0.1:0\", tls = true }}]\nworkers = 1\nupstreams = \"upstreams.toml\"\n\n[tls]\ncertificates = [{list}]\nunknown_sni = \"reject\"\n\n[[route]]\npath = \"/\"\nupstream = \"backend\"\n"
    );
    let proxy = Proxy::start_raw(&config, &common::upstreams("backend", &[up.addr]));

    let (names, response) = get_tls(proxy.addr, "a.test", "A.test:443").await.unwrap();
    assert_eq!(names, ["a.test"]);
    assert!(
        response.starts_with("HTTP/1.1 200 ") && response.ends_with("ok"),
        "{response}"
    );

    let (names, response) = get_tls(proxy.addr, "x.b.test", "y.b.test").await.unwrap();
    assert_eq!(names, ["*.b.test"]);
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");

    let (_, response) = get_tls(proxy.addr, "a.test", "x.b.test").await.unwrap();
    assert!(
        response.starts_with("HTTP/1.1 421 Misdirected Request"),
        "{response}"
    );
    assert!(
        response.contains("certificate does not cover this Host"),
        "{response}"
    );

    // A ClientHello cut into many records still names its server for the 421 check.
    let (names, response) = get_tls_fragmented(proxy.addr, "x.b.test", "y.b.test", Some(64))
        .await
        .unwrap();
    assert_eq!(names, ["*.b.test"]);
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");

    assert!(
        get_tls(proxy.addr, "other.test", "other.test")
            .await
            .is_err(),
        "unknown_sni = reject ends the handshake"
    );
}
