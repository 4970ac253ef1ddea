//! Active health checks (nginx plus `health_check`, HAProxy `check inter rise fall`): every
//! server of a group with `health_check` is probed every `interval` from one background
//! task, never once per worker, and its up/down verdict is one atomic flag the balancer
//! reads with a load. The flag is shared by every table that keeps the server, so the state
//! survives reloads and re-resolution.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tracing::{info, warn};

use super::UpstreamTable;
use super::addr::UpstreamAddr;
use crate::http::proxy_protocol;

/// HAProxy's `inter` default; nginx plus uses 5 s too.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// HAProxy's `rise 2 fall 3`.
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
const MAX_STREAK: i64 = 1000;
/// How often the checker looks for servers added to or gone from the table.
const SUPERVISE: Duration = Duration::from_millis(100);
/// The most of a response read to find its status line.
const MAX_STATUS_LINE: usize = 1024;

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `GET path`; any 2xx or 3xx status is up.
    Http { path: String },
    /// A connect that succeeds is up.
    Tcp,
}

/// A group's `health_check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    /// Successes in a row that bring a down server up.
    pub rise: u32,
    /// Failures in a row that take an up server down.
    pub fall: u32,
}

impl fmt::Display for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.probe {
            Probe::Http { path } => write!(f, "GET {path}")?,
            Probe::Tcp => write!(f, "tcp connect")?,
        }
        write!(
            f,
            " every {} (timeout {}, rise {}, fall {})",
            humantime::format_duration(self.interval),
            humantime::format_duration(self.timeout),
            self.rise,
            self.fall
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    path: Option<String>,
    tcp: Option<bool>,
    interval: Option<String>,
    timeout: Option<String>,
    rise: Option<i64>,
    fall: Option<i64>,
}

impl HealthCheck {
    /// Group `group`'s `health_check` table, written at byte `at` of the file (an inline
    /// table: its line is every field's line). Errors are (offset, message).
    pub fn parse(group: &str, value: &toml::Value, at: usize) -> Result<Self, (usize, String)> {
        let field = format!("{group}.health_check");
        let raw = RawHealthCheck::deserialize(value.clone())
            .map_err(|e| (at, format!("{field}: {}", e.message().trim_end())))?;
        let probe = match (&raw.path, &raw.tcp) {
            (Some(path), None) => {
                if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err((
                        at,
                        format!(
                            "{field}.path: {path:?} is not a request path; it must start with '/' and hold visible ASCII only, e.g. \"/healthz\""
                        ),
                    ));
                }
                Probe::Http { path: path.clone() }
            }
            (None, Some(true)) => Probe::Tcp,
            (Some(_), Some(_)) => {
                return Err((
                    at,
                    format!(
                        "{field}: has both `path` and `tcp`; use `path = \"/healthz\"` for an HTTP check or `tcp = true` for a connect check"
                    ),
                ));
            }
            _ => {
                return Err((
                    at,
                    format!(
                        "{field}: says what to check with `path = \"/healthz\"` (HTTP GET, 2xx/3xx is up) or `tcp = true` (a connect is up)"
                    ),
                ));
            }
        };
        let duration = |name: &str, value: &Option<String>, default| {
            match value {
            None => Ok(default),
            Some(v) => humantime::parse_duration(v.trim())
                .ok()
                .filter(|d| *d >= Duration::from_millis(1))
                .ok_or_else(|| {
                    (
                        at,
                        format!(
                            "{field}.{name}: {v:?} is not a positive duration; write e.g. \"5s\" or \"500ms\""
                        ),
                    )
                }),
        }
        };
        let streak = |name: &str, value: &Option<i64>, default| match value {
            None => Ok(default),
            Some(v) if (1..=MAX_STREAK).contains(v) => Ok(*v as u32),
            Some(v) => Err((
                at,
                format!(
                    "{field}.{name}: {v} is out of range; use 1 to {MAX_STREAK} checks in a row"
                ),
            )),
        };
        Ok(HealthCheck {
            probe,
            interval: duration("interval", &raw.interval, DEFAULT_INTERVAL)?,
            timeout: duration("timeout", &raw.timeout, DEFAULT_TIMEOUT)?,
            rise: streak("rise", &raw.rise, DEFAULT_RISE)?,
            fall: streak("fall", &raw.fall, DEFAULT_FALL)?,
        })
    }
}

/// One server's active-health verdict, shared by every table that lists the server. A
/// server starts up (as in HAProxy and nginx plus without `mandatory`): traffic is not held
/// back while the first checks run, and `fall` failures in a row are needed to take it down.
/// Only the checker writes it.
#[derive(Debug, Default)]
pub struct Verdict {
    down: AtomicBool,
    /// Results in a row that disagree with the current state.
    streak: AtomicU32,
}

impl Verdict {
    #[inline]
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Counts one check result; true when it flipped the state.
    pub fn record(&self, ok: bool, rise: u32, fall: u32) -> bool {
        let down = self.is_down();
        if ok != down {
            self.streak.store(0, Ordering::Relaxed);
            return false;
        }
        let streak = self.streak.load(Ordering::Relaxed) + 1;
        if streak >= if down { rise } else { fall } {
            self.down.store(!down, Ordering::Relaxed);
            self.streak.store(0, Ordering::Relaxed);
            true
        } else {
            self.streak.store(streak, Ordering::Relaxed);
            false
        }
    }
}

/// Keeps one probing task per (group, server) of every group with `health_check` in the
/// current table, for as long as the pair stays in it.
pub async fn run<T>(tables: Arc<T>)
where
    T: std::ops::Deref<Target = ArcSwap<UpstreamTable>> + Send + Sync + 'static,
{
    let mut tasks: HashMap<(String, UpstreamAddr), Task> = HashMap::new();
    let mut seen: Option<Arc<UpstreamTable>> = None;
    loop {
        tasks.retain(|_, task| !task.handle.is_finished());
        let table = tables.load_full();
        if seen.as_ref().is_none_or(|s| !Arc::ptr_eq(s, &table)) {
            for group in table.groups() {
                let Some(check) = &group.check else { continue };
                for addr in group.servers() {
                    let key = (group.name.clone(), addr.clone());
                    // A reload that changed the settings restarts the server's checks, so a
                    // shorter interval does not wait out the longer one.
                    if tasks.get(&key).is_some_and(|task| task.check == *check) {
                        continue;
                    }
                    let handle = tokio::spawn(watch(tables.clone(), key.0.clone(), key.1.clone()));
                    let task = Task {
                        check: check.clone(),
                        handle,
                    };
                    if let Some(old) = tasks.insert(key, task) {
                        old.handle.abort();
                    }
                }
            }
            seen = Some(table);
        }
        tokio::time::sleep(SUPERVISE).await;
    }
}

/// The probing task of one server, and the settings it started with.
struct Task {
    check: HealthCheck,
    handle: tokio::task::JoinHandle<()>,
}

/// Probes server `addr` of group `group` every interval while the current table lists it,
/// under the settings of the table current at each probe.
async fn watch<T>(tables: Arc<T>, group: String, addr: UpstreamAddr)
where
    T: std::ops::Deref<Target = ArcSwap<UpstreamTable>>,
{
    loop {
        let (check, verdict, host, proxy) = {
            let table = tables.load();
            let Some(g) = table.group(&group) else { return };
            let Some(check) = g.check.clone() else { return };
            let Some(i) = g.servers().iter().position(|a| *a == addr) else {
                return;
            };
            let host = g.host(i).to_string();
            (
                check,
                g.balancer.verdict(i).clone(),
                host,
                g.send_proxy_protocol,
            )
        };
        let probe = probe(&addr, &check.probe, &host, proxy);
        let result = match tokio::time::timeout(check.timeout, probe).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(check.timeout)
            )),
        };
        if verdict.record(result.is_ok(), check.rise, check.fall) {
            match &result {
                Ok(()) => info!(
                    "upstream {group} server {addr} is up: {} health checks passed in a row ({check})",
                    check.rise
                ),
                Err(why) => warn!(
                    "upstream {group} server {addr} is down: {} health checks failed in a row, the last with {why} ({check})",
                    check.fall
                ),
            }
        }
        tokio::time::sleep(check.interval).await;
    }
}

/// One check: Ok when the server is up, else why not. A group that sends PROXY headers
/// sends its checks one too (`LOCAL`: the check is wsplice's own), as servers that require
/// the header would refuse a check without it.
async fn probe(
    addr: &UpstreamAddr,
    probe: &Probe,
    host: &str,
    proxy: proxy_protocol::Version,
) -> Result<(), String> {
    match addr {
        UpstreamAddr::Tcp(a) => {
            let stream = TcpStream::connect(a)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            http(stream, probe, host, proxy).await
        }
        UpstreamAddr::Unix(path) => {
            let stream = UnixStream::connect(path)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            http(stream, probe, host, proxy).await
        }
    }
}

async fn http(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    probe: &Probe,
    host: &str,
    proxy: proxy_protocol::Version,
) -> Result<(), String> {
    let mut request = Vec::new();
    proxy.write_local(&mut request);
    if let Probe::Http { path } = probe {
        request.extend_from_slice(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: wsplice-health-check\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
    }
    if !request.is_empty() {
        stream
            .write_all(&request)
            .await
            .map_err(|e| format!("send: {e}"))?;
    }
    let Probe::Http { .. } = probe else {
        return Ok(());
    };
    let mut buf = Vec::with_capacity(256);
    while !buf.contains(&b'\n') && buf.len() < MAX_STATUS_LINE {
        let mut chunk = [0u8; 256];
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("receive: {e}")),
        }
    }
    match status(&buf) {
        Some(200..=399) => Ok(()),
        Some(code) => Err(format!("HTTP {code}")),
        None => Err("no HTTP status line".into()),
    }
}

/// The status code of a response's first line.
fn status(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    let code = parts.next()?.trim_end_matches('\r');
    (code.len() == 3).then(|| code.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HealthCheck, String> {
        let value: toml::Value = toml::from_str(&format!("h = {text}")).unwrap();
        HealthCheck::parse("chat", &value["h"], 0).map_err(|(_, why)| why)
    }

    #[test]
    fn a_check_is_http_or_tcp_with_defaults() {
        let check = parse("{ path = \"/healthz\" }").unwrap();
        assert_eq!(
            check,
            HealthCheck {
                probe: Probe::Http {
                    path: "/healthz".into()
                },
                interval: DEFAULT_INTERVAL,
                timeout: DEFAULT_TIMEOUT,
                rise: 2,
                fall: 3,
            }
        );
        let tcp = parse("{ tcp = true, interval = \"100ms\", rise = 1, fall = 1 }").unwrap();
        assert_eq!(tcp.probe, Probe::Tcp);
        assert_eq!(tcp.interval, Duration::from_millis(100));
    }

    #[test]
    fn bad_checks_say_what_is_valid() {
        let bad = |text: &str, needle: &str| {
            let why = parse(text).unwrap_err();
            assert!(why.contains(needle), "{text}: {why}");
        };
        bad("{ path = \"healthz\" }", "chat.health_check.path");
        bad("{ path = \"/a b\" }", "must start with '/'");
        bad("{ tcp = false }", "`tcp = true`");
        bad("{ }", "`path = \"/healthz\"`");
        bad("{ path = \"/\", tcp = true }", "both");
        bad(
            "{ path = \"/\", interval = \"often\" }",
            "chat.health_check.interval",
        );
        bad("{ path = \"/\", timeout = \"0s\" }", "positive duration");
        bad(
            "{ path = \"/\", rise = 0 }",
            "chat.health_check.rise: 0 is out of range",
        );
        bad(
            "{ path = \"/\", fall = 0 }",
            "chat.health_check.fall: 0 is out of range",
        );
        bad(
            "{ path = \"/\", intervall = \"1s\" }",
            "unknown field `intervall`",
        );
        bad("\"/healthz\"", "chat.health_check");
    }

    #[test]
    fn fall_failures_take_a_server_down_and_rise_successes_bring_it_up() {
        let v = Verdict::default();
        assert!(!v.is_down());
        assert!(!v.record(false, 2, 3));
        assert!(!v.record(false, 2, 3));
        assert!(!v.record(true, 2, 3), "a success starts the count over");
        assert!(!v.record(false, 2, 3));
        assert!(!v.record(false, 2, 3));
        assert!(v.record(false, 2, 3));
        assert!(v.is_down());
        assert!(!v.record(true, 2, 3));
        assert!(v.record(true, 2, 3));
        assert!(!v.is_down());
    }

    #[test]
    fn a_status_line_is_read_strictly() {
        assert_eq!(status(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status(b"HTTP/1.0 503\r\n"), Some(503));
        assert_eq!(status(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status(b"HTTP/1.1 2000 x\r\n"), None);
    }
}
