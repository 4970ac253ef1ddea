//! One test per rejection rule of the upstream file, and loading it beside the config.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::config::tests::{MAIN, assert_error, parse};

const UPSTREAMS: &str = r#"[backend]
servers = ["127.0.0.1:3000", "127.0.0.1:3001"]
"#;

fn parse_upstreams(config: &Config, text: &str) -> Result<UpstreamTable, ConfigError> {
    UpstreamTable::parse(Path::new("upstreams.toml"), text, config)
}

#[track_caller]
fn assert_upstream_error(text: &str, line: usize, phrase: &str) {
    let config = parse(MAIN).unwrap();
    assert_error(
        parse_upstreams(&config, text),
        "upstreams.toml",
        line,
        phrase,
    );
}

#[test]
fn rejects_unknown_field_in_upstream_group() {
    let text = r#"[backend]
servers = ["127.0.0.1:3000"]
weight = 2
"#;
    assert_upstream_error(text, 3, "unknown field `weight`");
}

#[test]
fn reports_toml_syntax_error_in_upstream_file() {
    let text = "[backend]\nservers = [\"127.0.0.1:3000\"]\n\n[other]\nservers = = []\n";
    let config = parse(MAIN).unwrap();
    let err = parse_upstreams(&config, text).unwrap_err();
    let ConfigError::At { file, line, .. } = &err else {
        panic!("expected an error at a line, got {err}");
    };
    assert_eq!(file, Path::new("upstreams.toml"));
    assert_eq!(*line, 5, "{err}");
}

#[test]
fn load_reads_both_files_relative_to_the_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wsplice.toml"), MAIN).unwrap();
    std::fs::write(dir.path().join("upstreams.toml"), UPSTREAMS).unwrap();
    let (config, table) = load(&dir.path().join("wsplice.toml")).unwrap();
    assert_eq!(config.upstreams_path, dir.path().join("upstreams.toml"));
    let group = table.group_for_route(0);
    assert_eq!(group.name, "backend");
    assert_eq!(group.servers().len(), 2);
}

#[test]
fn load_names_a_missing_upstream_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("wsplice.toml"), MAIN).unwrap();
    let err = load(&dir.path().join("wsplice.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    assert!(
        err.to_string().contains("upstreams.toml: cannot read"),
        "{err}"
    );
}

#[test]
fn upstream_table_maps_routes_to_groups() {
    let text = r#"listen = ["127.0.0.1:8080"]
upstreams = "upstreams.toml"
[[route]]
path = "/chat"
upstream = "chat"
[[route]]
path = "/"
upstream = "backend"
"#;
    let config = parse(text).unwrap();
    let upstreams = r#"[backend]
servers = ["127.0.0.1:3000"]

[chat]
servers = ["127.0.0.1:4000", "[::1]:4001"]
"#;
    let table = parse_upstreams(&config, upstreams).unwrap();
    assert_eq!(table.groups().len(), 2);
    let chat = config.routes.find(b"", b"/chat/room").unwrap();
    let group = table.group_for_route(chat);
    assert_eq!(group.name, "chat");
    assert_eq!(
        group.servers(),
        [
            UpstreamAddr::Tcp("127.0.0.1:4000".parse().unwrap()),
            UpstreamAddr::Tcp("[::1]:4001".parse().unwrap())
        ]
    );
    let root = config.routes.find(b"", b"/other").unwrap();
    assert_eq!(table.group_for_route(root).name, "backend");
}

#[test]
fn rejects_route_naming_a_missing_group() {
    // The nginx article's `proxy_pass http://upstream;` carried over as a group name while
    // the upstream file calls the group `backend`.
    let text = r#"listen = ["127.0.0.1:8080"]
upstreams = "upstreams.toml"

[[route]]
path = "/websocket"
upstream = "upstream"
"#;
    let config = parse(text).unwrap();
    let upstreams = r#"[backend]
servers = ["127.0.0.1:3000"]

[metrics]
servers = ["127.0.0.1:9000"]
"#;
    let result = parse_upstreams(&config, upstreams);
    assert_error(
        result,
        "wsplice.toml",
        5,
        "upstream group \"upstream\" is not defined; the upstream file defines [backend, metrics]",
    );
    let err = parse_upstreams(&config, upstreams).unwrap_err().to_string();
    assert!(err.contains("route \"/websocket\""), "{err}");
    assert!(err.contains("upstreams.toml"), "{err}");
}

#[test]
fn rejects_empty_group() {
    let text = r#"[backend]
servers = ["127.0.0.1:3000"]

[empty]
servers = []
"#;
    assert_upstream_error(text, 5, "empty.servers: the group has no servers");
}

#[test]
fn rejects_server_without_port() {
    let text = r#"[backend]
servers = [
    "127.0.0.1:3000",
    "127.0.0.1",
]
"#;
    assert_upstream_error(text, 4, "backend.servers: \"127.0.0.1\" has no port");
}

#[test]
fn rejects_group_without_servers_field() {
    let text = "[backend]\n";
    assert_upstream_error(text, 1, "missing field `servers`");
}

#[test]
fn weighted_servers_and_health_settings_parse() {
    let text = "[backend]\nservers = [\"127.0.0.1:3000\", { addr = \"127.0.0.1:3001\", weight = 3 }]\nmax_fails = 2\nfail_timeout = \"500ms\"\n";
    let config = parse(MAIN).unwrap();
    let table = parse_upstreams(&config, text).unwrap();
    let group = table.group("backend").unwrap();
    assert_eq!(group.balancer.weight(0), 1);
    assert_eq!(group.balancer.weight(1), 3);
    assert_eq!(group.balancer.health().max_fails, 2);
    assert_eq!(
        group.balancer.health().fail_timeout,
        std::time::Duration::from_millis(500)
    );
}

#[test]
fn rejects_weight_out_of_range() {
    let text = "[backend]\nservers = [\n  { addr = \"127.0.0.1:3001\", weight = 0 },\n]\n";
    assert_upstream_error(
        text,
        3,
        "weight 0 is out of range; use a whole number from 1 to 1000",
    );
}

#[test]
fn rejects_unknown_key_in_a_server_entry() {
    let text = "[backend]\nservers = [{ addr = \"127.0.0.1:3001\", wieght = 2 }]\n";
    assert_upstream_error(text, 2, "unknown key `wieght` in a server entry");
}

#[test]
fn rejects_server_entry_without_addr() {
    let text = "[backend]\nservers = [{ weight = 2 }]\n";
    assert_upstream_error(text, 2, "a server entry needs `addr`");
}

#[test]
fn rejects_bad_health_settings() {
    let text = "[backend]\nservers = [\"127.0.0.1:3000\"]\nmax_fails = -1\n";
    assert_upstream_error(text, 3, "backend.max_fails: -1 is out of range");
    let text = "[backend]\nservers = [\"127.0.0.1:3000\"]\nfail_timeout = \"soon\"\n";
    assert_upstream_error(
        text,
        3,
        "backend.fail_timeout: \"soon\" is not a positive duration",
    );
}

#[test]
fn balance_settings_parse() {
    let text = r#"[backend]
servers = ["127.0.0.1:3000", "127.0.0.1:3001"]
balance = "hash"
hash_key = "cookie:session"
sticky_cookie = "wsplice_srv"

[least]
servers = ["127.0.0.1:3002"]
balance = "least_conn"
"#;
    let config = parse(MAIN).unwrap();
    let table = parse_upstreams(&config, text).unwrap();
    assert!(table.group("backend").is_some() && table.group("least").is_some());
}

#[test]
fn rejects_unknown_balance() {
    let text = "[backend]\nservers = [\"127.0.0.1:3000\"]\nbalance = \"leastconn\"\n";
    assert_upstream_error(
        text,
        3,
        "backend.balance: \"leastconn\" is not a balance; use \"round_robin\" (the default), \"least_conn\" or \"hash\"",
    );
}

#[test]
fn rejects_hash_key_without_balance_hash() {
    let text = "[backend]\nservers = [\"127.0.0.1:3000\"]\nhash_key = \"client_ip\"\n";
    assert_upstream_error(
        text,
        3,
        "backend.hash_key: only used with balance = \"hash\"",
    );
    let text = "[backend]\nservers = [\"127.0.0.1:3000\"]\nbalance = \"least_conn\"\n\nhash_key = \"path\"\n";
    assert_upstream_error(text, 5, "only used with balance = \"hash\"");
}

#[test]
fn rejects_bad_hash_key_form() {
    let bad = |key: &str| {
        format!(
            "[backend]\nservers = [\"127.0.0.1:3000\"]\nbalance = \"hash\"\nhash_key = \"{key}\"\n"
        )
    };
    assert_upstream_error(
        &bad("ip"),
        4,
        "backend.hash_key: \"ip\" is not a hash key; use \"client_ip\", \"path\"",
    );
    assert_upstream_error(&bad("header:X User"), 4, "is not a header name");
    assert_upstream_error(&bad("cookie:"), 4, "is not a cookie name");
    assert_upstream_error(&bad("query:a=b"), 4, "is not a query parameter name");
}

#[test]
fn rejects_bad_sticky_cookie_name() {
    for name in ["", "srv id", "srv;x", "srv=1", "sr\\u00e9v"] {
        let text =
            format!("[backend]\nservers = [\"127.0.0.1:3000\"]\n\nsticky_cookie = \"{name}\"\n");
        assert_upstream_error(&text, 4, "backend.sticky_cookie: ");
        assert_upstream_error(&text, 4, "is not a cookie name; use an RFC 6265 token");
    }
}

#[test]
fn a_reload_names_a_changed_balance_and_start_up_names_the_policy() {
    let config = parse(MAIN).unwrap();
    let old = parse_upstreams(&config, UPSTREAMS).unwrap();
    let text = format!(
        "{UPSTREAMS}balance = \"hash\"\nhash_key = \"query:room\"\nsticky_cookie = \"srv\"\n"
    );
    let new = parse_upstreams(&config, &text).unwrap();
    assert_eq!(
        reload::describe_changes(&old, &new),
        "backend: balance = \"hash\" hash_key = \"query:room\" sticky_cookie = \"srv\" (was balance = \"round_robin\")"
    );
    assert_eq!(
        reload::summarize(&new),
        "backend=[127.0.0.1:3000, 127.0.0.1:3001] balance = \"hash\" hash_key = \"query:room\" sticky_cookie = \"srv\""
    );
    assert_eq!(
        reload::summarize(&old),
        "backend=[127.0.0.1:3000, 127.0.0.1:3001]"
    );
}

#[test]
fn health_check_and_resolve_interval_parse_with_defaults() {
    let config = parse(MAIN).unwrap();
    let table = parse_upstreams(&config, UPSTREAMS).unwrap();
    let group = table.group("backend").unwrap();
    assert_eq!(group.check, None);
    assert_eq!(
        group.resolve_interval,
        Some(resolve::DEFAULT_RESOLVE_INTERVAL)
    );
    let text = format!(
        "{UPSTREAMS}health_check = {{ tcp = true, interval = \"1s\" }}\nresolve_interval = \"0s\"\n"
    );
    let table = parse_upstreams(&config, &text).unwrap();
    let group = table.group("backend").unwrap();
    let check = group.check.as_ref().unwrap();
    assert_eq!(check.probe, health::Probe::Tcp);
    assert_eq!(
        (check.interval, check.timeout, check.rise, check.fall),
        (Duration::from_secs(1), Duration::from_secs(2), 2, 3)
    );
    assert_eq!(group.resolve_interval, None);
}

#[test]
fn rejects_bad_health_check_and_resolve_interval() {
    for (settings, phrase) in [
        (
            "health_check = { path = \"/h\", interval = \"0s\" }",
            "backend.health_check.interval: \"0s\" is not a positive duration",
        ),
        (
            "health_check = { path = \"/h\", timeout = \"x\" }",
            "backend.health_check.timeout",
        ),
        (
            "health_check = { path = \"/h\", rise = 0 }",
            "backend.health_check.rise: 0 is out of range; use 1 to 1000",
        ),
        (
            "health_check = { path = \"/h\", fall = 1001 }",
            "backend.health_check.fall: 1001 is out of range",
        ),
        (
            "health_check = { path = \"h\" }",
            "backend.health_check.path: \"h\" is not a request path",
        ),
        (
            "health_check = { path = \"/h\", port = 80 }",
            "backend.health_check: unknown field `port`",
        ),
        ("health_check = true", "backend.health_check"),
        (
            "resolve_interval = \"1ms\"",
            "backend.resolve_interval: \"1ms\" is not a duration of 10ms or more",
        ),
    ] {
        assert_upstream_error(&format!("{UPSTREAMS}{settings}\n"), 3, phrase);
    }
}

/// Re-resolution builds a new table; servers that stay keep their active-health verdict,
/// open counts and passive state, as on reload.
#[test]
fn new_addresses_keep_the_health_of_servers_that_stay() {
    let config = parse(MAIN).unwrap();
    let text = "[backend]\nservers = [\"localhost:3000\", \"127.0.0.1:4000\"]\nhealth_check = { tcp = true }\n";
    let table = parse_upstreams(&config, text).unwrap();
    let group = table.group("backend").unwrap();
    let name = group.entries()[0].name.clone().unwrap();
    assert_eq!(name.to_string(), "localhost:3000");
    let stays: UpstreamAddr = "127.0.0.1:4000"
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .into();
    let i = group.servers().iter().position(|s| *s == stays).unwrap();
    assert!(group.balancer.verdict(i).record(false, 1, 1));
    assert!(group.balancer.is_down(i));

    let same = group.entries()[0].addrs.clone();
    assert!(
        table
            .with_addresses("backend", &[(name.clone(), same)])
            .is_none()
    );
    let moved: UpstreamAddr = "127.0.0.9:3000"
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .into();
    let (mut new, changes) = table
        .with_addresses("backend", &[(name, vec![moved.clone()])])
        .unwrap();
    assert!(
        changes[0].starts_with("localhost:3000 -> [127.0.0.9:3000] (was ["),
        "{changes:?}"
    );
    new.inherit(&table);
    let group = new.group("backend").unwrap();
    assert_eq!(group.servers(), &[moved, stays.clone()]);
    assert_eq!(group.host(0), "localhost:3000");
    assert_eq!(group.host(1), "127.0.0.1:4000");
    assert!(group.balancer.is_down(1));
    assert!(!group.balancer.is_down(0));
}

#[test]
fn send_proxy_protocol_parses_and_rejects_other_values() {
    use crate::http::proxy_protocol::Version;
    let config = parse(MAIN).unwrap();
    let text = "[backend]\nservers = [\"127.0.0.1:3000\"]\nsend_proxy_protocol = \"v2\"\n\n[other]\nservers = [\"127.0.0.1:3001\"]\nsend_proxy_protocol = \"v1\"\n\n[plain]\nservers = [\"127.0.0.1:3002\"]\n";
    let table = parse_upstreams(&config, text).unwrap();
    let version = |name: &str| table.group(name).unwrap().send_proxy_protocol;
    assert_eq!(version("backend"), Version::V2);
    assert_eq!(version("other"), Version::V1);
    assert_eq!(version("plain"), Version::Off);
    let text = "[backend]\nservers = [\"127.0.0.1:3000\"]\nsend_proxy_protocol = \"v3\"\n";
    assert_upstream_error(
        text,
        3,
        "backend.send_proxy_protocol: \"v3\" is not a PROXY protocol version; use \"off\" (the default), \"v1\" or \"v2\"",
    );
    let text = "[backend]\nservers = [\"127.0.0.1:3000\"]\nsend_proxy_protocol = true\n";
    assert_upstream_error(text, 3, "invalid type: boolean `true`, expected a string");
}

/// A name that resolves to an address also listed is one server, with both weights: one
/// health verdict, one metric series.
#[test]
fn a_name_and_an_address_of_one_server_are_one_server() {
    let config = parse(MAIN).unwrap();
    let text =
        "[backend]\nservers = [\"localhost:3000\", { addr = \"127.0.0.1:3000\", weight = 2 }]\n";
    let table = parse_upstreams(&config, text).unwrap();
    let group = table.group("backend").unwrap();
    let local: UpstreamAddr = "127.0.0.1:3000"
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .into();
    let at: Vec<usize> = (0..group.servers().len())
        .filter(|&i| group.servers()[i] == local)
        .collect();
    assert_eq!(at.len(), 1, "{:?}", group.servers());
    assert_eq!(group.balancer.weight(at[0]), 3);
}

fn tcp(addr: &str) -> UpstreamAddr {
    addr.parse::<std::net::SocketAddr>().unwrap().into()
}

/// A re-resolution swapped in while a reload reads the file is not undone by the reload's
/// swap: the reload's table keeps the moved address and inherits the open count from the
/// table it replaces, as a reload started after the re-resolution would.
#[test]
fn a_reload_keeps_a_re_resolution_swapped_in_while_it_ran() {
    let config = parse(MAIN).unwrap();
    let text = "[backend]\nservers = [\"localhost:3000\", \"127.0.0.1:4000\"]\n";
    let tables = ArcSwap::from_pointee(parse_upstreams(&config, text).unwrap());
    let base = tables.load_full();
    let name = base.group("backend").unwrap().entries()[0].name.clone();
    let found = [(name.unwrap(), vec![tcp("127.0.0.9:3000")])];
    let changes = resolve::swap_addresses(&tables, base.clone(), "backend", &found);
    assert_eq!(changes.len(), 1);
    let between = tables.load_full();
    let _open = between.group("backend").unwrap().balancer.open(0);

    let parsed = parse_upstreams(&config, text).unwrap();
    let (old, new) = reload::install(&tables, &base, parsed);
    assert!(
        Arc::ptr_eq(&old, &between),
        "inherits from the table it replaced"
    );
    assert!(Arc::ptr_eq(&new, &tables.load_full()));
    let group = new.group("backend").unwrap();
    assert_eq!(
        group.servers(),
        &[tcp("127.0.0.9:3000"), tcp("127.0.0.1:4000")]
    );
    assert_eq!(group.balancer.open_connections(0), 1);
}

/// A reload swapped in while a group's names were looked up does not make re-resolution
/// drop its answers (nor overwrite the reload): they are applied to the reload's table.
#[test]
fn a_re_resolution_applies_its_answers_to_a_table_reloaded_while_it_ran() {
    let config = parse(MAIN).unwrap();
    let text = "[backend]\nservers = [\"localhost:3000\", \"127.0.0.1:4000\"]\n";
    let tables = ArcSwap::from_pointee(parse_upstreams(&config, text).unwrap());
    let base = tables.load_full();
    let name = base.group("backend").unwrap().entries()[0].name.clone();

    let reloaded = "[backend]\nservers = [\"localhost:3000\", \"127.0.0.1:4001\"]\n";
    let reloaded = parse_upstreams(&config, reloaded).unwrap();
    reload::install(&tables, &base, reloaded);

    let found = [(name.unwrap(), vec![tcp("127.0.0.9:3000")])];
    let changes = resolve::swap_addresses(&tables, base, "backend", &found);
    assert_eq!(changes.len(), 1);
    let table = tables.load();
    assert_eq!(
        table.group("backend").unwrap().servers(),
        &[tcp("127.0.0.9:3000"), tcp("127.0.0.1:4001")]
    );
}
