//! Start-up and stop: check the open-files budget, bind every worker's listeners (or take
//! them over from the running process, see `handoff`), start the workers, then wait for
//! signals (SIGHUP reloads the upstream file and the certificates; SIGUSR2 starts a new
//! process that takes over; SIGTERM/SIGINT stop).

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::config::{Config, read_file};
use crate::observe::access_log::AccessLog;
use crate::observe::admin;
use crate::observe::metrics::Metrics;
use crate::os::{cpus, fdlimit, notify};
use crate::proxy::Shared;
use crate::proxy::limits::ClientLimits;
use crate::tls::Tls;
use crate::upstream::UpstreamTable;
use crate::upstream::reload::{self, ReloadStats, Trigger};

mod fault;
mod handoff;
mod listener;
mod worker;

/// Why wsplice could not start (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "limits.max_connections = {max_connections} needs about {needed} open files (2 per connection + {reserve} for listeners, rings and spares), but the open-files limit is {limit}; lower limits.max_connections to at most {fits} or raise the limit (ulimit -n, systemd LimitNOFILE)"
    )]
    FdLimit {
        max_connections: usize,
        needed: u64,
        reserve: u64,
        limit: u64,
        fits: u64,
    },
    #[error("cannot read or raise the open-files limit: {0}")]
    Rlimit(io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("{0}")]
    Worker(String),
    #[error("cannot set up signal handling: {0}")]
    Signals(io::Error),
    #[error("cannot start the upstream file or certificate watcher: {0}")]
    Watcher(io::Error),
    #[error("cannot open the access log: {0}")]
    AccessLog(io::Error),
    #[error("cannot start the upstream health check and name lookup thread: {0}")]
    Background(io::Error),
    #[error("{0}")]
    Takeover(String),
    #[error("cannot serve the handoff socket {path}: {source}")]
    Handoff { path: PathBuf, source: io::Error },
}

/// The shared upstream table, as the health checker and name lookups see it.
struct TableOf(Arc<Shared>);

impl std::ops::Deref for TableOf {
    type Target = ArcSwap<crate::upstream::UpstreamTable>;

    fn deref(&self) -> &Self::Target {
        &self.0.table
    }
}

/// Runs wsplice until SIGTERM or SIGINT, or until a new process took over. `takeover`:
/// take the listeners and tunnels of the process serving `config.handoff` first.
pub fn run(
    config: Config,
    table: UpstreamTable,
    tls: Option<Tls>,
    takeover: bool,
) -> Result<(), StartError> {
    exit_on_panic();
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(StartError::Signals)?;

    let cpus = cpus::allowed();
    let workers = if config.workers == 0 {
        cpus.len()
    } else {
        config.workers
    };
    let limit = fdlimit::raise().map_err(StartError::Rlimit)?;
    let needed = fdlimit::needed(config.limits.max_connections, workers, config.listen.len());
    if needed > limit {
        let fixed = fdlimit::fixed(workers, config.listen.len());
        return Err(StartError::FdLimit {
            max_connections: config.limits.max_connections,
            needed,
            reserve: fixed,
            limit,
            fits: limit.saturating_sub(fixed) / 2,
        });
    }

    let (listeners, took) = listen(&config, workers, takeover)?;
    let bound: Vec<SocketAddr> = listeners[0].iter().map(|(_, l)| l.addr).collect();
    // Duplicates of every listening socket, kept here so a stop can close them all, or a
    // handoff give them all away.
    let stop_handles = listeners
        .iter()
        .flatten()
        .map(|(l, entry)| {
            let source = |source| StartError::Bind {
                addr: entry.addr,
                source,
            };
            l.try_clone().map(|l| (entry.addr, l)).map_err(source)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let to_hand_over = || -> Vec<(SocketAddr, TcpListener)> {
        let dup = |(addr, l): &(SocketAddr, TcpListener)| Some((*addr, l.try_clone().ok()?));
        stop_handles.iter().filter_map(dup).collect()
    };

    let config_upstreams = config.upstreams_path.clone();
    let config_limits = config.limits.clone();
    let access_log = AccessLog::open(&config.access_log).map_err(StartError::AccessLog)?;
    let shared = Arc::new(Shared {
        config,
        table: ArcSwap::from_pointee(table),
        active: AtomicUsize::new(0),
        stopping: AtomicBool::new(false),
        stop: tokio::sync::Notify::new(),
        handoff: Default::default(),
        serving: AtomicBool::new(false),
        go: tokio::sync::Notify::new(),
        reloads: ReloadStats::started(read_file(&config_upstreams).ok()),
        metrics: Metrics::new(workers),
        access_log,
        pipes_per_worker: fdlimit::pipes_per_worker(limit - needed, workers),
        client_limits: ClientLimits::new(&config_limits),
        tls,
    });
    if let Some(tls) = &shared.tls {
        for warning in tls.warnings() {
            warn!("{warning}");
        }
        if !shared.config.listen.iter().any(|l| l.tls) {
            warn!("the [tls] section is not used: no listen entry has tls = true");
        }
    }

    signals.block_on(async {
        let mut hup = signal(SignalKind::hangup()).map_err(StartError::Signals)?;
        let mut term = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
        let mut usr2 = signal(SignalKind::user_defined2()).map_err(StartError::Signals)?;

        // Watching starts before serving, so no change after "listening" is missed.
        let watched = shared.clone();
        reload::watch(shared.config.upstreams_path.clone(), move || {
            let s = &watched;
            reload::reload(&s.config, &s.table, &s.reloads, Trigger::Watch);
        })
        .map_err(StartError::Watcher)?;
        if let Some(tls) = &shared.tls {
            let watched = shared.clone();
            crate::os::watch::watch_files(tls.files(), "wsplice-certs", move || {
                if let Some(tls) = &watched.tls {
                    tls.reload(Trigger::Watch);
                }
            })
            .map_err(StartError::Watcher)?;
            info!("certificates: {}", tls.summary());
        }
        crate::upstream::spawn_background(TableOf(shared.clone()), shared.config.resolver)
            .map_err(StartError::Background)?;
        // Before the workers: what may still fail must fail before a takeover's workers
        // accept on the sockets handed over.
        let mut admin = None;
        if let Some(addr) = shared.config.admin {
            let serving = admin::spawn(addr, shared.clone())
                .map_err(|source| StartError::Bind { addr, source })?;
            info!("admin endpoint on http://{} (/metrics, /healthz)", serving.addr);
            admin = Some(serving);
        }
        // Tunnels leave through `outgoing` when this process hands over; those that came
        // from the process this one replaces arrive through `incoming`, one per worker.
        let (outgoing, leaving) = mpsc::channel();
        let with_handoff = shared.config.handoff.is_some();
        let mut incoming = Vec::new();
        let handoffs = (0..workers)
            .map(|_| {
                let adopt = took.as_ref().map(|_| {
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                    incoming.push(tx);
                    rx
                });
                worker::Handoff {
                    out: with_handoff.then(|| outgoing.clone()),
                    adopt,
                }
            })
            .collect();
        drop(outgoing);
        start_workers(&shared, listeners, &cpus, handoffs)?;
        let (finished, mut handed) = tokio::sync::oneshot::channel();
        // The takeover thread tells the old process that this one serves only once nothing
        // here can fail any more and systemd knows this one as the main process.
        let (go, serving) = mpsc::channel::<()>();
        if let Some(path) = shared.config.handoff.clone() {
            let (s, sockets) = (shared.clone(), to_hand_over());
            match took {
                None => handoff::serve(&path, s, sockets, leaving, finished)
                    .map_err(|source| StartError::Handoff { path, source })?,
                Some(from) => {
                    // The old process hands its tunnels over once this one serves; then
                    // this one answers the next upgrade.
                    let spawned = std::thread::Builder::new()
                        .name("wsplice-takeover".into())
                        .spawn(move || {
                            if serving.recv().is_err() {
                                return;
                            }
                            let (pid, came) = (from.pid, from.receive(&incoming));
                            info!("handoff: took over from pid {pid}: {came} tunnels");
                            if let Err(e) = handoff::serve(&path, s, sockets, leaving, finished) {
                                error!("cannot serve the handoff socket {}: {e}; the next upgrade must restart", path.display());
                            }
                        });
                    spawned.map_err(StartError::Background)?;
                }
            }
        }
        notify::ready(&bound, takeover);
        let _ = go.send(());
        shared.start_serving();
        for addr in &bound {
            info!("listening on {addr} with {workers} workers");
        }
        info!("upstreams: {}", reload::summarize(&shared.table.load()));

        // What ended serving: a stop signal's name, or "handoff".
        let why = loop {
            tokio::select! {
                _ = hup.recv() => {
                    info!("SIGHUP: reloading {}", shared.config.upstreams_path.display());
                    // On a thread of its own: looking host names up may take seconds (a
                    // DNS outage), and a SIGTERM meanwhile must still stop at once. Reloads
                    // run one at a time (the reload lock).
                    let s = shared.clone();
                    let spawned = std::thread::Builder::new()
                        .name("wsplice-reload".into())
                        .spawn(move || {
                            reload::reload(&s.config, &s.table, &s.reloads, Trigger::Signal);
                            if let Some(tls) = &s.tls {
                                tls.reload(Trigger::Signal);
                            }
                        });
                    if let Err(e) = spawned {
                        warn!("SIGHUP: cannot start the reload thread: {e}");
                    }
                }
                _ = usr2.recv() => upgrade(&shared.config),
                _ = term.recv() => break "SIGTERM",
                _ = int.recv() => break "SIGINT",
                Ok(to) = &mut handed => {
                    // The listeners are the new process's now, open: nothing to close.
                    let open = shared.active.load(Ordering::SeqCst);
                    info!(
                        "handoff: handed over {} tunnels to pid {}; {open} wss tunnels drain here",
                        to.tunnels, to.pid
                    );
                    if let Some(admin) = &admin {
                        admin.close();
                    }
                    break "handoff";
                }
            }
        };

        // Listening sockets a new process took (or may be taking) are not shut down: that
        // would shut them for it too. The workers cancel their accepts instead.
        let given = &shared.handoff.listeners_given;
        let handed_over = why == "handoff";
        if !handed_over {
            shared.stopping.store(true, Ordering::SeqCst);
            shared.stop.notify_waiters();
            if !given.load(Ordering::SeqCst) {
                warn_if_queued_connections_would_be_reset();
                for (_, listener) in &stop_handles {
                    // Stops accepting on every worker: their pending accepts complete with
                    // an error.
                    let _ = socket2::SockRef::from(listener).shutdown(Shutdown::Read);
                }
            }
        }
        let open = shared.active.load(Ordering::SeqCst);
        let drain = shared.config.timeouts.drain;
        info!(
            "{why}: stopped accepting; draining {open} open connections for up to {}",
            drain.map_or("ever".to_string(), |d| humantime::format_duration(d)
                .to_string())
        );
        let drained = async {
            while shared.active.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let deadline = async {
            match drain {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let how = tokio::select! {
            _ = drained => "drained",
            _ = deadline => "drain time over",
            _ = term.recv() => "second signal",
            _ = int.recv() => "second signal",
        };
        if handed_over {
            // Handed over: the socket file is the new process's now.
        } else if given.load(Ordering::SeqCst) {
            // Stopped during a handoff: the last tunnels may still be on their way.
            let _ = tokio::time::timeout(Duration::from_secs(10), &mut handed).await;
        } else if let Some(path) = &shared.config.handoff {
            // Nobody is left to answer on it (once given away, it is the new process's).
            let _ = std::fs::remove_file(path);
        }
        let cut = shared.active.load(Ordering::SeqCst);
        info!(
            "stopped ({how}): {} connections drained, {cut} cut",
            open.saturating_sub(cut)
        );
        Ok(())
    })
}

/// Every worker's listeners: bound here, or with `takeover` taken from the process serving
/// the config's `handoff` socket (with what else it hands over once this one serves).
fn listen(
    config: &Config,
    workers: usize,
    takeover: bool,
) -> Result<(Vec<listener::WorkerListeners>, Option<handoff::Takeover>), StartError> {
    let bind_error = |(addr, source)| StartError::Bind { addr, source };
    if !takeover {
        let listeners = listener::bind_all(&config.listen, workers).map_err(bind_error)?;
        return Ok((listeners, None));
    }
    let Some(path) = &config.handoff else {
        return Err(StartError::Takeover(
            "--takeover needs `handoff` in the config: the socket on which the running wsplice hands over".into(),
        ));
    };
    let mut from = handoff::take_over(path).map_err(|why| {
        StartError::Takeover(format!("cannot take over from the running wsplice: {why}"))
    })?;
    let taken = std::mem::take(&mut from.listeners);
    let (listeners, dropped) =
        listener::adopt_all(&config.listen, workers, taken).map_err(bind_error)?;
    for addr in dropped {
        warn!(
            "handoff: {addr} is no longer in the config; it closes when pid {} exits",
            from.pid
        );
    }
    Ok((listeners, Some(from)))
}

/// A panic on any thread (a worker, its tunnel loop, the reload or admin thread) ends the
/// process: a worker that lost its tunnel loop would go on accepting connections that nobody
/// relays. Release builds abort on panic anyway (Cargo.toml); this makes every build do it,
/// with a log line saying so.
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        tracing::error!(
            "a wsplice thread panicked; aborting so that the service manager restarts it"
        );
        std::process::abort();
    }));
}

fn start_workers(
    shared: &Arc<Shared>,
    listeners: Vec<listener::WorkerListeners>,
    cpus: &[usize],
    handoffs: Vec<worker::Handoff>,
) -> Result<(), StartError> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let workers = listeners.len();
    for (id, (own, handoff)) in listeners.into_iter().zip(handoffs).enumerate() {
        let cpu = cpus.get(id % cpus.len()).copied();
        worker::spawn(id, cpu, shared.clone(), own, handoff, ready_tx.clone())
            .map_err(|e| StartError::Worker(format!("cannot start worker thread {id}: {e}")))?;
    }
    drop(ready_tx);
    for _ in 0..workers {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(why)) => return Err(StartError::Worker(why)),
            Err(_) => {
                return Err(StartError::Worker("a worker exited during start-up".into()));
            }
        }
    }
    Ok(())
}

/// SIGUSR2: starts this binary again with `--takeover`, to take this process's place. A
/// binary replaced on disk (a package upgrade) is started from its path, the new file.
fn upgrade(config: &Config) {
    if config.handoff.is_none() {
        warn!(
            "SIGUSR2: no `handoff` socket in the config, so no upgrade in place; restart instead"
        );
        return;
    }
    if std::process::id() == 1 {
        // Its successor would be its child, killed with the namespace when it exits.
        warn!(
            "SIGUSR2: this process is PID 1 (a container's init): its exit would end the container and its successor; restart the container instead"
        );
        return;
    }
    let exe = match std::fs::read_link("/proc/self/exe") {
        Ok(exe) => {
            let text = exe.to_string_lossy();
            match text.strip_suffix(" (deleted)") {
                Some(path) => PathBuf::from(path),
                None => exe,
            }
        }
        Err(e) => {
            warn!("SIGUSR2: cannot tell which binary runs: {e}");
            return;
        }
    };
    let config_path = std::path::absolute(&config.path).unwrap_or_else(|_| config.path.clone());
    let mut command = std::process::Command::new(&exe);
    command
        .arg("--config")
        .arg(&config_path)
        .arg("--takeover")
        .stdin(std::process::Stdio::null());
    // The successor is started as a grandchild whose parent exits at once, so that it is
    // the service manager's child (not this process's) when it names itself the main
    // process: systemd treats a main process that is not its child as one it cannot wait
    // for, and would kill it outright at the next stop instead of letting it drain.
    // SAFETY: between fork and exec only async-signal-safe calls (fork, _exit) are made.
    #[allow(unsafe_code)]
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| match libc::fork() {
            -1 => Err(io::Error::last_os_error()),
            0 => Ok(()),
            _ => libc::_exit(0),
        });
    }
    // `spawn` returns once the grandchild has executed the binary (or failed to).
    match command.spawn().and_then(|mut middle| middle.wait()) {
        Ok(_) => info!(
            "SIGUSR2: started {} --config {} --takeover",
            exe.display(),
            config_path.display()
        ),
        Err(e) => warn!(
            "SIGUSR2: cannot start {}: {e}; this process serves on",
            exe.display()
        ),
    }
}

/// Closing a listener resets the connections still queued on it, unless the kernel may move
/// them to another listener of the same SO_REUSEPORT group (a second wsplice taking over).
fn warn_if_queued_connections_would_be_reset() {
    const SYSCTL: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
    #[allow(clippy::disallowed_methods)] // the main thread, once, at stop
    let migrate = std::fs::read_to_string(SYSCTL);
    if migrate.is_ok_and(|v| v.trim() == "0") {
        warn!(
            "net.ipv4.tcp_migrate_req is 0: connections queued on this process's listeners but not yet accepted are reset now; set it to 1 for a zero-drop handoff to a second wsplice"
        );
    }
}
