//! The upstream table: groups of servers, immutable once built and swapped whole on reload,
//! so a connection that loaded it keeps a consistent view without any lock.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::addr::UpstreamAddr;
use super::balancer::key::HashKey;
use super::balancer::{Balance, Balancer, Health, MAX_SERVERS, MAX_WEIGHT, Policy};
use super::health::HealthCheck;
use super::resolve::{self, DEFAULT_RESOLVE_INTERVAL, HostName};
use crate::config::{Config, ConfigError, Routes, read_file};
use crate::http::lookup::is_token;
use crate::http::proxy_protocol;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    servers: Spanned<Vec<Spanned<toml::Value>>>,
    max_fails: Option<Spanned<i64>>,
    fail_timeout: Option<Spanned<String>>,
    balance: Option<Spanned<String>>,
    hash_key: Option<Spanned<String>>,
    sticky_cookie: Option<Spanned<String>>,
    health_check: Option<Spanned<toml::Value>>,
    resolve_interval: Option<Spanned<String>>,
    send_proxy_protocol: Option<Spanned<String>>,
}

/// One upstream group: its name, the balancer that picks among its servers, and the
/// entries those servers come from.
#[derive(Debug)]
pub struct Group {
    pub name: String,
    pub balancer: Balancer,
    /// The PROXY header written to each of its servers right after connecting
    /// (`send_proxy_protocol`), before the request head.
    pub send_proxy_protocol: proxy_protocol::Version,
    /// Active health checks; `None`: passive health only.
    pub check: Option<HealthCheck>,
    /// How often host names are looked up again; `None` (`"0s"`): only when the file is read.
    pub resolve_interval: Option<Duration>,
    entries: Vec<Entry>,
    /// The `Host` a health check sends, by server.
    hosts: Vec<Arc<str>>,
}

/// A `servers` entry as the file writes it, with the addresses it stands for now.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Set when the entry is a host name: it is looked up again every `resolve_interval`.
    pub name: Option<HostName>,
    /// One address, or every address a host name resolved to (each a server).
    pub addrs: Vec<UpstreamAddr>,
    pub weight: u32,
}

impl Group {
    /// A group of the servers `entries` stand for, in order.
    fn build(
        name: &str,
        entries: Vec<Entry>,
        health: Health,
        policy: &Policy,
        check: Option<HealthCheck>,
        resolve_interval: Option<Duration>,
    ) -> Group {
        let mut servers = Vec::new();
        let mut hosts: Vec<Arc<str>> = Vec::new();
        for entry in &entries {
            for addr in &entry.addrs {
                if servers.len() == MAX_SERVERS {
                    tracing::warn!(
                        "upstream {name}: more than {MAX_SERVERS} servers after looking names up; using the first {MAX_SERVERS}"
                    );
                    break;
                }
                // One address is one server, however many entries name it (an address and a
                // name that resolves to it, two names of one host): its weights add up, and
                // its health is checked and kept once.
                if let Some(known) = servers.iter_mut().find(|(a, _)| a == addr) {
                    known.1 += entry.weight;
                    continue;
                }
                servers.push((addr.clone(), entry.weight));
                hosts.push(match (&entry.name, addr) {
                    (Some(host), _) => host.to_string().into(),
                    (None, UpstreamAddr::Tcp(a)) => a.to_string().into(),
                    (None, UpstreamAddr::Unix(_)) => "localhost".into(),
                });
            }
        }
        Group {
            name: name.to_string(),
            balancer: Balancer::with_policy(name, servers, health, policy),
            send_proxy_protocol: proxy_protocol::Version::Off,
            check,
            resolve_interval,
            entries,
            hosts,
        }
    }

    pub fn servers(&self) -> &[UpstreamAddr] {
        self.balancer.servers()
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The `Host` header a health check of server `index` sends: the entry's host name and
    /// port, the address, or `localhost` for a unix socket.
    pub fn host(&self, index: usize) -> &str {
        &self.hosts[index]
    }
}

/// Why an upstream file was refused, and whether the same text may load later.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Refused {
    pub error: ConfigError,
    /// A server's host name did not resolve: the text may be right and DNS not (yet), so
    /// the same text is worth reading again.
    pub unresolved: bool,
}

impl From<ConfigError> for Refused {
    fn from(error: ConfigError) -> Self {
        Refused {
            error,
            unresolved: false,
        }
    }
}

/// Every group of the upstream file, plus which group serves each route of the config.
#[derive(Debug)]
pub struct UpstreamTable {
    groups: Vec<Group>,
    route_groups: Vec<usize>,
}

impl UpstreamTable {
    /// Reads and validates the upstream file against `config`'s routes.
    pub fn load(path: &Path, config: &Config) -> Result<Self, ConfigError> {
        let text = read_file(path)?;
        Self::parse(path, &text, config)
    }

    pub fn parse(path: &Path, text: &str, config: &Config) -> Result<Self, ConfigError> {
        Self::parse_with_cause(path, text, config).map_err(|refused| refused.error)
    }

    /// As [`UpstreamTable::parse`], saying whether a refusal came from a host name that did
    /// not resolve (worth trying the same text again) or from the text itself.
    pub fn parse_with_cause(path: &Path, text: &str, config: &Config) -> Result<Self, Refused> {
        let raw: BTreeMap<String, Spanned<RawGroup>> =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(path, text, &e))?;
        let err = |offset: usize, msg: String| ConfigError::at(path, text, offset, msg);
        let refuse = |offset: usize, msg: String| Refused::from(err(offset, msg));

        let mut groups = Vec::with_capacity(raw.len());
        for (name, group) in &raw {
            let group = group.get_ref();
            let entries = group.servers.get_ref();
            if entries.is_empty() {
                return Err(refuse(
                    group.servers.span().start,
                    format!(
                        "{name}.servers: the group has no servers; list at least one, e.g. servers = [\"127.0.0.1:3000\"]"
                    ),
                ));
            }
            if entries.len() > MAX_SERVERS {
                return Err(refuse(
                    group.servers.span().start,
                    format!(
                        "{name}.servers: {} servers; a group holds at most {MAX_SERVERS}, split it",
                        entries.len()
                    ),
                ));
            }
            let mut servers = Vec::with_capacity(entries.len());
            for entry in entries {
                let server = parse_server(entry.get_ref(), config.resolver).map_err(|bad| {
                    let (why, unresolved) = match bad {
                        BadServer::Invalid(why) => (why, false),
                        BadServer::Unresolved(why) => (why, true),
                    };
                    Refused {
                        error: err(entry.span().start, format!("{name}.servers: {why}")),
                        unresolved,
                    }
                })?;
                servers.push(server);
            }
            let health = parse_health(name, group).map_err(|(at, why)| err(at, why))?;
            let policy = parse_policy(name, group).map_err(|(at, why)| err(at, why))?;
            let send_proxy_protocol = match &group.send_proxy_protocol {
                None => proxy_protocol::Version::Off,
                Some(v) => proxy_protocol::Version::parse(v.get_ref()).ok_or_else(|| {
                    err(
                        v.span().start,
                        format!(
                            "{name}.send_proxy_protocol: {:?} is not a PROXY protocol version; use \"off\" (the default), \"v1\" or \"v2\"",
                            v.get_ref()
                        ),
                    )
                })?,
            };
            let check = group
                .health_check
                .as_ref()
                .map(|c| HealthCheck::parse(name, c.get_ref(), c.span().start))
                .transpose()
                .map_err(|(at, why)| err(at, why))?;
            let resolve_interval =
                parse_resolve_interval(name, group).map_err(|(at, why)| err(at, why))?;
            let mut built = Group::build(name, servers, health, &policy, check, resolve_interval);
            built.send_proxy_protocol = send_proxy_protocol;
            groups.push(built);
        }

        let route_groups =
            route_groups(&groups, &config.routes).map_err(|(route, msg)| ConfigError::At {
                file: config.path.clone(),
                line: route.line,
                message: format!("{msg} (upstream file {})", path.display()),
            })?;
        Ok(UpstreamTable {
            groups,
            route_groups,
        })
    }

    /// The group that serves route number `route` (an index into [`Routes`]).
    pub fn group_for_route(&self, route: usize) -> &Group {
        &self.groups[self.route_groups[route]]
    }

    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// Takes over from `old`, group by group, the health state (passive, and active while
    /// the group keeps `health_check`) and open-connection counts of servers present in both
    /// tables, and the round-robin position.
    pub fn inherit(&mut self, old: &UpstreamTable) {
        for group in &mut self.groups {
            if let Some(previous) = old.group(&group.name) {
                group.balancer.inherit_loads(&previous.balancer);
                group.balancer.inherit_health(&previous.balancer);
                if group.check.is_some() {
                    group.balancer.inherit_verdicts(&previous.balancer);
                }
                group.balancer.inherit_position(&previous.balancer);
            }
        }
    }

    /// This table with group `group`'s host names standing for the addresses `found`, and
    /// what moved ("app.internal:3000 -> [..] (was [..])"); `None` when nothing did. Names
    /// missing from `found` (their lookup failed) keep their addresses.
    pub fn with_addresses(
        &self,
        group: &str,
        found: &[(HostName, Vec<UpstreamAddr>)],
    ) -> Option<(UpstreamTable, Vec<String>)> {
        let moved = |e: &Entry| {
            let name = e.name.as_ref();
            found.iter().any(|(n, a)| Some(n) == name && *a != e.addrs)
        };
        if !self.group(group)?.entries.iter().any(moved) {
            return None;
        }
        let mut changes = Vec::new();
        let table = self.rebuilt(|g, entries| {
            if g.name != group {
                return;
            }
            for entry in entries {
                let Some(name) = &entry.name else { continue };
                let Some((_, addrs)) = found.iter().find(|(n, _)| n == name) else {
                    continue;
                };
                if *addrs != entry.addrs {
                    changes.push(format!(
                        "{name} -> [{}] (was [{}])",
                        resolve::list(addrs),
                        resolve::list(&entry.addrs)
                    ));
                    entry.addrs = addrs.clone();
                }
            }
        });
        Some((table, changes))
    }

    /// A fresh copy of this table (no state inherited yet) in which each host name that
    /// re-resolution moved between `base` and `current` (same group, same name, other
    /// addresses) stands for its addresses in `current`.
    pub fn with_moves(&self, base: &UpstreamTable, current: &UpstreamTable) -> UpstreamTable {
        let addrs = |table: &UpstreamTable, group: &str, name: &HostName| {
            let entries = &table.group(group)?.entries;
            let entry = entries.iter().find(|e| e.name.as_ref() == Some(name))?;
            Some(entry.addrs.clone())
        };
        self.rebuilt(|g, entries| {
            for entry in entries {
                let Some(name) = &entry.name else { continue };
                if let Some(now) = addrs(current, &g.name, name)
                    && addrs(base, &g.name, name).as_ref() != Some(&now)
                {
                    entry.addrs = now;
                }
            }
        })
    }

    /// This table built again with fresh balancer state, each group from its entries as
    /// `edit` leaves them.
    fn rebuilt(&self, mut edit: impl FnMut(&Group, &mut Vec<Entry>)) -> UpstreamTable {
        let groups = self
            .groups
            .iter()
            .map(|g| {
                let mut entries = g.entries.clone();
                edit(g, &mut entries);
                let mut built = Group::build(
                    &g.name,
                    entries,
                    g.balancer.health(),
                    g.balancer.policy(),
                    g.check.clone(),
                    g.resolve_interval,
                );
                built.send_proxy_protocol = g.send_proxy_protocol;
                built
            })
            .collect();
        UpstreamTable {
            groups,
            route_groups: self.route_groups.clone(),
        }
    }
}

/// Why a server entry was refused.
enum BadServer {
    Invalid(String),
    /// A well-formed `HOST:PORT` whose host did not resolve (now).
    Unresolved(String),
}

impl From<String> for BadServer {
    fn from(why: String) -> Self {
        BadServer::Invalid(why)
    }
}

/// A server entry: `"HOST:PORT"`, `"unix:/PATH"`, or either as `{ addr = ..., weight = N }`.
/// Host names are looked up at `resolver` (else the system resolver).
fn parse_server(value: &toml::Value, resolver: Option<SocketAddr>) -> Result<Entry, BadServer> {
    let entry = |(name, addrs), weight| Entry {
        name,
        addrs,
        weight,
    };
    match value {
        toml::Value::String(s) => Ok(entry(resolve(s, resolver)?, 1)),
        toml::Value::Table(t) => {
            if let Some(key) = t.keys().find(|k| !["addr", "weight"].contains(&k.as_str())) {
                return Err(format!(
                    "unknown key `{key}` in a server entry; expected `addr` and optionally `weight`"
                )
                .into());
            }
            let addr = match t.get("addr") {
                Some(toml::Value::String(s)) => resolve(s, resolver)?,
                Some(_) => {
                    return Err(BadServer::Invalid(
                        "`addr` must be a string like \"127.0.0.1:3000\"".into(),
                    ));
                }
                None => {
                    return Err(BadServer::Invalid(
                        "a server entry needs `addr`, e.g. { addr = \"127.0.0.1:3000\", weight = 2 }"
                            .into(),
                    ));
                }
            };
            let weight = match t.get("weight") {
                None => 1,
                Some(toml::Value::Integer(w)) if (1..=i64::from(MAX_WEIGHT)).contains(w) => {
                    *w as u32
                }
                Some(w) => {
                    return Err(format!(
                        "weight {w} is out of range; use a whole number from 1 to {MAX_WEIGHT}"
                    )
                    .into());
                }
            };
            Ok(entry(addr, weight))
        }
        other => Err(format!(
            "{other} is not a server; write \"HOST:PORT\", \"unix:/PATH\" or {{ addr = \"HOST:PORT\", weight = N }}"
        )
        .into()),
    }
}

fn parse_health(name: &str, group: &RawGroup) -> Result<Health, (usize, String)> {
    let mut health = Health::default();
    if let Some(m) = &group.max_fails {
        health.max_fails = u32::try_from(*m.get_ref())
            .ok()
            .filter(|&m| m <= 1000)
            .ok_or_else(|| {
                (
                    m.span().start,
                    format!(
                        "{name}.max_fails: {} is out of range; use 0 (never mark down) to 1000",
                        m.get_ref()
                    ),
                )
            })?;
    }
    if let Some(t) = &group.fail_timeout {
        health.fail_timeout = humantime::parse_duration(t.get_ref().trim())
            .ok()
            .filter(|d| *d >= Duration::from_millis(1))
            .ok_or_else(|| {
                (
                    t.span().start,
                    format!(
                        "{name}.fail_timeout: {:?} is not a positive duration; write e.g. \"10s\" or \"500ms\"",
                        t.get_ref()
                    ),
                )
            })?;
    }
    Ok(health)
}

/// `balance`, `hash_key` and `sticky_cookie`.
fn parse_policy(name: &str, group: &RawGroup) -> Result<Policy, (usize, String)> {
    let hash_key = match &group.hash_key {
        None => HashKey::ClientIp,
        Some(k) => HashKey::parse(k.get_ref())
            .map_err(|why| (k.span().start, format!("{name}.hash_key: {why}")))?,
    };
    let balance = match group
        .balance
        .as_ref()
        .map(|b| (b.get_ref().as_str(), b.span()))
    {
        None | Some(("round_robin", _)) => Balance::RoundRobin,
        Some(("least_conn", _)) => Balance::LeastConn,
        Some(("hash", _)) => Balance::Hash(hash_key),
        Some((other, span)) => {
            return Err((
                span.start,
                format!(
                    "{name}.balance: {other:?} is not a balance; use \"round_robin\" (the default), \"least_conn\" or \"hash\""
                ),
            ));
        }
    };
    if let Some(k) = &group.hash_key
        && !matches!(balance, Balance::Hash(_))
    {
        return Err((
            k.span().start,
            format!(
                "{name}.hash_key: only used with balance = \"hash\"; add that, or remove hash_key"
            ),
        ));
    }
    let sticky_cookie = match &group.sticky_cookie {
        None => None,
        Some(c) if is_token(c.get_ref().as_bytes()) => Some(c.get_ref().clone()),
        Some(c) => {
            return Err((
                c.span().start,
                format!(
                    "{name}.sticky_cookie: {:?} is not a cookie name; use an RFC 6265 token (letters, digits and !#$%&'*+-.^_`|~), e.g. \"wsplice_srv\"",
                    c.get_ref()
                ),
            ));
        }
    };
    Ok(Policy {
        balance,
        sticky_cookie,
    })
}

fn route_groups<'r>(
    groups: &[Group],
    routes: &'r Routes,
) -> Result<Vec<usize>, (&'r crate::config::Route, String)> {
    routes
        .iter()
        .map(|route| {
            groups
                .iter()
                .position(|g| g.name == route.upstream)
                .ok_or_else(|| {
                    let known: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
                    (
                        route,
                        format!(
                            "route {:?}: upstream group {:?} is not defined; the upstream file defines [{}]",
                            route.path,
                            route.upstream,
                            known.join(", ")
                        ),
                    )
                })
        })
        .collect()
}

/// An entry's host name, if it has one, and the addresses it stands for now.
type Resolved = (Option<HostName>, Vec<UpstreamAddr>);

fn resolve(server: &str, resolver: Option<SocketAddr>) -> Result<Resolved, BadServer> {
    if let Some(unix) = UpstreamAddr::parse_unix(server) {
        return Ok((None, vec![unix?]));
    }
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok((None, vec![addr.into()]));
    }
    let Some((host, port)) = server.rsplit_once(':').filter(|_| !server.ends_with(']')) else {
        return Err(BadServer::Invalid(format!(
            "{server:?} has no port; write HOST:PORT, e.g. \"127.0.0.1:3000\""
        )));
    };
    let Ok(port) = port.parse::<u16>() else {
        return Err(BadServer::Invalid(format!(
            "{server:?}: {port:?} is not a port (0 to 65535); write HOST:PORT, e.g. \"127.0.0.1:3000\""
        )));
    };
    if host.is_empty() || host.contains(['[', ']', ' ', '/']) {
        return Err(BadServer::Invalid(format!(
            "{server:?}: {host:?} is not a host name or IP address; write HOST:PORT, e.g. \"app.internal:3000\""
        )));
    }
    let name = HostName {
        host: host.to_string(),
        port,
    };
    match resolve::lookup_blocking(&name, resolver) {
        Ok(addrs) => Ok((Some(name), addrs)),
        Err(e) => {
            let at = resolver.map_or(String::new(), |r| format!(" at {r}"));
            Err(BadServer::Unresolved(format!(
                "{server:?} is not a reachable HOST:PORT (the host name did not resolve{at}: {e}); write e.g. \"127.0.0.1:3000\" or \"[::1]:3000\""
            )))
        }
    }
}

/// `resolve_interval`: a duration, `"0s"` for never again after the file is read.
fn parse_resolve_interval(
    name: &str,
    group: &RawGroup,
) -> Result<Option<Duration>, (usize, String)> {
    let Some(value) = &group.resolve_interval else {
        return Ok(Some(DEFAULT_RESOLVE_INTERVAL));
    };
    match humantime::parse_duration(value.get_ref().trim()) {
        Ok(d) if d.is_zero() => Ok(None),
        Ok(d) if d >= Duration::from_millis(10) => Ok(Some(d)),
        _ => Err((
            value.span().start,
            format!(
                "{name}.resolve_interval: {:?} is not a duration of 10ms or more; write e.g. \"30s\", or \"0s\" to look host names up only when the file is read",
                value.get_ref()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_host_name_that_does_not_resolve_is_worth_retrying() {
        let unresolved = |s: &str| matches!(resolve(s, None), Err(BadServer::Unresolved(_)));
        let invalid = |s: &str| matches!(resolve(s, None), Err(BadServer::Invalid(_)));
        assert!(unresolved("wsplice-no-such-host.invalid:3000"));
        assert!(invalid("no-port"));
        assert!(invalid("[::1]"));
        assert!(invalid("host:http"));
        assert!(invalid("host:70000"));
        assert!(invalid(":3000"));
        assert!(matches!(resolve("127.0.0.1:3000", None), Ok((None, _))));
        assert!(matches!(resolve("localhost:3000", None), Ok((Some(_), _))));
    }
}
