//! Upstream hot swap: watch the upstream file's directories (inotify) and take SIGHUP, then
//! read, validate against the routes, and swap the table whole. A file that fails keeps the
//! old table in place; connections already open are never touched either way.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use tracing::{error, info, warn};

use super::UpstreamTable;
use crate::config::read_file;
use crate::proxy::Shared;

/// Quiet time after a file event before reading, so one save is one reload.
const SETTLE: Duration = Duration::from_millis(50);
/// How often the file is compared when inotify is unavailable.
const POLL: Duration = Duration::from_secs(1);

/// Reload outcomes, read by the metrics endpoint and tests.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    /// Version of the table in use: 1 at start-up, +1 per accepted reload.
    pub version: AtomicU64,
    /// Unix time (seconds) of the last accepted table, start-up included.
    pub last_success_unix: AtomicU64,
    /// The text last looked at; one reload at a time, and a no-op when nothing changed.
    last_text: Mutex<Option<String>>,
}

impl ReloadStats {
    /// Stats for the table loaded at start-up from `text`.
    pub fn started(text: Option<String>) -> Self {
        let stats = ReloadStats {
            last_text: Mutex::new(text),
            ..ReloadStats::default()
        };
        stats.version.store(1, Ordering::Relaxed);
        stats.last_success_unix.store(unix_now(), Ordering::Relaxed);
        stats
    }
}

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// An operator's SIGHUP: always reloads and always logs.
    Signal,
    /// A file event or poll: silent when the content did not change.
    Watch,
}

/// Reloads the upstream file into `shared`. Returns whether a new table was taken.
pub fn reload(shared: &Shared, trigger: Trigger) -> bool {
    let config = &shared.config;
    let path = &config.upstreams_path;
    let stats = &shared.reloads;
    let mut last = stats.last_text.lock().unwrap_or_else(|e| e.into_inner());
    let text = match read_file(path) {
        Ok(text) => text,
        Err(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            error!("upstream reload refused, keeping the current table: {e}");
            return false;
        }
    };
    if trigger == Trigger::Watch && last.as_deref() == Some(text.as_str()) {
        return false;
    }
    let outcome = UpstreamTable::parse(path, &text, config);
    *last = Some(text);
    match outcome {
        Ok(table) => {
            let old = shared.table.load();
            table.inherit_health(&old);
            let changes = describe_changes(&old, &table);
            shared.table.store(Arc::new(table));
            stats.succeeded.fetch_add(1, Ordering::Relaxed);
            let version = stats.version.fetch_add(1, Ordering::Relaxed) + 1;
            stats.last_success_unix.store(unix_now(), Ordering::Relaxed);
            info!(
                "upstreams reloaded from {} (table version {version}): {changes}",
                path.display()
            );
            true
        }
        Err(e) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            error!("upstream reload refused, keeping the current table: {e}");
            false
        }
    }
}

/// Starts the thread that reloads on changes to the upstream file: an in-place write (on
/// close), an atomic rename over it, or a Kubernetes-style `..data` symlink swap.
pub fn watch(shared: Arc<Shared>) -> std::io::Result<()> {
    let (tx, rx) = channel();
    let watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    });
    let path = shared.config.upstreams_path.clone();
    // Watches are in place before this returns, so no change after start-up is missed.
    let mut watched = Vec::new();
    let watcher = watcher.map(|mut w| {
        rewatch(&mut w, &mut watched, &path);
        w
    });
    std::thread::Builder::new()
        .name("wsplice-reload".into())
        .spawn(move || match watcher {
            Ok(watcher) => watch_loop(&shared, &path, watcher, watched, &rx),
            Err(e) => {
                warn!(
                    "cannot watch {} ({e}); checking it every {}s instead",
                    path.display(),
                    POLL.as_secs()
                );
                loop {
                    std::thread::park_timeout(POLL);
                    reload(&shared, Trigger::Watch);
                }
            }
        })?;
    Ok(())
}

type Events = Receiver<notify::Result<notify::Event>>;

fn watch_loop(
    shared: &Shared,
    path: &Path,
    mut watcher: impl Watcher,
    mut watched: Vec<PathBuf>,
    rx: &Events,
) {
    loop {
        match rx.recv_timeout(POLL) {
            Ok(Ok(event)) if is_replacement(&event.kind) => {
                tracing::debug!("upstream file event: {event:?}");
                // Let the rest of a save arrive (rename + chmod, several writes) first.
                while rx.recv_timeout(SETTLE).is_ok() {}
                reload(shared, Trigger::Watch);
                rewatch(&mut watcher, &mut watched, path);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!("watching {}: {e}", path.display()),
            Err(RecvTimeoutError::Timeout) => {
                // A directory of a symlink chain may have been replaced without an event here.
                rewatch(&mut watcher, &mut watched, path);
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Events that can mean new content is complete. Plain writes are left out: an in-place
/// write is picked up when the writer closes the file, not half-way through.
fn is_replacement(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Metadata(_)) => false,
        _ => true,
    }
}

/// Watches the directory holding the configured path and, when it is a symlink (chain), the
/// directory holding the file it resolves to, so writes through the link are seen too.
fn rewatch(watcher: &mut impl Watcher, watched: &mut Vec<PathBuf>, path: &Path) {
    let mut dirs = Vec::new();
    let parent = |p: &Path| {
        p.parent()
            .map(|d| {
                if d.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    d
                }
            })
            .map(Path::to_path_buf)
    };
    dirs.extend(parent(path));
    if let Some(target) = std::fs::canonicalize(path).ok().and_then(|p| parent(&p))
        && !dirs.iter().any(|d| same_dir(d, &target))
    {
        dirs.push(target);
    }
    for old in watched.iter() {
        if !dirs.contains(old) {
            let _ = watcher.unwatch(old);
        }
    }
    for dir in &dirs {
        if !watched.contains(dir)
            && let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive)
        {
            warn!("cannot watch {}: {e}", dir.display());
        }
    }
    *watched = dirs;
}

fn same_dir(a: &Path, b: &Path) -> bool {
    std::fs::canonicalize(a).is_ok_and(|a| a == b)
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
            format!("{}=[{}]", g.name, servers.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
