//! The side-by-side comparison: the same upstream and client against no proxy ("direct", the
//! ceiling), nginx, HAProxy and wsplice, in one run. The client and upstream run on the load
//! CPUs, each proxy on the proxy CPUs; runs alternate between contenders cell by cell and
//! round by round; each proxy's CPU time and memory come from /proc.

pub mod hog;
pub mod procfs;
pub mod proxies;
pub mod table;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::client::LoadError;
use crate::load::{Load, bulk, echo, handshake, idle};
use crate::report::{NoProbe, Probe, Report};
use crate::upstream::Upstream;
use crate::{sys, ws};
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
    /// Cells to run: rr, rate, pipe, bulk, handshake, idle, fanout, fanout-hog.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "rr,rate,pipe,bulk,handshake,idle,fanout,fanout-hog"
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
    /// Fixed total send rate for the open-loop latency cell, messages per second.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
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
    /// How long the idle connections are held before memory is read.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub idle_hold: Duration,
    #[arg(long, default_value = "target/release/wsplice")]
    pub wsplice_bin: PathBuf,
    /// The wsplice binary of the `baseline` target (an older build, for before/after).
    #[arg(long, default_value = "wsplice-baseline")]
    pub baseline_bin: PathBuf,
    #[arg(long, default_value = "nginx")]
    pub nginx_bin: PathBuf,
    #[arg(long, default_value = "haproxy")]
    pub haproxy_bin: PathBuf,
    /// Where each run's table.md, summary.csv and runs.csv go (in a dated folder).
    #[arg(long, default_value = "bench-results")]
    pub results: PathBuf,
}

/// One kind of measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    Rr,
    Rate,
    Pipe,
    Bulk,
    Handshake,
    Idle,
    /// Open loop over many mostly quiet connections (the chat/broadcast pattern).
    Fanout,
    /// `Fanout` while a busy loop shares the proxy's CPUs (any busy host).
    FanoutHog,
}

impl Cell {
    pub const ALL: [Cell; 8] = [
        Cell::Rr,
        Cell::Rate,
        Cell::Pipe,
        Cell::Bulk,
        Cell::Handshake,
        Cell::Idle,
        Cell::Fanout,
        Cell::FanoutHog,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cell::Rr => "rr",
            Cell::Rate => "rate",
            Cell::Pipe => "pipe",
            Cell::Bulk => "bulk",
            Cell::Handshake => "handshake",
            Cell::Idle => "idle",
            Cell::Fanout => "fanout",
            Cell::FanoutHog => "fanout-hog",
        }
    }

    fn parse(name: &str) -> Result<Cell, String> {
        Cell::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| {
                format!(
                    "unknown cell {name:?}: choose from rr, rate, pipe, bulk, handshake, idle, fanout, fanout-hog"
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
        let cells = options
            .cells
            .iter()
            .map(|c| Cell::parse(c))
            .collect::<Result<Vec<_>, _>>()
            .map_err(setup)?;
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
            options: options.clone(),
        })
    }
}

/// Runs the whole comparison, writes the results folder and returns what it measured.
pub fn run(options: &Options) -> Result<Summary, CompareError> {
    let settings = Settings::new(options)?;
    let machine = Machine::probe();
    sys::pin_current_thread(&settings.load_cpus)?;
    let nofile = sys::raise_nofile()?;
    let fanout = settings
        .cells
        .iter()
        .any(|c| matches!(c, Cell::Fanout | Cell::FanoutHog));
    if fanout && (2 * options.fanout_connections as u64 + 256 > nofile) {
        return Err(CompareError::Setup(format!(
            "{} fanout connections need {} open files here (client + upstream), the limit is {nofile}; use --fanout-connections {}",
            options.fanout_connections,
            2 * options.fanout_connections + 256,
            nofile.saturating_sub(256) / 2
        )));
    }
    if settings.cells.contains(&Cell::Idle) && (2 * settings.idle as u64 + 256 > nofile) {
        return Err(CompareError::Setup(format!(
            "{} idle connections need {} open files here (client + upstream), the limit is {nofile}; use --idle {}",
            settings.idle,
            2 * settings.idle + 256,
            nofile.saturating_sub(256) / 2
        )));
    }
    let upstream = Upstream::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        settings.load_cpus.len(),
    )?;
    let rt = crate::runtime(settings.load_cpus.len())?;
    let setup = Setup {
        upstream: upstream.addr,
        cpus: settings.proxy_cpus.clone(),
        workers: settings.workers,
        nofile,
        nginx: options.nginx_bin.clone(),
        haproxy: options.haproxy_bin.clone(),
        wsplice: options.wsplice_bin.clone(),
        baseline: options.baseline_bin.clone(),
    };
    let mut targets = Vec::new();
    for &kind in &settings.targets {
        let target = Target::start(kind, &setup)?;
        check_echo(&rt, &target)?;
        eprintln!(
            "compare: {} ready on {} {}",
            kind.name(),
            target.addr,
            target.version
        );
        targets.push(target);
    }

    let mut runs = Vec::new();
    if settings.cells.contains(&Cell::Idle) {
        // First, while every proxy is fresh, so no earlier run's memory is reused.
        for target in targets.iter().filter(|t| t.process.is_some()) {
            let run = idle_cell(&rt, target, &settings);
            eprintln!("compare: {}", run.describe());
            runs.push(run);
        }
    }
    for round in 0..settings.rounds {
        let order = order(targets.len(), round);
        for &cell in settings.cells.iter().filter(|&&c| c != Cell::Idle) {
            for &i in &order {
                let run = load_cell(&rt, &targets[i], cell, round, &settings);
                eprintln!("compare: round {} {}", round + 1, run.describe());
                runs.push(run);
            }
        }
    }

    let versions = targets
        .iter()
        .map(|t| (t.kind, t.version.clone()))
        .collect();
    drop(targets);
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

fn check_echo(rt: &tokio::runtime::Runtime, target: &Target) -> Result<(), CompareError> {
    let load = Load {
        target: target.addr,
        connections: 1,
        duration: Duration::ZERO,
        warmup: Duration::ZERO,
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
    rt.block_on(handshake::once(target.addr, &mut rng))
        .map_err(|e| broken(e.to_string()))
}

/// Reads the proxy's CPU time, and this process's (the client and the upstream), at the
/// window's edges.
#[derive(Default)]
struct CpuProbe {
    tree: Option<ProcTree>,
    proxy: (u64, u64),
    load: (u64, u64),
}

impl CpuProbe {
    fn proxy_micros(&self) -> Option<f64> {
        self.tree
            .map(|_| self.proxy.1.saturating_sub(self.proxy.0) as f64)
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
        }
    }

    fn end(&mut self) {
        self.load.1 = procfs::cpu_micros(std::process::id());
        if let Some(tree) = self.tree {
            self.proxy.1 = tree.cpu_micros();
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
) -> Run {
    let o = &s.options;
    let tree = target.process.as_ref().map(|p| p.tree);
    let mut probe = CpuProbe {
        tree,
        ..CpuProbe::default()
    };
    let load = |connections| Load {
        target: target.addr,
        connections,
        duration: s.duration,
        warmup: s.warmup,
    };
    // Started before the connections open, so the proxy shares its CPUs for the whole cell.
    let hog = match cell {
        Cell::FanoutHog => Some(hog::Hog::start(&s.proxy_cpus, o.hog_nice)),
        _ => None,
    };
    let result: Result<Report, LoadError> = rt.block_on(async {
        match cell {
            Cell::Rr => {
                let pace = echo::Pace::Closed { depth: 1 };
                echo::run(&load(o.rr_connections), o.size, pace, &mut probe).await
            }
            Cell::Rate => {
                let pace = echo::Pace::Rate { per_second: o.rate };
                echo::run(&load(o.rate_connections), o.size, pace, &mut probe).await
            }
            Cell::Pipe => {
                let pace = echo::Pace::Closed {
                    depth: o.pipe_depth,
                };
                echo::run(&load(o.pipe_connections), o.size, pace, &mut probe).await
            }
            Cell::Bulk => bulk::run(&load(o.bulk_connections), o.bulk_chunk, &mut probe).await,
            Cell::Handshake => handshake::run(&load(o.handshake_connections), &mut probe).await,
            Cell::Fanout | Cell::FanoutHog => {
                let pace = echo::Pace::Rate {
                    per_second: o.fanout_rate,
                };
                echo::run(&load(o.fanout_connections), o.size, pace, &mut probe).await
            }
            Cell::Idle => unreachable!("the idle cell has its own runner"),
        }
    });
    drop(hog);
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
    run
}

fn idle_cell(rt: &tokio::runtime::Runtime, target: &Target, s: &Settings) -> Run {
    let tree = target.process.as_ref().expect("a proxy").tree;
    tree.settle(Duration::from_secs(5));
    let before = tree.rss_bytes();
    let mut probe = RssProbe { tree, rss: 0 };
    let load = Load {
        target: target.addr,
        connections: s.idle,
        duration: s.options.idle_hold,
        warmup: Duration::ZERO,
    };
    let result = rt.block_on(idle::run(&load, s.options.idle_hold, &mut probe));
    tree.settle(Duration::from_secs(10));
    let per_conn = (probe.rss as f64 - before as f64) / s.idle.max(1) as f64;
    let mut run = Run::from_report(
        target.kind,
        Cell::Idle,
        0,
        result,
        None,
        s.options.idle_hold,
    );
    run.value = per_conn;
    if run.errors == 0 && run.ops < s.idle as u64 {
        run.errors = s.idle as u64 - run.ops;
        run.first_error = Some("idle connections that no longer echoed".into());
    }
    run
}
