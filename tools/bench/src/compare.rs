//! The side-by-side comparison: the same upstream and client against no proxy ("direct", the
//! ceiling), nginx, HAProxy and wsplice, in one run. The client and upstream run on the load
//! CPUs, each proxy on the proxy CPUs; runs alternate between contenders cell by cell and
//! round by round; each proxy's CPU time (user and kernel apart) and memory come from /proc.
//! Its system calls are counted by `perf stat` in a second, shorter window after each cell's
//! first round (see [`syscalls`]), so the counting never slows the window that is reported.
//!
//! The TLS cells (wss-rr, wss-rr-many, tls-handshakes, wss-bulk, wss-idle) run after the
//! plain ones, against a second set of proxies started with a TLS listener only: the same
//! ECDSA P-256 certificate (made at start into the run's directory), TLS 1.3 only, and the
//! same cipher suite on all three (TLS_AES_128_GCM_SHA256, the only one the client offers,
//! with X25519 the only key exchange); the client never resumes a session. "direct" has no
//! TLS cells: the upstream speaks plain ws.

pub mod hog;
pub mod procfs;
pub mod proxies;
pub mod syscalls;
pub mod table;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::client::LoadError;
use crate::load::{Load, bulk, echo, handshake, idle};
use crate::report::{NoProbe, Probe, Report};
use crate::upstream::Upstream;
use crate::{sys, tls, ws};
use procfs::ProcTree;
use proxies::{Kind, Setup, Target};
use table::{Machine, Run, Summary};

/// Why a comparison could not run at all (a failing cell is recorded, not returned).
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("{0}")]
    Setup(String),
    #[error("{target} does not proxy a WebSocket echo: {why}")]
    Broken { target: &'static str, why: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What one comparison measures, and against what.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "compare",
    about = "Compare direct, nginx, HAProxy and wsplice side by side and print one table"
)]
pub struct Options {
    /// Contenders, in the first round's order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,nginx,haproxy,wsplice"
    )]
    pub targets: Vec<String>,
    /// Cells to run: rr, rr-many, rate, pipe, bulk, handshake, idle, fanout, fanout-hog; over
    /// TLS: wss-rr, wss-rr-many, tls-handshakes, wss-bulk, wss-idle ("tls" names all five).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "rr,rr-many,rate,pipe,bulk,handshake,idle,fanout,fanout-hog"
    )]
    pub cells: Vec<String>,
    /// Short run: 1 s cells, 2 rounds, 1,000 idle connections (unless set explicitly).
    #[arg(long)]
    pub quick: bool,
    /// Measured time per cell [default: 5s, --quick 1s]; a fifth of it again is warm-up.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Rounds; each runs every cell for every contender, in alternating order [default: 3,
    /// --quick 2]. The table shows the median.
    #[arg(long)]
    pub rounds: Option<usize>,
    /// CPUs for the client and the upstream.
    #[arg(long, default_value = "0")]
    pub load_cpus: String,
    /// CPUs for the proxy under test.
    #[arg(long, default_value = "1")]
    pub proxy_cpus: String,
    /// Proxy workers (wsplice workers, nginx worker_processes, HAProxy nbthread)
    /// [default: one per proxy CPU].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Message size in bytes (rr, rate, pipe).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    #[arg(long, default_value_t = 50)]
    pub rr_connections: usize,
    /// Connections of the rr-many cell (rr at many connections, for its p99).
    #[arg(long, default_value_t = 2000)]
    pub rr_many_connections: usize,
    /// Fixed total send rate for the open-loop latency cell, messages per second.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Connections of the wss-rr-many cell (wss-rr uses --rr-connections).
    #[arg(long, default_value_t = 200)]
    pub wss_rr_many_connections: usize,
    #[arg(long, default_value_t = 50)]
    pub rate_connections: usize,
    #[arg(long, default_value_t = 8)]
    pub pipe_connections: usize,
    /// Open connections of the fanout cells (most of them quiet at any moment).
    #[arg(long, default_value_t = 4000)]
    pub fanout_connections: usize,
    /// Fixed total send rate of the fanout cells, spread over all their connections.
    #[arg(long, default_value_t = 20_000.0)]
    pub fanout_rate: f64,
    /// Niceness of the `fanout-hog` cell's busy loop: -5 takes about three quarters of the
    /// CPU from a proxy at 0 (needs root; else it runs at 0 and takes half).
    #[arg(long, default_value_t = -5, allow_hyphen_values = true)]
    pub hog_nice: i32,
    #[arg(long, default_value_t = 32)]
    pub pipe_depth: usize,
    #[arg(long, default_value_t = 4)]
    pub bulk_connections: usize,
    #[arg(long, default_value_t = 64 * 1024)]
    pub bulk_chunk: usize,
    #[arg(long, default_value_t = 8)]
    pub handshake_connections: usize,
    /// Idle upgraded connections held for the memory cell [default: 8000, --quick 1000].
    #[arg(long)]
    pub idle: Option<usize>,
    /// Idle TLS tunnels held for the wss-idle cell [default: 4000, --quick 1000].
    #[arg(long)]
    pub wss_idle: Option<usize>,
    /// How long the idle connections are held before memory is read.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub idle_hold: Duration,
    #[arg(long, default_value = "target/release/wsplice")]
    pub wsplice_bin: PathBuf,
    /// The wsplice binary of the `baseline` target (an older build, for before/after).
    #[arg(long, default_value = "wsplice-baseline")]
    pub baseline_bin: PathBuf,
    /// A `KEY = VALUE` line added to the `wsplice` target's `[limits]` (repeatable), e.g.
    /// `multishot_receive = true`: with `--baseline-bin` the same binary, one run compares
    /// two settings side by side.
    #[arg(long)]
    pub wsplice_limit: Vec<String>,
    /// A `KEY = VALUE` line added to the `baseline` target's `[limits]` (repeatable).
    #[arg(long)]
    pub baseline_limit: Vec<String>,
    #[arg(long, default_value = "nginx")]
    pub nginx_bin: PathBuf,
    #[arg(long, default_value = "haproxy")]
    pub haproxy_bin: PathBuf,
    /// `perf`, to count each proxy's system calls (raw_syscalls:sys_enter); where it cannot,
    /// the syscalls column says n/a.
    #[arg(long, default_value = "perf")]
    pub perf_bin: PathBuf,
    /// The separate window in which system calls are counted, after each cell's first round
    /// (0s: do not count).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub syscall_window: Duration,
    /// Where each run's table.md, summary.csv and runs.csv go (in a dated folder).
    #[arg(long, default_value = "bench-results")]
    pub results: PathBuf,
}

/// One kind of measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    Rr,
    /// rr at --rr-many-connections.
    RrMany,
    Rate,
    Pipe,
    Bulk,
    Handshake,
    Idle,
    /// Open loop over many mostly quiet connections (the chat/broadcast pattern).
    Fanout,
    /// `Fanout` while a busy loop shares the proxy's CPUs (any busy host).
    FanoutHog,
    /// rr over TLS, --rr-connections.
    WssRr,
    /// rr over TLS, --wss-rr-many-connections.
    WssRrMany,
    /// Full TLS handshakes (no resumption), then the upgrade and the close handshake.
    TlsHandshakes,
    WssBulk,
    WssIdle,
}

impl Cell {
    pub const ALL: [Cell; 14] = [
        Cell::Rr,
        Cell::RrMany,
        Cell::Rate,
        Cell::Pipe,
        Cell::Bulk,
        Cell::Handshake,
        Cell::Idle,
        Cell::Fanout,
        Cell::FanoutHog,
        Cell::WssRr,
        Cell::WssRrMany,
        Cell::TlsHandshakes,
        Cell::WssBulk,
        Cell::WssIdle,
    ];
    pub const TLS: [Cell; 5] = [
        Cell::WssRr,
        Cell::WssRrMany,
        Cell::TlsHandshakes,
        Cell::WssBulk,
        Cell::WssIdle,
    ];

    /// Whether the cell runs over TLS (against the TLS listeners).
    pub fn is_tls(self) -> bool {
        Cell::TLS.contains(&self)
    }

    /// Whether the cell's figure is MB/s (and its CPU per MB).
    pub fn is_bulk(self) -> bool {
        matches!(self, Cell::Bulk | Cell::WssBulk)
    }

    /// Whether the cell holds idle connections and reads memory (run first, fresh).
    pub fn is_idle(self) -> bool {
        matches!(self, Cell::Idle | Cell::WssIdle)
    }

    pub fn name(self) -> &'static str {
        match self {
            Cell::Rr => "rr",
            Cell::RrMany => "rr-many",
            Cell::Rate => "rate",
            Cell::Pipe => "pipe",
            Cell::Bulk => "bulk",
            Cell::Handshake => "handshake",
            Cell::Idle => "idle",
            Cell::Fanout => "fanout",
            Cell::FanoutHog => "fanout-hog",
            Cell::WssRr => "wss-rr",
            Cell::WssRrMany => "wss-rr-many",
            Cell::TlsHandshakes => "tls-handshakes",
            Cell::WssBulk => "wss-bulk",
            Cell::WssIdle => "wss-idle",
        }
    }

    /// One cell by name, or "tls" for all the TLS cells.
    fn parse(name: &str) -> Result<Vec<Cell>, String> {
        if name == "tls" {
            return Ok(Cell::TLS.to_vec());
        }
        Cell::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .map(|c| vec![c])
            .ok_or_else(|| {
                let names: Vec<&str> = Cell::ALL.iter().map(|c| c.name()).collect();
                format!(
                    "unknown cell {name:?}: choose from {}, or tls",
                    names.join(", ")
                )
            })
    }
}

/// The options with the quick/full defaults applied and the lists parsed.
#[derive(Debug, Clone)]
pub struct Settings {
    pub targets: Vec<Kind>,
    pub cells: Vec<Cell>,
    pub duration: Duration,
    pub warmup: Duration,
    pub rounds: usize,
    pub load_cpus: Vec<usize>,
    pub proxy_cpus: Vec<usize>,
    pub workers: usize,
    pub idle: usize,
    pub wss_idle: usize,
    /// The `perf` that counts system calls, or why there is none.
    pub perf: Result<PathBuf, String>,
    pub options: Options,
}

impl Settings {
    pub fn new(options: &Options) -> Result<Settings, CompareError> {
        let setup = |e: String| CompareError::Setup(e);
        let targets = options
            .targets
            .iter()
            .map(|t| Kind::parse(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(setup)?;
        let mut cells: Vec<Cell> = Vec::new();
        for name in &options.cells {
            for cell in Cell::parse(name).map_err(setup)? {
                if !cells.contains(&cell) {
                    cells.push(cell);
                }
            }
        }
        let duration = options
            .duration
            .unwrap_or(Duration::from_secs(if options.quick { 1 } else { 5 }));
        let proxy_cpus = sys::parse_cpus(&options.proxy_cpus).map_err(setup)?;
        Ok(Settings {
            targets,
            cells,
            duration,
            warmup: duration / 5,
            rounds: options
                .rounds
                .unwrap_or(if options.quick { 2 } else { 3 })
                .max(1),
            load_cpus: sys::parse_cpus(&options.load_cpus).map_err(setup)?,
            workers: options.workers.unwrap_or(proxy_cpus.len()),
            proxy_cpus,
            idle: options
                .idle
                .unwrap_or(if options.quick { 1000 } else { 8000 }),
            wss_idle: options
                .wss_idle
                .unwrap_or(if options.quick { 1000 } else { 4000 }),
            perf: Err("not checked".into()),
            options: options.clone(),
        })
    }
}

/// Runs the whole comparison, writes the results folder and returns what it measured.
pub fn run(options: &Options) -> Result<Summary, CompareError> {
    let mut settings = Settings::new(options)?;
    settings.perf = if options.syscall_window.is_zero() {
        Err("--syscall-window 0s".into())
    } else {
        syscalls::available(&options.perf_bin).map(|()| options.perf_bin.clone())
    };
    if let Err(why) = &settings.perf {
        eprintln!("compare: system calls not counted (the column says n/a): {why}");
    }
    let machine = Machine::probe();
    sys::pin_current_thread(&settings.load_cpus)?;
    let nofile = sys::raise_nofile()?;
    for (cells, connections, what, flag) in [
        (
            &[Cell::Fanout, Cell::FanoutHog][..],
            options.fanout_connections,
            "fanout",
            "--fanout-connections",
        ),
        (
            &[Cell::RrMany],
            options.rr_many_connections,
            "rr-many",
            "--rr-many-connections",
        ),
    ] {
        let used = settings.cells.iter().any(|c| cells.contains(c));
        if used && (2 * connections as u64 + 256 > nofile) {
            return Err(CompareError::Setup(format!(
                "{connections} {what} connections need {} open files here (client + upstream), the limit is {nofile}; use {flag} {}",
                2 * connections + 256,
                nofile.saturating_sub(256) / 2
            )));
        }
    }
    for (cell, idle, flag) in [
        (Cell::Idle, settings.idle, "--idle"),
        (Cell::WssIdle, settings.wss_idle, "--wss-idle"),
    ] {
        if settings.cells.contains(&cell) && (2 * idle as u64 + 256 > nofile) {
            return Err(CompareError::Setup(format!(
                "{idle} idle connections need {} open files here (client + upstream), the limit is {nofile}; use {flag} {}",
                2 * idle + 256,
                nofile.saturating_sub(256) / 2
            )));
        }
    }
    let upstream = Upstream::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        settings.load_cpus.len(),
    )?;
    let rt = crate::runtime(settings.load_cpus.len())?;
    let mut setup = Setup {
        upstream: upstream.addr,
        cpus: settings.proxy_cpus.clone(),
        workers: settings.workers,
        nofile,
        nginx: options.nginx_bin.clone(),
        haproxy: options.haproxy_bin.clone(),
        wsplice: options.wsplice_bin.clone(),
        baseline: options.baseline_bin.clone(),
        wsplice_limits: options.wsplice_limit.clone(),
        baseline_limits: options.baseline_limit.clone(),
        tls: None,
    };

    let mut runs = Vec::new();
    let mut versions = Vec::new();
    let (tls_cells, plain_cells): (Vec<Cell>, Vec<Cell>) =
        settings.cells.iter().partition(|c| c.is_tls());
    if !plain_cells.is_empty() {
        phase(
            &rt,
            &setup,
            &settings,
            &plain_cells,
            None,
            &mut runs,
            &mut versions,
        )?;
    }
    if !tls_cells.is_empty() {
        // The run's directory for the certificate: nginx's workers must be able to read it.
        let certs = tempfile::Builder::new()
            .prefix("wsplice-bench-tls-")
            .tempdir()?;
        std::fs::set_permissions(
            certs.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let files = tls::make_certificates(certs.path()).map_err(CompareError::Setup)?;
        let client = tls::Client::new(&files.ca, tls::SERVER_NAME).map_err(CompareError::Setup)?;
        setup.tls = Some(files);
        phase(
            &rt,
            &setup,
            &settings,
            &tls_cells,
            Some(&client),
            &mut runs,
            &mut versions,
        )?;
    }
    // The contenders in the order asked for.
    versions.sort_by_key(|(kind, _)| settings.targets.iter().position(|t| t == kind));
    drop(upstream);
    let summary = Summary {
        machine,
        settings,
        versions,
        runs,
    };
    let dir = summary.write(&options.results)?;
    println!("{}", summary.markdown());
    println!("results: {}", dir.display());
    Ok(summary)
}

/// Starts every contender (with a TLS listener only when `tls` is given), runs `cells` on
/// them (the idle ones first, while each proxy is fresh), and stops them. Each contender
/// started is added to `started` with its version.
fn phase(
    rt: &tokio::runtime::Runtime,
    setup: &Setup,
    settings: &Settings,
    cells: &[Cell],
    tls: Option<&tls::Client>,
    runs: &mut Vec<Run>,
    started: &mut Vec<(Kind, String)>,
) -> Result<(), CompareError> {
    let mut targets = Vec::new();
    for &kind in &settings.targets {
        if tls.is_some() && kind == Kind::Direct {
            eprintln!("compare: direct has no TLS cells (the upstream speaks plain ws)");
            continue;
        }
        let target = Target::start(kind, setup)?;
        check_echo(rt, &target, tls)?;
        eprintln!(
            "compare: {} ready on {}{} {}",
            kind.name(),
            target.addr,
            if tls.is_some() { " (TLS)" } else { "" },
            target.version
        );
        if !started.iter().any(|(k, _)| *k == kind) {
            started.push((kind, target.version.clone()));
        }
        targets.push(target);
    }

    for &cell in cells.iter().filter(|c| c.is_idle()) {
        // First, while every proxy is fresh, so no earlier run's memory is reused.
        for target in targets.iter().filter(|t| t.process.is_some()) {
            let run = idle_cell(rt, target, cell, settings, tls);
            eprintln!("compare: {}", run.describe());
            runs.push(run);
        }
    }
    for round in 0..settings.rounds {
        let order = order(targets.len(), round);
        for &cell in cells.iter().filter(|c| !c.is_idle()) {
            for &i in &order {
                let run = load_cell(rt, &targets[i], cell, round, settings, tls);
                eprintln!("compare: round {} {}", round + 1, run.describe());
                runs.push(run);
            }
        }
    }
    Ok(())
}

/// Round 0 runs the contenders in the given order; later rounds reverse and rotate it, so no
/// contender always runs right after the same neighbour or always first.
fn order(n: usize, round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if round % 2 == 1 {
        order.reverse();
    }
    if n > 0 {
        order.rotate_left((round / 2) % n);
    }
    order
}

fn check_echo(
    rt: &tokio::runtime::Runtime,
    target: &Target,
    tls: Option<&tls::Client>,
) -> Result<(), CompareError> {
    let load = Load {
        target: target.addr,
        connections: 1,
        duration: Duration::ZERO,
        warmup: Duration::ZERO,
        tls: tls.cloned(),
    };
    let broken = |why: String| {
        let log = target
            .process
            .as_ref()
            .map(|p| p.log_tail())
            .unwrap_or_default();
        CompareError::Broken {
            target: target.kind.name(),
            why: format!("{why}\n{log}"),
        }
    };
    let report = rt
        .block_on(idle::run(&load, Duration::ZERO, &mut NoProbe))
        .map_err(|e| broken(e.to_string()))?;
    if report.messages != 1 {
        return Err(broken(report.first_error.unwrap_or_default()));
    }
    let mut rng = ws::Rng::new(1);
    rt.block_on(handshake::once(target.addr, tls, &mut rng))
        .map_err(|e| broken(e.to_string()))
}

/// Reads the proxy's CPU time (in all and its user/kernel ticks), and this process's (the
/// client and the upstream), at the window's edges.
#[derive(Default)]
struct CpuProbe {
    tree: Option<ProcTree>,
    proxy: (u64, u64),
    ticks: ((u64, u64), (u64, u64)),
    load: (u64, u64),
}

impl CpuProbe {
    fn proxy_micros(&self) -> Option<f64> {
        self.tree
            .map(|_| self.proxy.1.saturating_sub(self.proxy.0) as f64)
    }

    /// The user share of the proxy's CPU time in the window, from the utime and stime ticks
    /// of /proc/PID/stat; None without a proxy or with no tick in the window.
    fn proxy_user_share(&self) -> Option<f64> {
        self.tree?;
        let ((u0, s0), (u1, s1)) = self.ticks;
        let (user, kernel) = (u1.saturating_sub(u0), s1.saturating_sub(s0));
        (user + kernel > 0).then(|| user as f64 / (user + kernel) as f64)
    }

    fn load_micros(&self) -> f64 {
        self.load.1.saturating_sub(self.load.0) as f64
    }
}

impl Probe for CpuProbe {
    fn start(&mut self) {
        self.load.0 = procfs::cpu_micros(std::process::id());
        if let Some(tree) = self.tree {
            self.proxy.0 = tree.cpu_micros();
            self.ticks.0 = tree.cpu_ticks();
        }
    }

    fn end(&mut self) {
        self.load.1 = procfs::cpu_micros(std::process::id());
        if let Some(tree) = self.tree {
            self.proxy.1 = tree.cpu_micros();
            self.ticks.1 = tree.cpu_ticks();
        }
    }
}

/// Reads the proxy's resident memory at the end of the idle hold.
struct RssProbe {
    tree: ProcTree,
    rss: u64,
}

impl Probe for RssProbe {
    fn end(&mut self) {
        self.rss = self.tree.rss_bytes();
    }
}

fn load_cell(
    rt: &tokio::runtime::Runtime,
    target: &Target,
    cell: Cell,
    round: usize,
    s: &Settings,
    tls: Option<&tls::Client>,
) -> Run {
    let tree = target.process.as_ref().map(|p| p.tree);
    let mut probe = CpuProbe {
        tree,
        ..CpuProbe::default()
    };
    let result = drive(rt, target, cell, s, s.duration, tls, &mut probe);
    if let Some(tree) = tree {
        tree.settle(Duration::from_secs(5));
    }
    let mut run = Run::from_report(
        target.kind,
        cell,
        round,
        result,
        probe.proxy_micros(),
        s.duration,
    );
    run.load_cpu_us = probe.load_micros();
    run.proxy_user_share = probe.proxy_user_share();
    if let (Some(tree), Ok(perf), 0) = (tree, &s.perf, round) {
        match count_syscalls(rt, target, cell, s, tls, perf, tree) {
            Ok((calls, ops)) => run.syscalls = Some((calls, ops)),
            Err(why) => eprintln!(
                "compare: {} {}: system calls not counted: {why}",
                target.kind.name(),
                cell.name()
            ),
        }
    }
    run
}

/// Runs `cell` again for --syscall-window with `perf stat` counting the proxy's system calls;
/// returns the calls and the operations (messages, handshakes, bytes for bulk) in the window.
fn count_syscalls(
    rt: &tokio::runtime::Runtime,
    target: &Target,
    cell: Cell,
    s: &Settings,
    tls: Option<&tls::Client>,
    perf: &std::path::Path,
    tree: ProcTree,
) -> Result<(u64, u64), String> {
    let mut counter = syscalls::Counter::attach(perf, &tree.pids())?;
    let result = drive(
        rt,
        target,
        cell,
        s,
        s.options.syscall_window,
        tls,
        &mut counter,
    );
    let calls = counter.finish();
    tree.settle(Duration::from_secs(5));
    let report = result.map_err(|e| e.to_string())?;
    if report.errors > 0 {
        return Err(report.first_error.unwrap_or_default());
    }
    let ops = if cell.is_bulk() {
        report.bytes
    } else {
        report.messages
    };
    Ok((calls?, ops))
}

/// One window of `cell`'s load against `target`, `duration` long after the warm-up.
fn drive(
    rt: &tokio::runtime::Runtime,
    target: &Target,
    cell: Cell,
    s: &Settings,
    duration: Duration,
    tls: Option<&tls::Client>,
    probe: &mut dyn Probe,
) -> Result<Report, LoadError> {
    let o = &s.options;
    let load = |connections| Load {
        target: target.addr,
        connections,
        duration,
        warmup: s.warmup,
        tls: tls.cloned(),
    };
    // Started before the connections open, so the proxy shares its CPUs for the whole cell.
    let _hog = match cell {
        Cell::FanoutHog => Some(hog::Hog::start(&s.proxy_cpus, o.hog_nice)),
        _ => None,
    };
    let closed = echo::Pace::Closed { depth: 1 };
    rt.block_on(async {
        match cell {
            Cell::Rr | Cell::WssRr => {
                echo::run(&load(o.rr_connections), o.size, closed, probe).await
            }
            Cell::RrMany => echo::run(&load(o.rr_many_connections), o.size, closed, probe).await,
            Cell::Rate => {
                let pace = echo::Pace::Rate { per_second: o.rate };
                echo::run(&load(o.rate_connections), o.size, pace, probe).await
            }
            Cell::Pipe => {
                let pace = echo::Pace::Closed {
                    depth: o.pipe_depth,
                };
                echo::run(&load(o.pipe_connections), o.size, pace, probe).await
            }
            Cell::WssRrMany => {
                echo::run(&load(o.wss_rr_many_connections), o.size, closed, probe).await
            }
            Cell::Bulk | Cell::WssBulk => {
                bulk::run(&load(o.bulk_connections), o.bulk_chunk, probe).await
            }
            Cell::Handshake | Cell::TlsHandshakes => {
                handshake::run(&load(o.handshake_connections), probe).await
            }
            Cell::Fanout | Cell::FanoutHog => {
                let pace = echo::Pace::Rate {
                    per_second: o.fanout_rate,
                };
                echo::run(&load(o.fanout_connections), o.size, pace, probe).await
            }
            Cell::Idle | Cell::WssIdle => unreachable!("the idle cells have their own runner"),
        }
    })
}

fn idle_cell(
    rt: &tokio::runtime::Runtime,
    target: &Target,
    cell: Cell,
    s: &Settings,
    tls: Option<&tls::Client>,
) -> Run {
    let count = if cell == Cell::WssIdle {
        s.wss_idle
    } else {
        s.idle
    };
    let tree = target.process.as_ref().expect("a proxy").tree;
    tree.settle(Duration::from_secs(5));
    let before = tree.rss_bytes();
    let mut probe = RssProbe { tree, rss: 0 };
    let load = Load {
        target: target.addr,
        connections: count,
        duration: s.options.idle_hold,
        warmup: Duration::ZERO,
        tls: tls.cloned(),
    };
    let result = rt.block_on(idle::run(&load, s.options.idle_hold, &mut probe));
    tree.settle(Duration::from_secs(10));
    let per_conn = (probe.rss as f64 - before as f64) / count.max(1) as f64;
    let mut run = Run::from_report(target.kind, cell, 0, result, None, s.options.idle_hold);
    run.value = per_conn;
    if run.errors == 0 && run.ops < count as u64 {
        run.errors = count as u64 - run.ops;
        run.first_error = Some("idle connections that no longer echoed".into());
    }
    run
}
