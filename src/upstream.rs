//! The upstream table: groups of servers, immutable once built and swapped whole on reload,
//! so a connection that loaded it keeps a consistent view without any lock.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;
use toml::Spanned;

use crate::config::{Config, ConfigError, Routes, read_file};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    servers: Spanned<Vec<Spanned<String>>>,
}

/// One upstream group: its servers and its round-robin cursor.
#[derive(Debug)]
pub struct Group {
    pub name: String,
    pub servers: Vec<SocketAddr>,
    next: AtomicUsize,
}

impl Group {
    pub fn new(name: String, servers: Vec<SocketAddr>) -> Self {
        assert!(!servers.is_empty(), "a group needs at least one server");
        Group {
            name,
            servers,
            next: AtomicUsize::new(0),
        }
    }

    /// The servers to try for one connection: the round-robin choice first, then the rest of
    /// the group in order, like nginx's `proxy_next_upstream error timeout`.
    pub fn pick(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let n = self.servers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).map(move |i| self.servers[(start + i) % n])
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
        let raw: BTreeMap<String, Spanned<RawGroup>> =
            toml::from_str(text).map_err(|e| ConfigError::from_toml(path, text, &e))?;
        let err = |offset: usize, msg: String| ConfigError::at(path, text, offset, msg);

        let mut groups = Vec::with_capacity(raw.len());
        for (name, group) in &raw {
            let servers = group.get_ref().servers.get_ref();
            if servers.is_empty() {
                return Err(err(
                    group.get_ref().servers.span().start,
                    format!(
                        "{name}.servers: the group has no servers; list at least one, e.g. servers = [\"127.0.0.1:3000\"]"
                    ),
                ));
            }
            let mut addrs = Vec::with_capacity(servers.len());
            for server in servers {
                let addr = resolve(server.get_ref()).map_err(|why| {
                    err(
                        server.span().start,
                        format!("{name}.servers: {:?} {why}", server.get_ref()),
                    )
                })?;
                addrs.push(addr);
            }
            groups.push(Group::new(name.clone(), addrs));
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

fn resolve(server: &str) -> Result<SocketAddr, &'static str> {
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !server.contains(':') {
        return Err("has no port; write HOST:PORT, e.g. \"127.0.0.1:3000\"");
    }
    server
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or("is not a reachable HOST:PORT; write e.g. \"127.0.0.1:3000\" or \"[::1]:3000\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_rotates_and_then_tries_the_rest() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let c: SocketAddr = "127.0.0.1:3".parse().unwrap();
        let g = Group::new("g".into(), vec![a, b, c]);
        assert_eq!(g.pick().collect::<Vec<_>>(), [a, b, c]);
        assert_eq!(g.pick().collect::<Vec<_>>(), [b, c, a]);
        assert_eq!(g.pick().collect::<Vec<_>>(), [c, a, b]);
        assert_eq!(g.pick().next(), Some(a));
    }
}
