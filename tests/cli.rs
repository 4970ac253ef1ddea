//! The command line: `--check`, `--version`, exit codes, and the messages a user gets for each
//! config mistake.

mod common;

use common::{BIN, TestConfig, run_wsplice};

const GOOD_UPSTREAMS: &str = "[backend]\nservers = [\"127.0.0.1:3000\"]\n";

fn check(config: &str, upstreams: &str) -> (i32, String) {
    let out = run_wsplice(config, upstreams, &["--check"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Asserts exit 1 with `FILE:LINE:` and every phrase in `says`.
fn assert_rejected(config: &str, upstreams: &str, file_line: &str, says: &[&str]) {
    let (code, text) = check(config, upstreams);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(file_line),
        "expected {file_line:?} in {text:?}"
    );
    for phrase in says {
        assert!(text.contains(phrase), "expected {phrase:?} in {text:?}");
    }
}

#[test]
fn shipped_config_is_valid() {
    let out = std::process::Command::new(BIN)
        .args(["--config", "config/wsplice.toml", "--check"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("is valid"));
}

#[test]
fn version_prints_the_crate_version() {
    let out = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("wsplice {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn unknown_field_names_file_line_and_field() {
    let config = TestConfig::default().toml().replace("workers", "wrokers");
    assert_rejected(
        &config,
        GOOD_UPSTREAMS,
        "wsplice.toml:2:",
        &["unknown field `wrokers`"],
    );
}

#[test]
fn bad_listen_address() {
    let config = TestConfig::default()
        .toml()
        .replace("127.0.0.1:0", "localhost:8080");
    assert_rejected(
        &config,
        GOOD_UPSTREAMS,
        "wsplice.toml:1:",
        &["listen", "\"localhost:8080\""],
    );
}

#[test]
fn duplicate_route_path() {
    let config = TestConfig::default().route("/", "backend").toml();
    assert_rejected(
        &config,
        GOOD_UPSTREAMS,
        "wsplice.toml:",
        &["\"/\" is already routed at line"],
    );
}

/// The classic mistake of the article this replaces: `proxy_pass http://upstream` for a group
/// named `backend`.
#[test]
fn route_naming_a_missing_group() {
    let config = TestConfig::default()
        .only_route("/websocket", "upstream")
        .toml();
    let line = config
        .lines()
        .position(|l| l.starts_with("path = \"/websocket\""))
        .unwrap()
        + 1;
    assert_rejected(
        &config,
        GOOD_UPSTREAMS,
        &format!("wsplice.toml:{line}:"),
        &[
            "upstream group \"upstream\" is not defined",
            "[backend]",
            "upstreams.toml",
        ],
    );
}

#[test]
fn empty_group() {
    assert_rejected(
        &TestConfig::default().toml(),
        "[backend]\nservers = []\n",
        "upstreams.toml:2:",
        &["backend.servers", "no servers"],
    );
}

#[test]
fn server_without_port() {
    assert_rejected(
        &TestConfig::default().toml(),
        "[backend]\nservers = [\"127.0.0.1\"]\n",
        "upstreams.toml:2:",
        &["no port"],
    );
}

#[test]
fn unparsable_duration() {
    let config = TestConfig::default().timeout("idle", "10 parsecs").toml();
    assert_rejected(
        &config,
        GOOD_UPSTREAMS,
        "wsplice.toml:",
        &["timeouts.idle", "\"10 parsecs\"", "\"0s\" to disable"],
    );
}

#[test]
fn missing_upstream_file_is_named() {
    let (code, text) = check(
        &TestConfig::default()
            .toml()
            .replace("upstreams.toml", "nope.toml"),
        "",
    );
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("nope.toml: cannot read"), "{text}");
}

#[test]
fn max_connections_beyond_the_open_files_limit_exits_2_with_the_reason() {
    let config = TestConfig::default()
        .limit("max_connections", 1_000_000)
        .toml();
    let out = run_wsplice(&config, GOOD_UPSTREAMS, &[]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("open-files limit"), "{text}");
    assert!(
        text.contains("lower limits.max_connections to at most"),
        "{text}"
    );
}

#[test]
fn address_in_use_exits_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = TestConfig::default()
        .toml()
        .replace("127.0.0.1:0", &addr.to_string());
    let out = run_wsplice(&config, GOOD_UPSTREAMS, &[]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains(&format!("cannot listen on {addr}")), "{text}");
}

#[test]
fn bad_allowed_origin() {
    let config = format!(
        "{}allowed_origins = [\"https://app.example.com/chat\"]\n",
        TestConfig::default().toml()
    );
    let line = config.lines().count();
    assert_rejected(
        &config,
        GOOD_UPSTREAMS,
        &format!("wsplice.toml:{line}:"),
        &["route.allowed_origins", "without a path"],
    );
}

/// Each balance setting's mistakes: exit 1 with the upstream file's line.
#[test]
fn bad_balance_settings() {
    let config = TestConfig::default().toml();
    let group = |settings: &str| format!("[backend]\nservers = [\"127.0.0.1:3000\"]\n{settings}\n");
    assert_rejected(
        &config,
        &group("balance = \"ip_hash\""),
        "upstreams.toml:3:",
        &[
            "backend.balance",
            "\"ip_hash\" is not a balance",
            "\"least_conn\"",
        ],
    );
    assert_rejected(
        &config,
        &group("hash_key = \"client_ip\""),
        "upstreams.toml:3:",
        &["backend.hash_key: only used with balance = \"hash\""],
    );
    assert_rejected(
        &config,
        &group("balance = \"hash\"\nhash_key = \"cookie\""),
        "upstreams.toml:4:",
        &["backend.hash_key", "is not a hash key", "\"cookie:NAME\""],
    );
    assert_rejected(
        &config,
        &group("sticky_cookie = \"my cookie\""),
        "upstreams.toml:3:",
        &["backend.sticky_cookie", "is not a cookie name"],
    );
    let (code, text) = check(
        &config,
        &group("balance = \"hash\"\nhash_key = \"query:room\"\nsticky_cookie = \"srv\""),
    );
    assert_eq!(code, 0, "{text}");
}

/// Per-client limits: a rate that is not "N/s" or "N/m", or a negative connection count,
/// exits 1 naming the line and what would be valid.
#[test]
fn bad_per_client_limits() {
    for (line, says) in [
        (
            "handshake_rate_per_ip = \"20/h\"",
            &[
                "limits.handshake_rate_per_ip",
                "\"20/h\" is not a rate",
                "\"20/s\"",
            ][..],
        ),
        (
            "handshake_rate_per_ip = \"fast\"",
            &["limits.handshake_rate_per_ip", "\"fast\" is not a rate"][..],
        ),
        (
            "max_connections_per_ip = -1",
            &["limits.max_connections_per_ip", "-1 is out of range"][..],
        ),
    ] {
        let config =
            TestConfig::default()
                .toml()
                .replacen("[limits]\n", &format!("[limits]\n{line}\n"), 1);
        let at = config.lines().position(|l| l == line).unwrap() + 1;
        assert_rejected(
            &config,
            GOOD_UPSTREAMS,
            &format!("wsplice.toml:{at}:"),
            says,
        );
    }
    let config = TestConfig::default().toml().replacen(
        "[limits]\n",
        "[limits]\nmax_connections_per_ip = 10\nhandshake_rate_per_ip = \"600/m\"\n",
        1,
    );
    let (code, text) = check(&config, GOOD_UPSTREAMS);
    assert_eq!(code, 0, "{text}");
}

/// A unix socket server must be an absolute path that fits `sun_path`.
#[test]
fn a_unix_socket_server_needs_an_absolute_path_that_fits() {
    let config = TestConfig::default().toml();
    let server = |s: &str| format!("[backend]\nservers = [\"127.0.0.1:3000\",\n  \"{s}\"]\n");
    assert_rejected(
        &config,
        &server("unix:run/x.sock"),
        "upstreams.toml:3:",
        &["backend.servers: \"unix:run/x.sock\" must be an absolute path"],
    );
    assert_rejected(
        &config,
        &server("unix:"),
        "upstreams.toml:3:",
        &["has no path"],
    );
    let long = format!("unix:/{}", "a".repeat(107));
    assert_rejected(
        &config,
        &server(&long),
        "upstreams.toml:3:",
        &["108 bytes", "at most 107"],
    );
    let (code, text) = check(&config, &server("unix:/run/chat.sock"));
    assert_eq!(code, 0, "{text}");
    let weighted = "[backend]\nservers = [{ addr = \"unix:/run/chat.sock\", weight = 2 }]\n";
    let (code, text) = check(&config, weighted);
    assert_eq!(code, 0, "{text}");
}

/// `health_check`, `resolve_interval` and `resolver` mistakes: exit 1 with the line and what
/// would be valid.
#[test]
fn bad_health_check_and_resolve_settings() {
    let config = TestConfig::default().toml();
    let group = |settings: &str| format!("[backend]\nservers = [\"127.0.0.1:3000\"]\n{settings}\n");
    for (settings, says) in [
        (
            "health_check = { path = \"/healthz\", interval = \"soon\" }",
            &["backend.health_check.interval", "\"soon\"", "\"5s\""][..],
        ),
        (
            "health_check = { path = \"/healthz\", rise = 0 }",
            &["backend.health_check.rise: 0 is out of range", "use 1 to"],
        ),
        (
            "health_check = { tcp = true, fall = 0 }",
            &["backend.health_check.fall: 0 is out of range"],
        ),
        (
            "health_check = { path = \"healthz\" }",
            &["backend.health_check.path", "must start with '/'"],
        ),
        (
            "health_check = { path = \"/healthz\", every = \"5s\" }",
            &[
                "backend.health_check",
                "unknown field `every`",
                "`interval`",
            ],
        ),
        (
            "resolve_interval = \"sometimes\"",
            &["backend.resolve_interval", "\"30s\"", "\"0s\""],
        ),
    ] {
        assert_rejected(&config, &group(settings), "upstreams.toml:3:", says);
    }
    let good = "health_check = { path = \"/healthz\", interval = \"1s\", timeout = \"500ms\", rise = 1, fall = 2 }\nresolve_interval = \"0s\"";
    let (code, text) = check(&config, &group(good));
    assert_eq!(code, 0, "{text}");

    for bad in ["localhost:53", "127.0.0.1", "127.0.0.1:0"] {
        assert_rejected(
            &format!("resolver = \"{bad}\"\n{config}"),
            GOOD_UPSTREAMS,
            "wsplice.toml:1:",
            &[
                "resolver:",
                "is not a DNS server's IP:PORT",
                "\"127.0.0.53:53\"",
            ],
        );
    }
    let (code, text) = check(
        &format!("resolver = \"127.0.0.1:53\"\n{config}"),
        GOOD_UPSTREAMS,
    );
    assert_eq!(code, 0, "{text}");
}

/// `trusted_proxies`, a listener's `proxy_protocol` and a group's `send_proxy_protocol`: each
/// bad value is named with its file and line.
#[test]
fn bad_proxy_protocol_settings() {
    let base = TestConfig::default().toml();
    let top = |line: &str| base.replacen("workers", &format!("{line}\nworkers"), 1);
    let config = top("trusted_proxies = [\"10.0.0.0/33\"]");
    assert_rejected(
        &config,
        GOOD_UPSTREAMS,
        "wsplice.toml:2:",
        &[
            "trusted_proxies: \"10.0.0.0/33\"",
            "prefix length",
            "\"10.0.0.0/8\"",
        ],
    );
    let config = top("trusted_proxies = [\"10.0.0.0/8\", \"proxy.internal\"]");
    assert_rejected(
        &config,
        GOOD_UPSTREAMS,
        "wsplice.toml:2:",
        &[
            "trusted_proxies: \"proxy.internal\"",
            "not an IPv4 or IPv6 address",
        ],
    );
    let config = base.replacen(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [{ addr = \"127.0.0.1:0\", proxy_protocol = \"yes\" }]",
        1,
    );
    assert_rejected(
        &config,
        GOOD_UPSTREAMS,
        "wsplice.toml:1:",
        &["listen: proxy_protocol must be true or false"],
    );
    let upstreams = format!("{GOOD_UPSTREAMS}send_proxy_protocol = \"v3\"\n");
    assert_rejected(
        &base,
        &upstreams,
        "upstreams.toml:3:",
        &[
            "backend.send_proxy_protocol: \"v3\"",
            "\"off\" (the default), \"v1\" or \"v2\"",
        ],
    );
    let config = base.replacen(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [{ addr = \"127.0.0.1:0\", proxy_protocol = true }]\ntrusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\", \"192.0.2.7\"]",
        1,
    );
    let upstreams = format!("{GOOD_UPSTREAMS}send_proxy_protocol = \"v2\"\n");
    let (code, text) = check(&config, &upstreams);
    assert_eq!(code, 0, "{text}");
}
