//! The `[tls]` section, `tls = true` listeners and routes by host: each rejection rule, and
//! the order in which routes with hosts are chosen.

use super::tests::{MAIN, assert_error, parse};
use super::*;

const TLS: &str = r#"listen = ["127.0.0.1:8080", { addr = "127.0.0.1:8443", tls = true }]
upstreams = "upstreams.toml"

[tls]
certificates = [
  { cert = "certs/a.pem", key = "certs/a.key" },
  { cert = "/etc/b.pem", key = "/etc/b.key" },
]
unknown_sni = "reject"
min_version = "1.3"

[[route]]
path = "/websocket"
upstream = "backend"
"#;

#[test]
fn the_tls_section_is_read_with_paths_from_the_config_directory() {
    let config = Config::parse(Path::new("/etc/wsplice/wsplice.toml"), TLS).unwrap();
    assert!(config.listen[1].tls);
    let tls = config.tls.unwrap();
    assert_eq!(
        tls.certificates,
        [
            CertificatePaths {
                cert: "/etc/wsplice/certs/a.pem".into(),
                key: "/etc/wsplice/certs/a.key".into(),
            },
            CertificatePaths {
                cert: "/etc/b.pem".into(),
                key: "/etc/b.key".into(),
            },
        ]
    );
    assert_eq!(tls.unknown_sni, UnknownSni::Reject);
    assert_eq!(tls.min_version, MinVersion::Tls13);
}

#[test]
fn tls_defaults_are_the_first_certificate_and_tls_1_2() {
    let text = format!("{MAIN}\n[tls]\ncertificates = [{{ cert = \"a.pem\", key = \"a.key\" }}]\n");
    let tls = parse(&text).unwrap().tls.unwrap();
    assert_eq!(tls.unknown_sni, UnknownSni::Default);
    assert_eq!(tls.min_version, MinVersion::Tls12);
    assert!(parse(MAIN).unwrap().tls.is_none());
}

#[test]
fn a_tls_listener_needs_certificates() {
    let text = MAIN.replace(
        r#"listen = ["127.0.0.1:8080"]"#,
        "listen = [\n  \"127.0.0.1:8080\",\n  { addr = \"127.0.0.1:8443\", tls = true },\n]",
    );
    assert_error(
        parse(&text),
        "wsplice.toml",
        3,
        "listen: tls = true needs a [tls] section with certificates",
    );
}

#[test]
fn bad_tls_values_name_their_line() {
    assert_error(
        parse(&TLS.replace("\"reject\"", "\"drop\"")),
        "wsplice.toml",
        9,
        "tls.unknown_sni: \"drop\" is not a choice",
    );
    assert_error(
        parse(&TLS.replace("\"1.3\"", "\"1.1\"")),
        "wsplice.toml",
        10,
        "tls.min_version: \"1.1\" is not a version",
    );
    let empty = "certificates = []\n";
    let start = TLS.find("certificates").unwrap();
    let end = TLS.find("unknown_sni").unwrap();
    let text = format!("{}{empty}{}", &TLS[..start], &TLS[end..]);
    assert_error(
        parse(&text),
        "wsplice.toml",
        5,
        "tls.certificates: needs at least one",
    );
    assert_error(
        parse(&TLS.replace("cert = \"/etc/b.pem\"", "cert = \"\"")),
        "wsplice.toml",
        7,
        "cert needs the path of a PEM file",
    );
    assert_error(
        parse(
            &TLS.replace("/etc/b.pem", "certs/a.pem")
                .replace("/etc/b.key", "certs/a.key"),
        ),
        "wsplice.toml",
        7,
        "listed twice",
    );
    assert_error(
        parse(&TLS.replace(", key = \"/etc/b.key\"", "")),
        "wsplice.toml",
        7,
        "missing field `key`",
    );
    assert_error(
        parse(&TLS.replace("min_version", "min_versoin")),
        "wsplice.toml",
        10,
        "unknown field `min_versoin`",
    );
}

fn with_routes(routes: &[(Option<&str>, &str)]) -> Result<Config, ConfigError> {
    let mut text = String::from("listen = [\"127.0.0.1:8080\"]\nupstreams = \"u.toml\"\n");
    for (i, (host, path)) in routes.iter().enumerate() {
        text += "\n[[route]]\n";
        if let Some(host) = host {
            text += &format!("host = \"{host}\"\n");
        }
        text += &format!("path = \"{path}\"\nupstream = \"g{i}\"\n");
    }
    parse(&text)
}

#[test]
fn the_most_specific_host_wins_then_the_longest_path() {
    let config = with_routes(&[
        (None, "/"),
        (None, "/ws/long"),
        (Some("*.example.com"), "/ws"),
        (Some("chat.example.com"), "/"),
        (Some("chat.example.com"), "/ws/x"),
    ])
    .unwrap();
    let to = |host: &[u8], path: &[u8]| {
        config
            .routes
            .find(host, path)
            .map(|i| config.routes.get(i).upstream.as_str())
    };
    assert_eq!(to(b"chat.example.com", b"/ws/long"), Some("g3"));
    assert_eq!(to(b"chat.example.com", b"/ws/x/1"), Some("g4"));
    assert_eq!(to(b"CHAT.Example.COM", b"/ws/x/1"), Some("g4"));
    assert_eq!(to(b"news.example.com", b"/ws/long"), Some("g2"));
    assert_eq!(to(b"news.example.com", b"/other"), Some("g0"));
    assert_eq!(to(b"a.b.example.com", b"/ws/long"), Some("g1"));
    assert_eq!(to(b"example.com", b"/ws"), Some("g0"));
    assert_eq!(to(b"", b"/ws/long"), Some("g1"));
}

#[test]
fn without_a_route_for_any_host_an_unknown_host_is_not_routed() {
    let config =
        with_routes(&[(Some("a.example.com"), "/"), (Some("b.example.com"), "/")]).unwrap();
    assert!(config.routes.find(b"a.example.com", b"/x").is_some());
    assert!(config.routes.find(b"c.example.com", b"/x").is_none());
    assert!(config.routes.find(b"", b"/x").is_none());
}

#[test]
fn the_same_path_may_be_routed_once_per_host() {
    assert!(
        with_routes(&[
            (Some("a.example.com"), "/ws"),
            (Some("b.example.com"), "/ws"),
            (None, "/ws")
        ])
        .is_ok()
    );
    assert_error(
        with_routes(&[
            (Some("a.example.com"), "/ws"),
            (Some("A.example.com"), "/ws"),
        ]),
        "wsplice.toml",
        11,
        "\"/ws\" for host a.example.com is already routed at line 6",
    );
}

#[test]
fn bad_route_hosts_name_their_line() {
    for host in [
        "*.com",
        "a*.example.com",
        "example.com:443",
        "",
        "https://a.example.com",
    ] {
        assert_error(
            with_routes(&[(Some(host), "/ws")]),
            "wsplice.toml",
            5,
            &format!("route.host: {host:?}"),
        );
    }
}
