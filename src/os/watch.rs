//! Watching the files wsplice reads at run time (the upstream file, certificates and keys):
//! inotify on their directories, where events on any other file are ignored, and a call when
//! one of them may have new, complete content: an in-place write (on close), an atomic
//! rename over it, or a Kubernetes-style `..data` symlink swap. What to do then is the
//! caller's: each reader keeps the old content when the new one is refused.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{RecursiveMode, Watcher};
use tracing::{debug, warn};

/// Quiet time after an event on the file before reading, so one save is one reload.
const SETTLE: Duration = Duration::from_millis(50);
/// The longest wait for quiet after the first event, so a file that keeps changing is still
/// read.
const MAX_SETTLE: Duration = Duration::from_secs(1);
/// How often the file is compared when inotify is unavailable, and how often the watched
/// directories are checked against the symlink chain.
const POLL: Duration = Duration::from_secs(1);
/// The name a Kubernetes ConfigMap volume re-points, with one rename, to publish new files.
const K8S_DATA: &str = "..data";

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// An operator's SIGHUP: always reloads and always logs.
    Signal,
    /// A file event or poll: silent when the content did not change (the upstream file is
    /// read again anyway when it was refused only for a host name that did not resolve).
    Watch,
}

/// Starts the thread that calls `on_change` when the file at `path` may have new content:
/// an in-place write (on close), an atomic rename over it, or a Kubernetes-style `..data`
/// symlink swap.
pub fn watch(path: PathBuf, on_change: impl Fn() + Send + 'static) -> io::Result<()> {
    watch_files(vec![path], "wsplice-reload", on_change)
}

/// [`watch`] for several files at once (a certificate and its key, ...): one call to
/// `on_change` per burst of changes to any of them, so a pair renewed file by file within
/// the settle time is read once. `thread` names the watching thread.
pub fn watch_files(
    paths: Vec<PathBuf>,
    thread: &str,
    on_change: impl Fn() + Send + 'static,
) -> io::Result<()> {
    let (tx, rx) = channel();
    let watcher = notify::recommended_watcher(move |event| {
        let _ = tx.send(event);
    });
    // Watches are in place before this returns, so no change after start-up is missed.
    let mut watched = Watched::default();
    let watcher = watcher.map(|mut w| {
        watched.update(&mut w, &paths);
        w
    });
    std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || match watcher {
            Ok(watcher) => watch_loop(&paths, watcher, watched, &rx, on_change),
            Err(e) => {
                warn!(
                    "cannot watch {} ({e}); checking every {}s instead",
                    names(&paths),
                    POLL.as_secs()
                );
                loop {
                    std::thread::park_timeout(POLL);
                    on_change();
                }
            }
        })?;
    Ok(())
}

type Events = Receiver<notify::Result<notify::Event>>;

fn names(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn watch_loop(
    paths: &[PathBuf],
    mut watcher: impl Watcher,
    mut watched: Watched,
    rx: &Events,
    on_change: impl Fn(),
) {
    let mut checked = Instant::now();
    loop {
        // A directory of a symlink chain may have been replaced without an event here.
        if checked.elapsed() >= POLL {
            watched.update(&mut watcher, paths);
            checked = Instant::now();
        }
        match rx.recv_timeout(POLL) {
            Ok(Ok(event)) if concerns(&event, &watched.files) => {
                debug!("watched file event: {event:?}");
                let files = &watched.files;
                let more = |e: &notify::Result<notify::Event>| {
                    e.as_ref().is_ok_and(|e| concerns(e, files))
                };
                if !settle(rx, more, SETTLE, MAX_SETTLE) {
                    return;
                }
                on_change();
                watched.update(&mut watcher, paths);
                checked = Instant::now();
            }
            Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Err(e)) => warn!("watching {}: {e}", names(paths)),
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Waits until `quiet` passes without another message that `counts`, but no longer than
/// `max` in all: the rest of a save (rename + chmod, several writes) arrives first, while
/// other files' events cannot hold the reload back and the file's own cannot forever.
/// False when the sender is gone.
fn settle<T>(
    rx: &Receiver<T>,
    counts: impl Fn(&T) -> bool,
    quiet: Duration,
    max: Duration,
) -> bool {
    let start = Instant::now();
    let mut last = start;
    loop {
        let until = (last + quiet).min(start + max);
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        match rx.recv_timeout(left) {
            Ok(message) if counts(&message) => last = Instant::now(),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => return true,
            Err(RecvTimeoutError::Disconnected) => return false,
        }
    }
}

/// Whether `event` can mean a watched file (one of `files`, as the watcher names them)
/// has new, complete content: a writer closed it, something was renamed onto it, a symlink
/// was created as it, or inotify dropped events. Plain writes are left out: an in-place
/// write is read when the writer closes the file, never half-way through.
fn concerns(event: &notify::Event, files: &[PathBuf]) -> bool {
    if event.need_rescan() {
        return true;
    }
    let ours = |p: &&PathBuf| files.contains(p);
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
            event.paths.first().filter(ours).is_some()
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)) => {
            event.paths.last().filter(ours).is_some()
        }
        // A new regular file is read when its writer closes it.
        EventKind::Create(_) => event
            .paths
            .first()
            .filter(ours)
            .is_some_and(|p| p.symlink_metadata().is_ok_and(|m| m.is_symlink())),
        _ => false,
    }
}

/// The directories being watched, and the names in them that are the watched files.
#[derive(Debug, Default)]
struct Watched {
    dirs: Vec<PathBuf>,
    files: Vec<PathBuf>,
}

impl Watched {
    /// Watches the directory holding each configured path and, when it is a symlink (chain),
    /// the directory holding the file it resolves to, so writes through the link are seen
    /// too. A file is its own name, `..data` beside it, and the name it resolves to.
    fn update(&mut self, watcher: &mut impl Watcher, paths: &[PathBuf]) {
        let parent = |p: &Path| {
            p.parent().map(|d| {
                if d.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    d.to_path_buf()
                }
            })
        };
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut files: Vec<PathBuf> = Vec::new();
        let add = |list: &mut Vec<PathBuf>, p: PathBuf| {
            if !list.contains(&p) {
                list.push(p);
            }
        };
        for path in paths {
            if let (Some(dir), Some(name)) = (parent(path), path.file_name()) {
                add(&mut files, dir.join(name));
                add(&mut files, dir.join(K8S_DATA));
                add(&mut dirs, dir);
            }
            if let Ok(target) = std::fs::canonicalize(path)
                && let (Some(dir), Some(name)) = (parent(&target), target.file_name())
            {
                match dirs.iter().find(|d| same_dir(d, &dir)) {
                    Some(known) => add(&mut files, known.join(name)),
                    None => {
                        add(&mut files, dir.join(name));
                        add(&mut dirs, dir);
                    }
                }
            }
        }
        for old in &self.dirs {
            if !dirs.contains(old) {
                let _ = watcher.unwatch(old);
            }
        }
        for dir in &dirs {
            if !self.dirs.contains(dir)
                && let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive)
            {
                warn!("cannot watch {}: {e}", dir.display());
            }
        }
        self.dirs = dirs;
        self.files = files;
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    std::fs::canonicalize(a).is_ok_and(|a| a == b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange};

    fn event(kind: EventKind, paths: &[&str]) -> notify::Event {
        paths.iter().fold(notify::Event::new(kind), |e, p| {
            e.add_path(PathBuf::from(p))
        })
    }

    const FILES: [&str; 2] = ["/etc/w/upstreams.toml", "/etc/w/..data"];

    fn ours(kind: EventKind, paths: &[&str]) -> bool {
        let files: Vec<PathBuf> = FILES.iter().map(PathBuf::from).collect();
        concerns(&event(kind, paths), &files)
    }

    const CLOSE_WRITE: EventKind = EventKind::Access(AccessKind::Close(AccessMode::Write));
    const WRITE: EventKind = EventKind::Modify(ModifyKind::Data(DataChange::Any));

    #[test]
    fn only_the_files_own_complete_changes_count() {
        assert!(ours(CLOSE_WRITE, &["/etc/w/upstreams.toml"]));
        assert!(!ours(CLOSE_WRITE, &["/etc/w/access.log"]));
        assert!(!ours(WRITE, &["/etc/w/upstreams.toml"]));
        let to = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        assert!(ours(to, &["/etc/w/upstreams.toml"]));
        assert!(ours(to, &["/etc/w/..data"]));
        assert!(!ours(to, &["/etc/w/.upstreams.toml.swp"]));
        let both = EventKind::Modify(ModifyKind::Name(RenameMode::Both));
        assert!(ours(both, &["/etc/w/.tmp", "/etc/w/upstreams.toml"]));
        assert!(!ours(
            both,
            &["/etc/w/upstreams.toml", "/etc/w/upstreams.toml.bak"]
        ));
        let from = EventKind::Modify(ModifyKind::Name(RenameMode::From));
        assert!(!ours(from, &["/etc/w/upstreams.toml"]));
        let removed = EventKind::Remove(notify::event::RemoveKind::File);
        assert!(!ours(removed, &["/etc/w/upstreams.toml"]));
        let rescan = notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert!(concerns(&rescan, &[]));
    }

    #[test]
    fn a_new_regular_file_waits_for_its_close_but_a_new_symlink_counts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("upstreams.toml");
        let link = dir.path().join(K8S_DATA);
        std::fs::write(&file, "").unwrap();
        std::os::unix::fs::symlink("upstreams.toml", &link).unwrap();
        let files = vec![file.clone(), link.clone()];
        let created = |p: &Path| event(EventKind::Create(CreateKind::File), &[p.to_str().unwrap()]);
        assert!(!concerns(&created(&file), &files));
        assert!(concerns(&created(&link), &files));
    }

    /// Sends `message` about every millisecond for `limit` (or until the receiver is gone),
    /// and returns once the first one is sent.
    #[allow(clippy::disallowed_methods)] // a plain test thread, no runtime to block
    fn send_for(message: bool, limit: Duration) -> Receiver<bool> {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let start = Instant::now();
            while start.elapsed() < limit && tx.send(message).is_ok() {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        assert_eq!(rx.recv(), Ok(message));
        rx
    }

    #[test]
    fn other_files_events_do_not_delay_a_reload() {
        let rx = send_for(false, Duration::from_secs(3));
        let start = Instant::now();
        assert!(settle(&rx, |&own| own, SETTLE, Duration::from_secs(10)));
        let waited = start.elapsed();
        assert!(waited < Duration::from_millis(1500), "waited {waited:?}");
    }

    #[test]
    fn a_file_that_keeps_changing_is_read_after_the_cap() {
        let rx = send_for(true, Duration::from_secs(5));
        let start = Instant::now();
        assert!(settle(&rx, |&own| own, SETTLE, Duration::from_millis(300)));
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
            "waited {waited:?}"
        );
    }

    #[test]
    fn symlinked_file_names_its_target_and_data_link() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("..gen_1");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("upstreams.toml"), "").unwrap();
        std::os::unix::fs::symlink("..gen_1", dir.path().join(K8S_DATA)).unwrap();
        let path = dir.path().join("upstreams.toml");
        std::os::unix::fs::symlink("..data/upstreams.toml", &path).unwrap();
        let mut watcher = notify::recommended_watcher(|_| {}).unwrap();
        let mut watched = Watched::default();
        watched.update(&mut watcher, std::slice::from_ref(&path));
        let canonical = std::fs::canonicalize(&real).unwrap();
        assert_eq!(watched.dirs, [dir.path().to_path_buf(), canonical.clone()]);
        assert_eq!(
            watched.files,
            [
                path.clone(),
                dir.path().join(K8S_DATA),
                canonical.join("upstreams.toml")
            ]
        );
    }

    #[test]
    fn several_files_share_their_directories() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let paths = [
            dir.path().join("a.pem"),
            dir.path().join("a.key"),
            other.path().join("b.pem"),
        ];
        let mut watcher = notify::recommended_watcher(|_| {}).unwrap();
        let mut watched = Watched::default();
        watched.update(&mut watcher, &paths);
        assert_eq!(watched.dirs, [dir.path(), other.path()]);
        assert_eq!(
            watched.files,
            [
                paths[0].clone(),
                dir.path().join(K8S_DATA),
                paths[1].clone(),
                paths[2].clone(),
                other.path().join(K8S_DATA),
            ]
        );
    }
}
