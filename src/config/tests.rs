//! One test per rejection rule of the config file, plus route matching. The helpers are
//! shared with the upstream file's tests.

use std::path::Path;
use std::time::Duration;

use super::*;

pub(crate) const MAIN: &str = r#"listen = ["127.0.0.1:8080"]
upstreams = "upstreams.toml"

[[route]]
path = "/websocket"
upstream = "backend"
"#;

pub(crate) fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("wsplice.toml"), text)
}

/// Asserts `result` is an error at `file:line` whose message contains `phrase`.
#[track_caller]
pub(crate) fn assert_error<T: std::fmt::Debug>(
    result: Result<T, ConfigError>,
    file: &str,
    line: usize,
    phrase: &str,
) {
    let err = result.expect_err("expected a config error");
    let shown = err.to_string();
    match &err {
        ConfigError::At {
            file: f, line: l, ..
        } => {
            assert_eq!(f, Path::new(file), "wrong file in {shown:?}");
            assert_eq!(*l, line, "wrong line in {shown:?}");
        }
        ConfigError::Read { .. } => panic!("expected an error at a line, got {shown:?}"),
    }
    assert!(
        shown.starts_with(&format!("{file}:{line}: ")),
        "not FILE:LINE: in {shown:?}"
    );
    assert!(shown.contains(phrase), "{phrase:?} not in {shown:?}");
}

#[track_caller]
fn assert_config_error(text: &str, line: usize, phrase: &str) {
    assert_error(parse(text), "wsplice.toml", line, phrase);
}

#[test]
fn minimal_config_gets_defaults() {
    let config = parse(MAIN).unwrap();
    assert_eq!(
        config.listen,
        [Listen::plain("127.0.0.1:8080".parse().unwrap())]
    );
    assert_eq!(config.workers, 0);
    assert_eq!(config.upstreams_path, Path::new("upstreams.toml"));
    assert_eq!(
        config.timeouts,
        Timeouts {
            handshake: Some(DEFAULT_HANDSHAKE),
            connect: Some(DEFAULT_CONNECT),
            response: Some(DEFAULT_RESPONSE),
            idle: Some(DEFAULT_IDLE),
            drain: Some(DEFAULT_DRAIN),
            keepalive: Some(DEFAULT_KEEPALIVE),
        }
    );
    assert_eq!(
        config.limits,
        Limits {
            max_request_head: DEFAULT_MAX_REQUEST_HEAD,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            receive_buffers: DEFAULT_RECEIVE_BUFFERS as u16,
            multishot_receive: true,
            defer_taskrun: None,
            max_connections_per_ip: 0,
            handshake_rate_per_ip: None,
        }
    );
    assert_eq!(config.routes.len(), 1);
    assert_eq!(
        config.routes.get(0),
        &Route {
            host: None,
            path: "/websocket".into(),
            upstream: "backend".into(),
            line: 5,
            extra_upgrades: Vec::new(),
            allowed_origins: Vec::new(),
            require_origin: false,
        }
    );
}

#[test]
fn full_config_parses() {
    let text = r#"listen = ["127.0.0.1:8080", "[::1]:8080"]
workers = 4
upstreams = "upstreams.toml"

[timeouts]
handshake = "2s"
connect = "500ms"
response = "1m"
idle = "2h"
drain = "0s"
keepalive = "0s"

[limits]
max_request_head = 4096
max_connections = 100
max_connections_per_ip = 8
handshake_rate_per_ip = "20/s"
defer_taskrun = false

[[route]]
path = "/"
upstream = "web"

[[route]]
path = "/websocket"
upstream = "backend"
"#;
    let config = Config::parse(Path::new("/etc/wsplice/wsplice.toml"), text).unwrap();
    assert_eq!(
        config.listen,
        [
            Listen::plain("127.0.0.1:8080".parse().unwrap()),
            Listen::plain("[::1]:8080".parse().unwrap())
        ]
    );
    assert_eq!(config.workers, 4);
    assert_eq!(
        config.upstreams_path,
        Path::new("/etc/wsplice/upstreams.toml")
    );
    assert_eq!(
        config.timeouts,
        Timeouts {
            handshake: Some(Duration::from_secs(2)),
            connect: Some(Duration::from_millis(500)),
            response: Some(Duration::from_secs(60)),
            idle: Some(Duration::from_secs(7200)),
            drain: None,
            keepalive: None,
        }
    );
    assert_eq!(
        config.limits,
        Limits {
            max_request_head: 4096,
            max_connections: 100,
            receive_buffers: DEFAULT_RECEIVE_BUFFERS as u16,
            multishot_receive: true,
            defer_taskrun: Some(false),
            max_connections_per_ip: 8,
            handshake_rate_per_ip: Some(Rate {
                requests: 20,
                per: Duration::from_secs(1),
            }),
        }
    );
    let routes: Vec<(&str, &str, usize)> = config
        .routes
        .iter()
        .map(|r| (r.path.as_str(), r.upstream.as_str(), r.line))
        .collect();
    assert_eq!(routes, [("/websocket", "backend", 25), ("/", "web", 21)]);
}

#[test]
fn missing_timeouts_and_limits_sections_use_defaults() {
    let text = r#"listen = ["127.0.0.1:8080"]
upstreams = "upstreams.toml"

[timeouts]
connect = "1s"

[[route]]
path = "/"
upstream = "backend"
"#;
    let config = parse(text).unwrap();
    assert_eq!(config.timeouts.handshake, Some(DEFAULT_HANDSHAKE));
    assert_eq!(config.timeouts.connect, Some(Duration::from_secs(1)));
    assert_eq!(config.timeouts.response, Some(DEFAULT_RESPONSE));
    assert_eq!(config.timeouts.idle, Some(DEFAULT_IDLE));
    assert_eq!(config.timeouts.drain, Some(DEFAULT_DRAIN));
    assert_eq!(config.limits.max_request_head, DEFAULT_MAX_REQUEST_HEAD);
    assert_eq!(config.limits.max_connections, DEFAULT_MAX_CONNECTIONS);
}

#[test]
fn zero_duration_disables_a_timeout() {
    let text = r#"listen = ["127.0.0.1:8080"]
upstreams = "upstreams.toml"
[timeouts]
idle = "0s"
handshake = "0ms"
[[route]]
path = "/"
upstream = "backend"
"#;
    let config = parse(text).unwrap();
    assert_eq!(config.timeouts.idle, None);
    assert_eq!(config.timeouts.handshake, None);
    assert_eq!(config.timeouts.connect, Some(DEFAULT_CONNECT));
}

#[test]
fn rejects_unknown_top_level_field() {
    let text = r#"listen = ["127.0.0.1:8080"]
upstreams = "upstreams.toml"
worker_connections = 1024

[[route]]
path = "/"
upstream = "backend"
"#;
    assert_config_error(text, 3, "unknown field `worker_connections`");
}

#[test]
fn rejects_unknown_field_in_timeouts() {
    let text = r#"listen = ["127.0.0.1:8080"]
upstreams = "upstreams.toml"

[timeouts]
connect = "5s"
read = "60s"

[[route]]
path = "/"
upstream = "backend"
"#;
    assert_config_error(text, 6, "unknown field `read`");
}

#[test]
fn rejects_unknown_field_in_limits() {
    let text = r#"listen = ["127.0.0.1:8080"]
upstreams = "upstreams.toml"

[limits]
max_body = 10

[[route]]
path = "/"
upstream = "backend"
"#;
    assert_config_error(text, 5, "unknown field `max_body`");
}

#[test]
fn rejects_unknown_field_in_route() {
    let text = r#"listen = ["127.0.0.1:8080"]
upstreams = "upstreams.toml"

[[route]]
path = "/"
upstream = "backend"
proxy_read_timeout = "3600s"
"#;
    assert_config_error(text, 7, "unknown field `proxy_read_timeout`");
}

#[test]
fn rejects_bad_listen_address() {
    let text = r#"upstreams = "upstreams.toml"
listen = ["127.0.0.1:8080",
          "localhost:8080"]

[[route]]
path = "/"
upstream = "backend"
"#;
    assert_config_error(text, 3, "\"localhost:8080\" is not an IP:PORT address");
}

#[test]
fn rejects_listen_address_without_port() {
    let text = r#"listen = ["127.0.0.1"]
upstreams = "upstreams.toml"
[[route]]
path = "/"
upstream = "backend"
"#;
    assert_config_error(text, 1, "is not an IP:PORT address");
}

#[test]
fn rejects_duplicate_listen_address() {
    let text = r#"listen = [
    "127.0.0.1:8080",
    "127.0.0.1:8080",
]
upstreams = "upstreams.toml"
[[route]]
path = "/"
upstream = "backend"
"#;
    assert_config_error(text, 3, "listen: 127.0.0.1:8080 is listed twice");
}

#[test]
fn rejects_empty_listen() {
    let text = r#"upstreams = "upstreams.toml"
listen = []
[[route]]
path = "/"
upstream = "backend"
"#;
    assert_config_error(text, 2, "listen: needs at least one address");
}

#[test]
fn rejects_workers_out_of_range() {
    for (value, phrase) in [
        ("-1", "workers: -1 is out of range"),
        ("1025", "workers: 1025 is out of range"),
    ] {
        let text = format!(
            "listen = [\"127.0.0.1:8080\"]\nupstreams = \"upstreams.toml\"\nworkers = {value}\n\
             [[route]]\npath = \"/\"\nupstream = \"backend\"\n"
        );
        assert_config_error(&text, 3, phrase);
    }
}

#[test]
fn accepts_workers_at_the_bounds() {
    for workers in [0, 1024] {
        let text = format!("workers = {workers}\n{MAIN}");
        assert_eq!(parse(&text).unwrap().workers, workers);
    }
}

#[test]
fn rejects_empty_upstreams_path() {
    let text = r#"listen = ["127.0.0.1:8080"]
upstreams = " "
[[route]]
path = "/"
upstream = "backend"
"#;
    assert_config_error(text, 2, "upstreams: needs the path of the upstream file");
}

#[test]
fn rejects_duplicate_route_path() {
    let text = r#"listen = ["127.0.0.1:8080"]
upstreams = "upstreams.toml"

[[route]]
path = "/websocket"
upstream = "backend"

[[route]]
path = "/websocket"
upstream = "other"
"#;
    assert_config_error(
        text,
        9,
        "route.path: \"/websocket\" is already routed at line 5",
    );
}

#[test]
fn rejects_route_path_without_leading_slash() {
    let text = r#"listen = ["127.0.0.1:8080"]
upstreams = "upstreams.toml"

[[route]]
path = "websocket"
upstream = "backend"
"#;
    assert_config_error(text, 5, "must start with '/'");
}

#[test]
fn rejects_route_path_a_normalised_request_path_never_matches() {
    for (path, phrase) in [
        (
            "/ws/../admin",
            "never matches: requests are routed on their normalised path; write \"/admin\"",
        ),
        ("/ws/.", "write \"/ws/\""),
        ("//ws", "write \"/ws\""),
        ("/%77s", "write \"/ws\""),
        ("/caf%c3%a9", "write \"/caf%C3%A9\""),
        (
            "/a%2Fb",
            "can never match: requests are refused (400) for encoded slash or backslash",
        ),
        ("/a\\\\b", "refused (400) for backslash in the path"),
        (
            "/a%zz",
            "refused (400) for '%' not followed by two hex digits",
        ),
        ("/a/..;/b", "refused (400) for dot segment with parameters"),
        (
            "/ws?x",
            "must be a path only: the query never takes part in routing",
        ),
        ("/ws#x", "must be a path only"),
        (
            "/caf\u{e9}",
            "must be visible ASCII; percent-encode other bytes",
        ),
        ("/a b", "must be visible ASCII"),
    ] {
        let text = format!(
            "listen = [\"127.0.0.1:8080\"]\nupstreams = \"upstreams.toml\"\n\n[[route]]\npath = \"{path}\"\nupstream = \"backend\"\n"
        );
        assert_config_error(&text, 5, "route.path: ");
        assert_config_error(&text, 5, phrase);
    }
}

#[test]
fn accepts_route_paths_in_normal_form() {
    for path in ["/", "/ws", "/ws/", "/a;b", "/caf%C3%A9", "/a%20b", "/..."] {
        let text = format!(
            "listen = [\"127.0.0.1:8080\"]\nupstreams = \"upstreams.toml\"\n\n[[route]]\npath = \"{path}\"\nupstream = \"backend\"\n"
        );
        let config = parse(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(config.routes.get(0).path, path);
    }
}

#[test]
fn rejects_route_with_empty_upstream() {
    let text = r#"listen = ["127.0.0.1:8080"]
upstreams = "upstreams.toml"

[[route]]
path = "/"
upstream = ""
"#;
    assert_config_error(text, 6, "route.upstream: needs a group name");
}

#[test]
fn rejects_config_without_routes() {
    // No route has a line of its own, so the error points at the top of the file.
    let text = "listen = [\"127.0.0.1:8080\"]\nupstreams = \"upstreams.toml\"\n";
    assert_config_error(text, 1, "no [[route]]");
}

#[test]
fn rejects_max_request_head_out_of_range() {
    for (value, phrase) in [
        (
            "100",
            "limits.max_request_head: 100 is out of range; use 256 to 1048576",
        ),
        (
            "2000000",
            "limits.max_request_head: 2000000 is out of range",
        ),
        ("-5", "limits.max_request_head: -5 is out of range"),
    ] {
        let text = format!(
            "listen = [\"127.0.0.1:8080\"]\nupstreams = \"upstreams.toml\"\n\
             [limits]\nmax_request_head = {value}\n\
             [[route]]\npath = \"/\"\nupstream = \"backend\"\n"
        );
        assert_config_error(&text, 4, phrase);
    }
}

#[test]
fn rejects_max_connections_of_zero() {
    let text = r#"listen = ["127.0.0.1:8080"]
upstreams = "upstreams.toml"
[limits]
max_connections = 0
[[route]]
path = "/"
upstream = "backend"
"#;
    assert_config_error(text, 4, "limits.max_connections: 0 is out of range");
}

#[test]
fn rejects_unparsable_duration() {
    let text = r#"listen = ["127.0.0.1:8080"]
upstreams = "upstreams.toml"

[timeouts]
handshake = "10s"
connect = "10 parsecs"

[[route]]
path = "/"
upstream = "backend"
"#;
    assert_config_error(
        text,
        6,
        "timeouts.connect: \"10 parsecs\" is not a duration",
    );
}

#[test]
fn rejects_wrong_type() {
    let text = r#"listen = ["127.0.0.1:8080"]
upstreams = "upstreams.toml"
workers = "four"
[[route]]
path = "/"
upstream = "backend"
"#;
    assert_config_error(text, 3, "invalid type");
}

#[test]
fn rejects_missing_required_field() {
    let text = r#"listen = ["127.0.0.1:8080"]
[[route]]
path = "/"
upstream = "backend"
"#;
    assert_config_error(text, 1, "missing field `upstreams`");
}

#[test]
fn reports_toml_syntax_error_line() {
    let text = r#"listen = ["127.0.0.1:8080"]
upstreams = "upstreams.toml"

[[route]]
path = "/websocket
upstream = "backend"
"#;
    let err = parse(text).unwrap_err();
    let ConfigError::At { line, .. } = err else {
        panic!("expected an error at a line, got {err}");
    };
    assert_eq!(line, 5, "{err}");
}

fn routes(paths: &[&str]) -> Routes {
    Routes::new(
        paths
            .iter()
            .enumerate()
            .map(|(i, p)| Route {
                host: None,
                path: (*p).into(),
                upstream: format!("g{i}"),
                line: i + 1,
                extra_upgrades: Vec::new(),
                allowed_origins: Vec::new(),
                require_origin: false,
            })
            .collect(),
    )
}

fn found<'r>(routes: &'r Routes, path: &[u8]) -> Option<&'r str> {
    routes.find(b"", path).map(|i| routes.get(i).path.as_str())
}

#[test]
fn find_picks_the_longest_prefix() {
    let routes = routes(&["/", "/ws/chat", "/ws"]);
    assert_eq!(found(&routes, b"/ws/chat/room"), Some("/ws/chat"));
    assert_eq!(found(&routes, b"/ws/chat"), Some("/ws/chat"));
    assert_eq!(found(&routes, b"/ws/other"), Some("/ws"));
    assert_eq!(found(&routes, b"/ws"), Some("/ws"));
    assert_eq!(found(&routes, b"/index.html"), Some("/"));
}

#[test]
fn find_without_catch_all_route() {
    let routes = routes(&["/websocket", "/api"]);
    assert_eq!(found(&routes, b"/websocket"), Some("/websocket"));
    assert_eq!(found(&routes, b"/api/v1"), Some("/api"));
    assert_eq!(found(&routes, b"/"), None);
    assert_eq!(found(&routes, b"/web"), None);
    assert_eq!(found(&routes, b""), None);
}

#[test]
fn find_matches_a_prefix_byte_for_byte_like_nginx_location() {
    // `location /ws` in nginx matches `/wsx` too; routes are plain prefixes, case-sensitive.
    let routes = routes(&["/ws"]);
    assert_eq!(found(&routes, b"/wsx"), Some("/ws"));
    assert_eq!(found(&routes, b"/WS"), None);
}

#[test]
fn find_takes_a_trailing_slash_literally() {
    let routes = routes(&["/websocket/"]);
    assert_eq!(found(&routes, b"/websocket/"), Some("/websocket/"));
    assert_eq!(found(&routes, b"/websocket/chat"), Some("/websocket/"));
    assert_eq!(found(&routes, b"/websocket"), None);
    assert_eq!(found(&routes, b"/websocketfoo"), None);
}

#[test]
fn extra_upgrades_are_read_per_route() {
    let text = format!(
        "{MAIN}extra_upgrades = [\"connect-udp\", \"foo/1.0\"]\n\n[[route]]\npath = \"/\"\nupstream = \"backend\"\n"
    );
    let config = parse(&text).unwrap();
    let by_path = |p: &str| config.routes.iter().find(|r| r.path == p).unwrap();
    assert_eq!(
        by_path("/websocket").extra_upgrades,
        ["connect-udp", "foo/1.0"]
    );
    assert!(by_path("/").extra_upgrades.is_empty());
}

#[test]
fn rejects_invalid_extra_upgrades() {
    for (list, phrase) in [
        ("[\"h2 c\"]", "\"h2 c\" is not a protocol name"),
        ("[\"\"]", "\"\" is not a protocol name"),
        ("[\"h2c/\"]", "\"h2c/\" is not a protocol name"),
        ("[\"WebSocket\"]", "\"WebSocket\" is always allowed"),
        ("[\"foo\", \"FOO\"]", "\"FOO\" is listed twice"),
    ] {
        let text = format!("{MAIN}extra_upgrades = {list}\n");
        assert_config_error(&text, 7, phrase);
    }
}

#[test]
fn rejects_h2c_in_extra_upgrades() {
    for list in ["[\"h2c\"]", "[\"foo\", \"H2C\"]", "[\"h2c/1\"]"] {
        let text = format!("{MAIN}extra_upgrades = {list}\n");
        assert_config_error(&text, 7, "route.extra_upgrades: ");
        assert_config_error(
            &text,
            7,
            "cannot work: the h2c upgrade needs HTTP2-Settings, a hop-by-hop header a proxy drops, and RFC 9113 deprecated it; remove it",
        );
    }
}

#[test]
fn multishot_receive_is_on_unless_turned_off() {
    let off = format!("{MAIN}\n[limits]\nmultishot_receive = false\n");
    assert!(!parse(&off).unwrap().limits.multishot_receive);
    assert!(parse(MAIN).unwrap().limits.multishot_receive);
    let bad = format!("{MAIN}\n[limits]\nmultishot_receive = \"yes\"\n");
    assert_error(parse(&bad), "wsplice.toml", 9, "expected a boolean");
}

#[test]
fn defer_taskrun_is_checked_at_start_unless_set() {
    assert_eq!(parse(MAIN).unwrap().limits.defer_taskrun, None);
    for on in [true, false] {
        let set = format!("{MAIN}\n[limits]\ndefer_taskrun = {on}\n");
        assert_eq!(parse(&set).unwrap().limits.defer_taskrun, Some(on));
    }
    let bad = format!("{MAIN}\n[limits]\ndefer_taskrun = \"auto\"\n");
    assert_error(parse(&bad), "wsplice.toml", 9, "expected a boolean");
}

#[test]
fn receive_buffers_is_read_and_bounded() {
    let good = format!("{MAIN}\n[limits]\nreceive_buffers = 8\n");
    assert_eq!(parse(&good).unwrap().limits.receive_buffers, 8);
    let bad = format!("{MAIN}\n[limits]\nreceive_buffers = 0\n");
    let err = parse(&bad).unwrap_err().to_string();
    assert!(
        err.contains("limits.receive_buffers: 0 is out of range; use 1 to 32768"),
        "{err}"
    );
    let bad = format!("{MAIN}\n[limits]\nreceive_buffers = 32769\n");
    let err = parse(&bad).unwrap_err().to_string();
    assert!(
        err.contains("limits.receive_buffers: 32769 is out of range; use 1 to 32768"),
        "{err}"
    );
}

#[test]
fn allowed_origins_are_read_per_route() {
    let config = parse(&format!(
        "{MAIN}allowed_origins = [\"https://app.example.com\", \"https://*.example.net\"]\nrequire_origin = true\n"
    ))
    .unwrap();
    let route = config
        .routes
        .get(config.routes.find(b"", b"/websocket").unwrap());
    assert_eq!(route.allowed_origins.len(), 2);
    assert!(route.allowed_origins[1].matches(b"https://chat.example.net"));
    assert!(route.require_origin);
}

#[test]
fn rejects_invalid_allowed_origins() {
    for (list, message) in [
        (
            "[\"app.example.com\"]",
            "route.allowed_origins: \"app.example.com\" is not an origin",
        ),
        ("[\"https://a.example.com/ws\"]", "without a path"),
        (
            "[\"https://a.*.example.com\"]",
            "only as the whole first label",
        ),
        ("\"https://a.example.com\"", "invalid type"),
    ] {
        let text = format!("{MAIN}allowed_origins = {list}\n");
        assert_error(parse(&text), "wsplice.toml", 7, message);
    }
}

fn with_limit(line: &str) -> String {
    format!(
        "listen = [\"127.0.0.1:8080\"]\nupstreams = \"u.toml\"\n[limits]\n{line}\n\
         [[route]]\npath = \"/\"\nupstream = \"b\"\n"
    )
}

#[test]
fn handshake_rate_per_ip_takes_seconds_and_minutes() {
    let rate = |text: &str| {
        parse(&with_limit(&format!("handshake_rate_per_ip = \"{text}\"")))
            .unwrap()
            .limits
            .handshake_rate_per_ip
    };
    let per_second = Rate {
        requests: 20,
        per: Duration::from_secs(1),
    };
    assert_eq!(rate("20/s"), Some(per_second));
    assert_eq!(rate(" 20 / second "), Some(per_second));
    assert_eq!(per_second.burst(), 20);
    let per_minute = rate("600/m").unwrap();
    assert_eq!(per_minute.per, Duration::from_secs(60));
    assert_eq!(per_minute.burst(), 10);
    // Slower than one a second: a rested client still gets one request at once.
    assert_eq!(rate("30/min").unwrap().burst(), 1);
    assert_eq!(rate("0/s"), None);
    assert_eq!(rate("0/m"), None);
}

#[test]
fn rejects_bad_handshake_rate_per_ip() {
    for (value, phrase) in [
        ("20", "is not a rate; write requests per second or minute"),
        ("20/h", "is not a rate"),
        ("-1/s", "is not a rate"),
        ("x/s", "is not a rate"),
        ("", "is not a rate"),
        (
            "2000000/s",
            "2000000 is out of range; use 0 (no limit) to 1000000",
        ),
    ] {
        let text = with_limit(&format!("handshake_rate_per_ip = \"{value}\""));
        assert_config_error(
            &text,
            4,
            &format!(
                "limits.handshake_rate_per_ip: {}",
                if phrase.starts_with("is") {
                    format!("{value:?} {phrase}")
                } else {
                    phrase.to_string()
                }
            ),
        );
    }
}

#[test]
fn max_connections_per_ip_is_off_at_zero_and_rejects_negatives() {
    let config = parse(&with_limit("max_connections_per_ip = 0")).unwrap();
    assert_eq!(config.limits.max_connections_per_ip, 0);
    let config = parse(&with_limit("max_connections_per_ip = 3")).unwrap();
    assert_eq!(config.limits.max_connections_per_ip, 3);
    assert_config_error(
        &with_limit("max_connections_per_ip = -1"),
        4,
        "limits.max_connections_per_ip: -1 is out of range; use 0 to 10000000",
    );
}

#[test]
fn rejects_bad_keepalive_and_require_origin() {
    let text = format!("{MAIN}\n[timeouts]\nkeepalive = \"soon\"\n");
    assert_error(
        parse(&text),
        "wsplice.toml",
        9,
        "timeouts.keepalive: \"soon\" is not a duration",
    );
    let text = format!("{MAIN}require_origin = \"yes\"\n");
    assert_error(parse(&text), "wsplice.toml", 7, "invalid type");
}

#[test]
fn listen_entries_may_be_tables() {
    let text = MAIN.replace(
        r#"listen = ["127.0.0.1:8080"]"#,
        r#"listen = ["127.0.0.1:8080", { addr = "127.0.0.1:8443" }]"#,
    );
    let config = parse(&text).unwrap();
    assert_eq!(
        config.listen[1],
        Listen::plain("127.0.0.1:8443".parse().unwrap())
    );
}

#[test]
fn bad_listen_tables_name_the_key() {
    for (entry, want) in [
        (
            r#"{ addr = "127.0.0.1:1", tsl = true }"#,
            "unknown key \"tsl\"",
        ),
        (r#"{ tls = false }"#, "needs addr"),
        (
            r#"{ addr = "127.0.0.1:1", tls = "yes" }"#,
            "tls must be true or false",
        ),
        (
            r#"{ addr = "127.0.0.1:1", proxy_protocol = 1 }"#,
            "proxy_protocol must be true or false",
        ),
        (r#"{ addr = "nowhere" }"#, "is not an IP:PORT address"),
        ("8080", "not a integer"),
    ] {
        let text = MAIN.replace(
            r#"listen = ["127.0.0.1:8080"]"#,
            &format!("listen = [\n  \"127.0.0.1:8080\",\n  {entry},\n]"),
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(
            e.contains(":3: listen: ") && e.contains(want),
            "{entry}: {e}"
        );
    }
}

#[test]
fn resolver_is_an_ip_and_port() {
    assert_eq!(parse(MAIN).unwrap().resolver, None);
    let config = parse(&format!("resolver = \"127.0.0.53:53\"\n{MAIN}")).unwrap();
    assert_eq!(config.resolver, Some("127.0.0.53:53".parse().unwrap()));
    for bad in ["dns.internal:53", "127.0.0.1", "127.0.0.1:0", "0.0.0.0:53"] {
        assert_config_error(
            &format!("resolver = \"{bad}\"\n{MAIN}"),
            1,
            &format!("resolver: {bad:?} is not a DNS server's IP:PORT"),
        );
    }
}

#[test]
fn proxy_protocol_listeners_and_trusted_proxies_parse() {
    let text = MAIN.replace(
        r#"listen = ["127.0.0.1:8080"]"#,
        "listen = [\"127.0.0.1:8080\", { addr = \"127.0.0.1:8443\", proxy_protocol = true }]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\"]",
    );
    let config = parse(&text).unwrap();
    assert!(!config.listen[0].proxy_protocol);
    assert!(config.listen[1].proxy_protocol);
    let trusted = &config.trusted_proxies;
    for ip in ["10.9.8.7", "192.0.2.7", "2001:db8::5"] {
        assert!(trusted.contains(ip.parse().unwrap()), "{ip}");
    }
    for ip in ["11.0.0.1", "192.0.2.8", "2001:db9::5"] {
        assert!(!trusted.contains(ip.parse().unwrap()), "{ip}");
    }
    assert!(parse(MAIN).unwrap().trusted_proxies.is_empty());
}

#[test]
fn rejects_bad_trusted_proxies() {
    for (entry, want) in [
        (
            "\"10.0.0.0/33\"",
            "trusted_proxies: \"10.0.0.0/33\" prefix length \"33\" is not a number from 0 to 32",
        ),
        (
            "\"10.0.0.1/8\"",
            "trusted_proxies: \"10.0.0.1/8\" has bits set past its /8 prefix; write the network, 10.0.0.0/8",
        ),
        (
            "\"proxy.internal\"",
            "trusted_proxies: \"proxy.internal\" \"proxy.internal\" is not an IPv4 or IPv6 address",
        ),
    ] {
        let text = format!("trusted_proxies = [\n  \"127.0.0.1\",\n  {entry},\n]\n{MAIN}");
        assert_error(parse(&text), "wsplice.toml", 3, want);
    }
    let text = format!("trusted_proxies = \"10.0.0.0/8\"\n{MAIN}");
    assert_error(parse(&text), "wsplice.toml", 1, "invalid type");
}

#[test]
fn handoff_socket_is_relative_to_the_config_and_fits_a_socket_address() {
    assert_eq!(parse(MAIN).unwrap().handoff, None);
    let config = Config::parse(
        Path::new("/etc/wsplice/wsplice.toml"),
        &format!("handoff = \"handoff.sock\"\n{MAIN}"),
    )
    .unwrap();
    assert_eq!(
        config.handoff.as_deref(),
        Some(Path::new("/etc/wsplice/handoff.sock"))
    );
    let config = parse(&format!("handoff = \"/run/wsplice/handoff.sock\"\n{MAIN}")).unwrap();
    assert_eq!(
        config.handoff.as_deref(),
        Some(Path::new("/run/wsplice/handoff.sock"))
    );
    let long = format!("/run/{}", "x".repeat(100));
    assert_config_error(
        &format!("handoff = \"{long}\"\n{MAIN}"),
        1,
        "a Unix socket path may have at most 91",
    );
    assert_config_error(
        &format!("handoff = \"\"\n{MAIN}"),
        1,
        "handoff: needs the path",
    );
}
