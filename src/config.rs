//! The main config file: raw serde types in, a validated [`Config`] out.
//! Every rejection names the file, the line and the field, and says what would be valid,
//! because an operator reading it at 3 a.m. should not need to open the source.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::http::forwarded::{Cidr, TrustedProxies};
use crate::http::host::HostPattern;
use crate::http::origin::OriginPattern;
use crate::http::path;

mod tls;
pub use tls::{CertificatePaths, MinVersion, TlsSettings, UnknownSni};
use tls::{RawTls, parse_tls};

/// What went wrong with a config or upstream file, always pointing at a place in it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", file.display())]
    At {
        file: PathBuf,
        line: usize,
        message: String,
    },
}

impl ConfigError {
    /// An error at byte offset `offset` of `text`, reported as a 1-based line number.
    pub fn at(file: &Path, text: &str, offset: usize, message: impl Into<String>) -> Self {
        ConfigError::At {
            file: file.to_path_buf(),
            line: line_of(text, offset),
            message: message.into(),
        }
    }

    /// Wraps a TOML syntax or shape error (unknown field, wrong type, ...).
    pub fn from_toml(file: &Path, text: &str, err: &toml::de::Error) -> Self {
        let offset = err.span().map_or(0, |span| span.start);
        Self::at(file, text, offset, err.message().trim_end().to_string())
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let offset = offset.min(text.len());
    text.as_bytes()[..offset]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Reads a file for one of the loaders, mapping the I/O error to a [`ConfigError`].
#[allow(clippy::disallowed_methods)] // start-up and reload only, never on a worker
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.to_path_buf(),
        source,
    })
}

/// Reads a binary file (a certificate or key) at start-up or reload.
#[allow(clippy::disallowed_methods)] // start-up and reload only, never on a worker
pub fn read_file_bytes(path: &Path) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

pub const DEFAULT_HANDSHAKE: Duration = Duration::from_secs(10);
pub const DEFAULT_CONNECT: Duration = Duration::from_secs(5);
pub const DEFAULT_RESPONSE: Duration = Duration::from_secs(60);
pub const DEFAULT_IDLE: Duration = Duration::from_secs(3600);
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
/// nginx's `keepalive_timeout` default.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(75);
pub const DEFAULT_MAX_REQUEST_HEAD: usize = 16 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 9000;
pub const DEFAULT_RECEIVE_BUFFERS: usize = 256;
/// The most buffers one io_uring buffer ring holds (2^15).
pub const MAX_RECEIVE_BUFFERS: usize = 32768;
const MIN_REQUEST_HEAD: usize = 256;
/// A Unix socket path holds 107 bytes; the socket is bound under a temporary name (the path,
/// `.new-` and a pid) and then renamed.
const MAX_HANDOFF_PATH: usize = 107 - 16;
const MAX_REQUEST_HEAD: usize = 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Each entry `"IP:PORT"` or `{ addr = "IP:PORT", tls = .., proxy_protocol = .. }`; read
    /// by hand (`parse_listen`) so every error keeps its line.
    listen: Spanned<Vec<Spanned<toml::Value>>>,
    #[serde(default)]
    workers: Option<Spanned<i64>>,
    upstreams: Spanned<String>,
    admin: Option<Spanned<String>>,
    access_log: Option<Spanned<String>>,
    handoff: Option<Spanned<String>>,
    resolver: Option<Spanned<String>>,
    /// `"CIDR"` or `"IP"` entries; checked by hand so each error keeps its line.
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    limits: RawLimits,
    tls: Option<Spanned<RawTls>>,
    #[serde(default, rename = "route")]
    routes: Vec<RawRoute>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    handshake: Option<Spanned<String>>,
    connect: Option<Spanned<String>>,
    response: Option<Spanned<String>>,
    idle: Option<Spanned<String>>,
    drain: Option<Spanned<String>>,
    keepalive: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_request_head: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
    receive_buffers: Option<Spanned<i64>>,
    multishot_receive: Option<bool>,
    defer_taskrun: Option<bool>,
    max_connections_per_ip: Option<Spanned<i64>>,
    handshake_rate_per_ip: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    host: Option<Spanned<String>>,
    path: Spanned<String>,
    upstream: Spanned<String>,
    #[serde(default)]
    extra_upgrades: Vec<Spanned<String>>,
    #[serde(default)]
    allowed_origins: Vec<Spanned<String>>,
    #[serde(default)]
    require_origin: bool,
}

/// Timeouts; `None` means the operator disabled it with `"0s"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    pub handshake: Option<Duration>,
    pub connect: Option<Duration>,
    pub response: Option<Duration>,
    pub idle: Option<Duration>,
    pub drain: Option<Duration>,
    /// How long a client connection may wait for its next plain request; `None` (`"0s"`):
    /// no keep-alive, every response closes its connection (as nginx's
    /// `keepalive_timeout 0`).
    pub keepalive: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_request_head: usize,
    pub max_connections: usize,
    /// Kernel-selected 16 KiB receive buffers per worker, shared by its tunnels.
    pub receive_buffers: u16,
    /// Plain tunnels receive with capped multishot receives (Linux 6.17+; on by default):
    /// less CPU per message than one receive per read (README, Benchmarks).
    pub multishot_receive: bool,
    /// The tunnels' rings defer the kernel's completion work to the loop
    /// (`IORING_SETUP_DEFER_TASKRUN`). Unset: where the kernel signals that work promptly,
    /// checked at start by each worker (README, How it works).
    pub defer_taskrun: Option<bool>,
    /// Open connections one client address (an IPv6 /64) may hold; 0: no limit (nginx's
    /// `limit_conn`).
    pub max_connections_per_ip: usize,
    /// Request heads one client address may send, with a burst of one second's worth;
    /// `None` (`"0/s"`): no limit (nginx's `limit_req`).
    pub handshake_rate_per_ip: Option<Rate>,
}

/// A request rate: `requests` per `per` (one second or one minute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub requests: u32,
    pub per: Duration,
}

impl Rate {
    /// Requests admitted at once from a rested client: one second's worth, at least one.
    pub fn burst(&self) -> u32 {
        let per_second = u64::from(self.requests) * 1000 / self.per.as_millis().max(1) as u64;
        per_second.clamp(1, u64::from(u32::MAX)) as u32
    }
}

/// The most requests a rate may allow per unit, so one request's interval stays above 1 µs.
const MAX_RATE: u32 = 1_000_000;

/// One `[[route]]`: requests for `host` (any host when `None`) whose normalised path starts
/// with `path` go to group `upstream`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub host: Option<HostPattern>,
    pub path: String,
    pub upstream: String,
    /// Line of the route in the config file, so upstream-file errors can point back at it.
    pub line: usize,
    /// Upgrade protocols besides `websocket` that may be tunnelled on this route (e.g.
    /// `connect-udp`; never `h2c`, see `parse_extra_upgrades`);
    /// any other offered upgrade is stripped and the request goes up as a plain one.
    pub extra_upgrades: Vec<String>,
    /// Origins whose pages may upgrade on this route; empty: any.
    pub allowed_origins: Vec<OriginPattern>,
    /// An upgrade without `Origin` (a non-browser client) is refused too.
    pub require_origin: bool,
}

/// Routes sorted most specific host first (exact, wildcard, none), then longest prefix
/// first, so the first match is the one to take.
#[derive(Debug, Clone, PartialEq)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| {
            std::cmp::Reverse((r.host.as_ref().map_or(0, HostPattern::rank), r.path.len()))
        });
        Routes { routes }
    }

    /// Index of the route for a request to `host` (without port, any case; empty when the
    /// request names none) with normalised path `path`: among the routes whose host matches,
    /// those naming the host exactly beat wildcards, which beat routes for any host; among
    /// those, the longest path prefix wins. A plain byte prefix, as nginx's
    /// `location /websocket`: that route also takes `/websocketfoo`, and a route
    /// `/websocket/` does not take `/websocket`. No allocation: it runs per request.
    pub fn find(&self, host: &[u8], path: &[u8]) -> Option<usize> {
        self.routes.iter().position(|r| {
            path.starts_with(r.path.as_bytes()) && r.host.as_ref().is_none_or(|h| h.matches(host))
        })
    }

    pub fn get(&self, index: usize) -> &Route {
        &self.routes[index]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Off,
    Stdout,
    File(PathBuf),
}

/// One `listen` entry: an address and what a connection accepted on it speaks first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    /// Connections start with a TLS handshake (`wss://`).
    pub tls: bool,
    /// Connections start with a PROXY protocol header (v1 or v2) naming the real client.
    pub proxy_protocol: bool,
}

impl Listen {
    pub fn plain(addr: SocketAddr) -> Self {
        Listen {
            addr,
            tls: false,
            proxy_protocol: false,
        }
    }
}

/// Reads one `listen` entry: `"IP:PORT"` or `{ addr = "IP:PORT", tls = true, proxy_protocol = true }`.
fn parse_listen(value: &toml::Value) -> Result<Listen, String> {
    let addr = |text: &str| -> Result<SocketAddr, String> {
        text.parse().map_err(|_| {
            format!(
                "listen: {text:?} is not an IP:PORT address; write e.g. \"127.0.0.1:8080\" or \"[::1]:8080\""
            )
        })
    };
    let table = match value {
        toml::Value::String(text) => return addr(text).map(Listen::plain),
        toml::Value::Table(table) => table,
        other => {
            return Err(format!(
                "listen: an entry is \"IP:PORT\" or {{ addr = \"IP:PORT\", tls = true }}, not a {}",
                other.type_str()
            ));
        }
    };
    let flag = |key: &str| -> Result<bool, String> {
        match table.get(key) {
            None => Ok(false),
            Some(toml::Value::Boolean(b)) => Ok(*b),
            Some(other) => Err(format!(
                "listen: {key} must be true or false, not a {}",
                other.type_str()
            )),
        }
    };
    if let Some(key) = table
        .keys()
        .find(|k| !matches!(k.as_str(), "addr" | "tls" | "proxy_protocol"))
    {
        return Err(format!(
            "listen: unknown key {key:?}; an entry has addr, tls and proxy_protocol"
        ));
    }
    let listen = Listen {
        addr: match table.get("addr") {
            Some(toml::Value::String(text)) => addr(text)?,
            Some(_) => return Err("listen: addr must be a string \"IP:PORT\"".into()),
            None => return Err("listen: the entry needs addr = \"IP:PORT\"".into()),
        },
        tls: flag("tls")?,
        proxy_protocol: flag("proxy_protocol")?,
    };
    Ok(listen)
}

/// The validated main config.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub listen: Vec<Listen>,
    /// 0 = one per CPU this process may run on.
    pub workers: usize,
    pub upstreams_path: PathBuf,
    /// Where `/metrics` and `/healthz` are served; `None`: nowhere.
    pub admin: Option<SocketAddr>,
    pub access_log: AccessLogTarget,
    /// The Unix socket on which this process hands its listeners and tunnels to a successor
    /// started with `--takeover`; `None`: no handoff.
    pub handoff: Option<PathBuf>,
    /// The DNS server that upstream host names are looked up at (`IP:PORT`); `None`: the
    /// system resolver (`/etc/hosts`, `/etc/resolv.conf`).
    pub resolver: Option<SocketAddr>,
    /// Peers whose PROXY headers (on `proxy_protocol` listeners) and `X-Forwarded-For` (on
    /// the others) are believed; empty: nobody's X-Forwarded-For, and anyone's PROXY header.
    pub trusted_proxies: TrustedProxies,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub routes: Routes,
    /// The `[tls]` section: the certificates TLS listeners serve.
    pub tls: Option<TlsSettings>,
}

impl Config {
    /// Parses and validates the main config's text; `path` names it in errors and anchors
    /// the relative `upstreams` path.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(path, text, &e))?;
        let err = |offset: usize, msg: String| ConfigError::at(path, text, offset, msg);

        if raw.listen.get_ref().is_empty() {
            return Err(err(
                raw.listen.span().start,
                "listen: needs at least one address, e.g. listen = [\"127.0.0.1:8080\"]".into(),
            ));
        }
        let mut listen: Vec<Listen> = Vec::new();
        for entry in raw.listen.get_ref() {
            let at = entry.span().start;
            let one = parse_listen(entry.get_ref()).map_err(|msg| err(at, msg))?;
            if listen.iter().any(|l| l.addr == one.addr) {
                return Err(err(at, format!("listen: {} is listed twice", one.addr)));
            }
            listen.push(one);
        }

        let workers = match &raw.workers {
            None => 0,
            Some(w) if (0..=1024).contains(w.get_ref()) => *w.get_ref() as usize,
            Some(w) => {
                return Err(err(
                    w.span().start,
                    format!(
                        "workers: {} is out of range; use 0 (one per CPU) up to 1024",
                        w.get_ref()
                    ),
                ));
            }
        };

        if raw.upstreams.get_ref().trim().is_empty() {
            return Err(err(
                raw.upstreams.span().start,
                "upstreams: needs the path of the upstream file, e.g. upstreams = \"upstreams.toml\""
                    .into(),
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let upstreams_path = base.join(raw.upstreams.get_ref());

        let admin = match &raw.admin {
            None => None,
            Some(a) => Some(a.get_ref().parse::<SocketAddr>().map_err(|_| {
                err(
                    a.span().start,
                    format!(
                        "admin: {:?} is not an IP:PORT address; write e.g. \"127.0.0.1:9901\", or leave admin out to serve no metrics",
                        a.get_ref()
                    ),
                )
            })?),
        };
        if let Some(admin) = admin
            && admin.port() != 0
            && listen.iter().any(|l| l.addr == admin)
        {
            return Err(err(
                raw.admin.as_ref().map_or(0, |a| a.span().start),
                format!("admin: {admin} is also a listen address; use another port"),
            ));
        }
        let access_log = match raw.access_log.as_ref().map(|a| a.get_ref().trim()) {
            None | Some("off") => AccessLogTarget::Off,
            Some("stdout") => AccessLogTarget::Stdout,
            Some("") => {
                return Err(err(
                    raw.access_log.as_ref().map_or(0, |a| a.span().start),
                    "access_log: write \"off\", \"stdout\" or a file path".into(),
                ));
            }
            Some(file) => AccessLogTarget::File(base.join(file)),
        };

        let handoff = match &raw.handoff {
            None => None,
            Some(h) => {
                let file = base.join(h.get_ref().trim());
                let len = file.as_os_str().len();
                if h.get_ref().trim().is_empty() || h.get_ref().ends_with('/') {
                    return Err(err(
                        h.span().start,
                        "handoff: needs the path of a Unix socket, e.g. handoff = \"/run/wsplice/handoff.sock\"".into(),
                    ));
                }
                if len > MAX_HANDOFF_PATH {
                    return Err(err(
                        h.span().start,
                        format!(
                            "handoff: {} is {len} bytes long; a Unix socket path may have at most {MAX_HANDOFF_PATH} (the kernel's limit, less room for a temporary name)",
                            file.display()
                        ),
                    ));
                }
                Some(file)
            }
        };

        let resolver = match &raw.resolver {
            None => None,
            Some(r) => match r.get_ref().trim().parse::<SocketAddr>() {
                Ok(addr) if addr.port() != 0 && !addr.ip().is_unspecified() => Some(addr),
                _ => {
                    return Err(err(
                        r.span().start,
                        format!(
                            "resolver: {:?} is not a DNS server's IP:PORT; write e.g. \"127.0.0.53:53\" or \"[::1]:53\", or leave resolver out to use the system resolver",
                            r.get_ref()
                        ),
                    ));
                }
            },
        };
        let trusted_proxies = raw
            .trusted_proxies
            .iter()
            .map(|entry| {
                Cidr::parse(entry.get_ref().trim()).map_err(|why| {
                    err(
                        entry.span().start,
                        format!(
                            "trusted_proxies: {:?} {why}; write a network or an address, e.g. \"10.0.0.0/8\", \"2001:db8::/32\" or \"192.0.2.7\"",
                            entry.get_ref()
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let trusted_proxies = TrustedProxies::new(trusted_proxies);

        let t = &raw.timeouts;
        let duration = |field: &str, value: &Option<Spanned<String>>, default: Duration| {
            parse_timeout(field, value, default).map_err(|(offset, msg)| err(offset, msg))
        };
        let timeouts = Timeouts {
            handshake: duration("timeouts.handshake", &t.handshake, DEFAULT_HANDSHAKE)?,
            connect: duration("timeouts.connect", &t.connect, DEFAULT_CONNECT)?,
            response: duration("timeouts.response", &t.response, DEFAULT_RESPONSE)?,
            idle: duration("timeouts.idle", &t.idle, DEFAULT_IDLE)?,
            drain: duration("timeouts.drain", &t.drain, DEFAULT_DRAIN)?,
            keepalive: duration("timeouts.keepalive", &t.keepalive, DEFAULT_KEEPALIVE)?,
        };

        let limits = Limits {
            max_request_head: parse_limit(
                "limits.max_request_head",
                &raw.limits.max_request_head,
                DEFAULT_MAX_REQUEST_HEAD,
                MIN_REQUEST_HEAD..=MAX_REQUEST_HEAD,
            )
            .map_err(|(offset, msg)| err(offset, msg))?,
            max_connections: parse_limit(
                "limits.max_connections",
                &raw.limits.max_connections,
                DEFAULT_MAX_CONNECTIONS,
                1..=10_000_000,
            )
            .map_err(|(offset, msg)| err(offset, msg))?,
            receive_buffers: parse_limit(
                "limits.receive_buffers",
                &raw.limits.receive_buffers,
                DEFAULT_RECEIVE_BUFFERS,
                1..=MAX_RECEIVE_BUFFERS,
            )
            .map_err(|(offset, msg)| err(offset, msg))? as u16,
            multishot_receive: raw.limits.multishot_receive.unwrap_or(true),
            defer_taskrun: raw.limits.defer_taskrun,
            max_connections_per_ip: parse_limit(
                "limits.max_connections_per_ip",
                &raw.limits.max_connections_per_ip,
                0,
                0..=10_000_000,
            )
            .map_err(|(offset, msg)| err(offset, msg))?,
            handshake_rate_per_ip: parse_rate(
                "limits.handshake_rate_per_ip",
                &raw.limits.handshake_rate_per_ip,
            )
            .map_err(|(offset, msg)| err(offset, msg))?,
        };

        let tls = match &raw.tls {
            None => None,
            Some(section) => {
                Some(parse_tls(base, section.get_ref()).map_err(|(offset, msg)| {
                    err(
                        if offset == 0 {
                            section.span().start
                        } else {
                            offset
                        },
                        msg,
                    )
                })?)
            }
        };
        if tls.is_none()
            && let Some(entry) = raw
                .listen
                .get_ref()
                .iter()
                .zip(&listen)
                .find(|(_, l)| l.tls)
                .map(|(entry, _)| entry)
        {
            return Err(err(
                entry.span().start,
                "listen: tls = true needs a [tls] section with certificates, e.g.\n[tls]\ncertificates = [ { cert = \"example.com.pem\", key = \"example.com.key\" } ]".into(),
            ));
        }

        if raw.routes.is_empty() {
            return Err(err(
                0,
                "no [[route]]: add at least one, e.g.\n[[route]]\npath = \"/websocket\"\nupstream = \"backend\""
                    .into(),
            ));
        }
        let mut seen: HashMap<(Option<HostPattern>, &str), usize> = HashMap::new();
        let mut routes = Vec::with_capacity(raw.routes.len());
        for route in &raw.routes {
            let p = route.path.get_ref();
            let line = line_of(text, route.path.span().start);
            if let Err(problem) = check_route_path(p) {
                return Err(err(
                    route.path.span().start,
                    format!("route.path: {p:?} {problem}"),
                ));
            }
            let host = match &route.host {
                None => None,
                Some(h) => Some(HostPattern::parse(h.get_ref()).map_err(|problem| {
                    err(
                        h.span().start,
                        format!("route.host: {:?} {problem}", h.get_ref()),
                    )
                })?),
            };
            if let Some(first) = seen.insert((host.clone(), p), line) {
                let what = match &host {
                    Some(h) => format!("{p:?} for host {h}"),
                    None => format!("{p:?}"),
                };
                return Err(err(
                    route.path.span().start,
                    format!(
                        "route.path: {what} is already routed at line {first}; each path may appear once per host"
                    ),
                ));
            }
            let group = route.upstream.get_ref();
            if group.is_empty() {
                return Err(err(
                    route.upstream.span().start,
                    "route.upstream: needs a group name from the upstream file".into(),
                ));
            }
            let extra_upgrades = parse_extra_upgrades(&route.extra_upgrades)
                .map_err(|(offset, msg)| err(offset, msg))?;
            let allowed_origins = route
                .allowed_origins
                .iter()
                .map(|o| {
                    OriginPattern::parse(o.get_ref()).map_err(|reason| {
                        let text = o.get_ref();
                        err(
                            o.span().start,
                            format!("route.allowed_origins: {text:?} {reason}"),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            routes.push(Route {
                host,
                path: p.clone(),
                upstream: group.clone(),
                line,
                extra_upgrades,
                allowed_origins,
                require_origin: route.require_origin,
            });
        }

        Ok(Config {
            path: path.to_path_buf(),
            listen,
            workers,
            upstreams_path,
            admin,
            access_log,
            handoff,
            resolver,
            trusted_proxies,
            timeouts,
            limits,
            routes: Routes::new(routes),
            tls,
        })
    }
}

type FieldError = (usize, String);

/// A route path is matched against request paths in normal form, so it must be one itself:
/// any other would never match, or would let through what requests may not carry.
fn check_route_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must start with '/', e.g. \"/websocket\"".into());
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "must be visible ASCII; percent-encode other bytes, e.g. \"/caf%C3%A9\"".into(),
        );
    }
    if path.contains(['?', '#']) {
        return Err("must be a path only: the query never takes part in routing".into());
    }
    path::check(path.as_bytes())
        .map_err(|problem| format!("can never match: requests are refused (400) for {problem}"))?;
    let mut normal = Vec::with_capacity(path.len());
    path::normalize(path.as_bytes(), &mut normal);
    if normal != path.as_bytes() {
        return Err(format!(
            "never matches: requests are routed on their normalised path; write {:?}",
            String::from_utf8_lossy(&normal)
        ));
    }
    Ok(())
}

fn parse_timeout(
    field: &str,
    value: &Option<Spanned<String>>,
    default: Duration,
) -> Result<Option<Duration>, FieldError> {
    let Some(value) = value else {
        return Ok(Some(default));
    };
    match humantime::parse_duration(value.get_ref().trim()) {
        Ok(d) if d.is_zero() => Ok(None),
        Ok(d) => Ok(Some(d)),
        Err(e) => Err((
            value.span().start,
            format!(
                "{field}: {:?} is not a duration ({e}); write e.g. \"10s\", \"500ms\", \"1h\", or \"0s\" to disable",
                value.get_ref()
            ),
        )),
    }
}

/// `route.extra_upgrades`: protocol names as `Upgrade` carries them (a token, optionally
/// `/version`), each once; `websocket` is always allowed and is not listed, and `h2c` is
/// refused because no proxy can carry its upgrade.
fn parse_extra_upgrades(list: &[Spanned<String>]) -> Result<Vec<String>, FieldError> {
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for entry in list {
        let token = entry.get_ref();
        let is_tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        let valid = match token.split_once('/') {
            Some((name, version)) => {
                !name.is_empty()
                    && !version.is_empty()
                    && name.chars().all(is_tchar)
                    && version.chars().all(is_tchar)
            }
            None => !token.is_empty() && token.chars().all(is_tchar),
        };
        let name = token
            .split_once('/')
            .map_or(token.as_str(), |(name, _)| name);
        let problem = if !valid {
            Some("is not a protocol name; write e.g. \"connect-udp\"")
        } else if name.eq_ignore_ascii_case("h2c") {
            Some(
                "cannot work: the h2c upgrade needs HTTP2-Settings, a hop-by-hop header a proxy drops, and RFC 9113 deprecated it; remove it",
            )
        } else if token.eq_ignore_ascii_case("websocket") {
            Some("is always allowed; list only other protocols")
        } else if out.iter().any(|t| t.eq_ignore_ascii_case(token)) {
            Some("is listed twice")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err((
                entry.span().start,
                format!("route.extra_upgrades: {token:?} {problem}"),
            ));
        }
        out.push(token.clone());
    }
    Ok(out)
}

fn parse_limit(
    field: &str,
    value: &Option<Spanned<i64>>,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, FieldError> {
    let Some(value) = value else {
        return Ok(default);
    };
    let v = *value.get_ref();
    match usize::try_from(v) {
        Ok(v) if range.contains(&v) => Ok(v),
        _ => Err((
            value.span().start,
            format!(
                "{field}: {v} is out of range; use {} to {}",
                range.start(),
                range.end()
            ),
        )),
    }
}

/// `"N/s"` or `"N/m"` (also `sec`, `second`, `min`, `minute`); `N` = 0 turns the limit off.
fn parse_rate(field: &str, value: &Option<Spanned<String>>) -> Result<Option<Rate>, FieldError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let text = value.get_ref().trim();
    let parsed = text.split_once('/').and_then(|(n, unit)| {
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            _ => return None,
        };
        let requests = n.trim().parse::<u32>().ok()?;
        Some(Rate { requests, per })
    });
    match parsed {
        Some(rate) if rate.requests == 0 => Ok(None),
        Some(rate) if rate.requests <= MAX_RATE => Ok(Some(rate)),
        Some(rate) => Err((
            value.span().start,
            format!(
                "{field}: {} is out of range; use 0 (no limit) to {MAX_RATE} requests per unit",
                rate.requests
            ),
        )),
        None => Err((
            value.span().start,
            format!(
                "{field}: {:?} is not a rate; write requests per second or minute, e.g. \"20/s\" or \"600/m\", or \"0/s\" for no limit",
                value.get_ref()
            ),
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tls_tests;
