//! Host names that move (nginx `server ... resolve`, Envoy STRICT_DNS): a `HOST:PORT` server
//! is looked up again every `resolve_interval`, each of its A/AAAA records is a server, and a
//! changed set swaps in a new table the way a reload does (open tunnels keep theirs). A
//! failed lookup keeps the last good addresses. Lookups go to the main config's `resolver`
//! when it is set, else to the system resolver.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use hickory_resolver::Resolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::time::Instant;
use tracing::{info, warn};

use super::UpstreamTable;
use super::addr::UpstreamAddr;

/// nginx plus re-resolves by the record's TTL; a fixed interval is simpler to reason about,
/// and 30 s is HAProxy's `hold valid` order of magnitude.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);
/// One try at the `resolver`; two tries per lookup.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest sleep between looks at the table, so a reload's new interval is soon used.
const MAX_TICK: Duration = Duration::from_secs(1);
/// The longest one name's lookup may take, through either resolver.
const LOOKUP_LIMIT: Duration = Duration::from_secs(10);

/// A server entry written as `HOST:PORT` with a host name (not an IP literal).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostName {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Looks `name` up from a thread that is not inside a tokio runtime or may be (start-up,
/// reload, SIGHUP): every address, sorted, at least one.
pub fn lookup_blocking(
    name: &HostName,
    resolver: Option<SocketAddr>,
) -> io::Result<Vec<UpstreamAddr>> {
    let Some(server) = resolver else {
        let found = (name.host.as_str(), name.port).to_socket_addrs()?;
        return finish(found.collect());
    };
    // A runtime of its own on a thread of its own: the caller may be running one already.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
                    .block_on(lookup(name, Some(server)))
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the lookup thread panicked")))
    })
}

/// Looks `name` up: every address, sorted, at least one.
pub async fn lookup(
    name: &HostName,
    resolver: Option<SocketAddr>,
) -> io::Result<Vec<UpstreamAddr>> {
    let Some(server) = resolver else {
        let found = tokio::net::lookup_host((name.host.as_str(), name.port)).await?;
        return finish(found.collect());
    };
    let mut at = NameServerConfig::udp_and_tcp(server.ip());
    for connection in &mut at.connections {
        connection.port = server.port();
    }
    let mut builder = Resolver::builder_with_config(
        ResolverConfig::from_name_servers(vec![at]),
        TokioRuntimeProvider::default(),
    );
    let options = builder.options_mut();
    options.timeout = DNS_TIMEOUT;
    options.attempts = 2;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // A resolver per lookup: no cache, so `resolve_interval` alone says how fresh names are.
    let resolver = builder.build().map_err(io::Error::other)?;
    let found = resolver
        .lookup_ip(name.host.as_str())
        .await
        .map_err(io::Error::other)?;
    finish(
        found
            .iter()
            .map(|ip| SocketAddr::new(ip, name.port))
            .collect(),
    )
}

fn finish(mut found: Vec<SocketAddr>) -> io::Result<Vec<UpstreamAddr>> {
    found.sort();
    found.dedup();
    if found.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no A or AAAA record",
        ));
    }
    Ok(found.into_iter().map(UpstreamAddr::Tcp).collect())
}

/// Looks the host names of every group with a `resolve_interval` up again on that interval,
/// and swaps in a table with the new addresses when they changed.
pub async fn run<T>(tables: Arc<T>, resolver: Option<SocketAddr>)
where
    T: std::ops::Deref<Target = ArcSwap<UpstreamTable>>,
{
    // Per group: when its names are looked up next, and the interval that deadline was set
    // with (a reload that shortens it brings the next lookup forward).
    let mut due: HashMap<String, (Instant, Duration)> = HashMap::new();
    let mut failing: HashSet<(String, HostName)> = HashSet::new();
    loop {
        let table = tables.load_full();
        let now = Instant::now();
        let mut next = now + MAX_TICK;
        due.retain(|group, _| table.group(group).is_some());
        for group in table.groups() {
            let Some(interval) = group.resolve_interval else {
                continue;
            };
            if group.entries().iter().all(|e| e.name.is_none()) {
                continue;
            }
            let slot = due
                .entry(group.name.clone())
                .or_insert((now + interval, interval));
            if slot.1 != interval {
                *slot = (slot.0.min(now + interval), interval);
            }
            let at = slot.0;
            if at > now {
                next = next.min(at);
                continue;
            }
            due.insert(group.name.clone(), (now + interval, interval));
            next = next.min(now + interval);
            refresh(&tables, &group.name, resolver, &mut failing).await;
        }
        tokio::time::sleep_until(next).await;
    }
}

/// Looks up group `group`'s host names once and swaps in a table if any moved.
async fn refresh(
    tables: &ArcSwap<UpstreamTable>,
    group: &str,
    resolver: Option<SocketAddr>,
    failing: &mut HashSet<(String, HostName)>,
) {
    let base = tables.load_full();
    let names: Vec<(HostName, Vec<UpstreamAddr>)> = match base.group(group) {
        Some(g) => g
            .entries()
            .iter()
            .filter_map(|e| Some((e.name.clone()?, e.addrs.clone())))
            .collect(),
        None => return,
    };
    let mut found = Vec::with_capacity(names.len());
    for (name, last) in names {
        let key = (group.to_string(), name.clone());
        // Bounded whatever the resolver: one stuck name must not stall every group.
        let looked = tokio::time::timeout(LOOKUP_LIMIT, lookup(&name, resolver)).await;
        let looked = looked.unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no answer within {}",
                    humantime::format_duration(LOOKUP_LIMIT)
                ),
            ))
        });
        match looked {
            Ok(addrs) => {
                if failing.remove(&key) {
                    info!("upstream {group}: {name} resolves again");
                }
                found.push((name, addrs));
            }
            Err(e) => {
                if failing.insert(key) {
                    warn!(
                        "upstream {group}: cannot look up {name} ({e}); keeping its last good addresses [{}]",
                        list(&last)
                    );
                }
            }
        }
    }
    swap_addresses(tables, base, group, &found);
}

/// Swaps in the current table with group `group`'s names standing for `found`, if that
/// moves any. A reload may swap its table in while the names were looked up: the answers
/// are then applied to its table, as recent as its own lookups, not dropped. Returns what
/// moved, empty when nothing did.
pub fn swap_addresses(
    tables: &ArcSwap<UpstreamTable>,
    base: Arc<UpstreamTable>,
    group: &str,
    found: &[(HostName, Vec<UpstreamAddr>)],
) -> Vec<String> {
    let mut current = base;
    loop {
        let Some((mut new, changes)) = current.with_addresses(group, found) else {
            return Vec::new();
        };
        new.inherit(&current);
        let before = tables.compare_and_swap(&current, Arc::new(new));
        if Arc::ptr_eq(&before, &current) {
            info!("upstream {group}: {}", changes.join("; "));
            return changes;
        }
        current = Guard::into_inner(before);
    }
}

/// "127.0.0.2:3000, 127.0.0.3:3000".
pub fn list(addrs: &[UpstreamAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
