//! One test per rejection rule of the upstream file, and loading it beside the config.

use std::path::Path;

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
