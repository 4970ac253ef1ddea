//! Upstream hot swap: watch the upstream file (`os::watch`) and take SIGHUP, then read,
//! validate against the routes, and swap the table whole. A file that fails keeps the old table in place; connections already
//! open are never touched either way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, Guard};
use tracing::{error, info};

use super::UpstreamTable;
use super::balancer::Policy;
use crate::config::{Config, read_file};
pub use crate::os::watch::{Trigger, watch};

/// Reload outcomes, read by the metrics endpoint and tests.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// Version of the table in use: 1 at start-up, +1 per accepted reload.
    pub version: AtomicU64,
    /// Unix time (seconds) of the last accepted table, start-up included.
    pub last_success_unix: AtomicU64,
    /// The last reload's input; the lock also makes reloads one at a time.
    last: Mutex<Last>,
}

#[derive(Debug, Default)]
struct Last {
    text: Option<String>,
    /// `text` was refused only because a host name did not resolve: read it again.
    unresolved: bool,
}

impl ReloadStats {
    /// Stats for the table loaded at start-up from `text`.
    pub fn started(text: Option<String>) -> Self {
        let stats = ReloadStats {
            last: Mutex::new(Last {
                text,
                unresolved: false,
            }),
            ..ReloadStats::default()
        };
        stats.version.store(1, Ordering::Relaxed);
        stats.last_success_unix.store(unix_now(), Ordering::Relaxed);
        stats
    }
}

/// Reloads `config`'s upstream file into `table`, counting in `stats`. Returns whether a new
/// table was taken.
pub fn reload(
    config: &Config,
    table: &ArcSwap<UpstreamTable>,
    stats: &ReloadStats,
    trigger: Trigger,
) -> bool {
    let path = &config.upstreams_path;
    let mut last = stats.last.lock().unwrap_or_else(|e| e.into_inner());
    // The table this reload starts from, before the file's names are looked up: a table
    // re-resolution swaps in from here on is one this reload must not undo.
    let base = table.load_full();
    let text = match read_file(path) {
        Ok(text) => text,
        Err(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            error!("upstream reload refused, keeping the current table: {e}");
            return false;
        }
    };
    if trigger == Trigger::Watch && !last.unresolved && last.text.as_deref() == Some(&text) {
        return false;
    }
    let outcome = UpstreamTable::parse_with_cause(path, &text, config);
    last.text = Some(text);
    last.unresolved = matches!(&outcome, Err(refused) if refused.unresolved);
    match outcome {
        Ok(parsed) => {
            let (old, new) = install(table, &base, parsed);
            let changes = describe_changes(&old, &new);
            stats.succeeded.fetch_add(1, Ordering::Relaxed);
            let version = stats.version.fetch_add(1, Ordering::Relaxed) + 1;
            stats.last_success_unix.store(unix_now(), Ordering::Relaxed);
            info!(
                "upstreams reloaded from {} (table version {version}): {changes}",
                path.display()
            );
            true
        }
        Err(refused) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            let retry = if refused.unresolved {
                "; the same file is read again on its next change or SIGHUP"
            } else {
                ""
            };
            error!(
                "upstream reload refused, keeping the current table: {}{retry}",
                refused.error
            );
            false
        }
    }
}

/// Swaps `parsed`, read while `base` was current, in over the current table, inheriting
/// from the table it replaces; returns that table and the new one. Re-resolution may swap
/// tables in meanwhile: the reload wins, and a name it moved keeps that answer (as recent as
/// the reload's own lookup), so the outcome is that of a reload started after it.
pub fn install(
    tables: &ArcSwap<UpstreamTable>,
    base: &Arc<UpstreamTable>,
    parsed: UpstreamTable,
) -> (Arc<UpstreamTable>, Arc<UpstreamTable>) {
    let mut current = tables.load_full();
    loop {
        // Built afresh each try: state inherited from a table that lost the race must not stay.
        let mut new = parsed.with_moves(base, &current);
        new.inherit(&current);
        let new = Arc::new(new);
        let before = tables.compare_and_swap(&current, new.clone());
        if Arc::ptr_eq(&before, &current) {
            return (current, new);
        }
        current = Guard::into_inner(before);
    }
}

/// "backend: +127.0.0.1:3002 -127.0.0.1:3000; chat: new group (1 server)".
pub fn describe_changes(old: &UpstreamTable, new: &UpstreamTable) -> String {
    let mut parts = Vec::new();
    for group in new.groups() {
        let Some(before) = old.group(&group.name) else {
            parts.push(format!(
                "{}: new group ({} servers)",
                group.name,
                group.servers().len()
            ));
            continue;
        };
        let mut diff = Vec::new();
        for (i, s) in group.servers().iter().enumerate() {
            match before.servers().iter().position(|b| b == s) {
                None => diff.push(format!("+{s}")),
                Some(j) if before.balancer.weight(j) != group.balancer.weight(i) => {
                    diff.push(format!(
                        "{s} weight {}->{}",
                        before.balancer.weight(j),
                        group.balancer.weight(i)
                    ))
                }
                Some(_) => {}
            }
        }
        for s in before.servers() {
            if !group.servers().contains(s) {
                diff.push(format!("-{s}"));
            }
        }
        let (was, is) = (before.balancer.policy(), group.balancer.policy());
        if was != is {
            diff.push(format!("{is} (was {was})"));
        }
        if before.check != group.check {
            let show = |c: &Option<super::health::HealthCheck>| {
                c.as_ref().map_or("no health_check".to_string(), |c| {
                    format!("health_check: {c}")
                })
            };
            diff.push(format!(
                "{} (was {})",
                show(&group.check),
                show(&before.check)
            ));
        }
        if !diff.is_empty() {
            parts.push(format!("{}: {}", group.name, diff.join(" ")));
        }
    }
    for group in old.groups() {
        if new.group(&group.name).is_none() {
            parts.push(format!("{}: group removed", group.name));
        }
    }
    if parts.is_empty() {
        "no server changes".into()
    } else {
        parts.join("; ")
    }
}

/// "backend=[127.0.0.1:3000, 127.0.0.1:3001 weight 3]; chat=[...]".
pub fn summarize(table: &UpstreamTable) -> String {
    table
        .groups()
        .iter()
        .map(|g| {
            let servers: Vec<String> = g
                .servers()
                .iter()
                .enumerate()
                .map(|(i, s)| match g.balancer.weight(i) {
                    1 => s.to_string(),
                    w => format!("{s} weight {w}"),
                })
                .collect();
            let policy = g.balancer.policy();
            let mut line = format!("{}=[{}]", g.name, servers.join(", "));
            if *policy != Policy::default() {
                line += &format!(" {policy}");
            }
            if let Some(check) = &g.check {
                line += &format!(" health_check: {check}");
            }
            line
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
