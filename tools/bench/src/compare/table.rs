//! The comparison's results: every run, the medians as one markdown table (with the machine,
//! the versions and the targets checked), and CSV files for plotting.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::proxies::Kind;
use super::{Cell, Settings};
use crate::client::LoadError;
use crate::report::Report;

/// The machine a comparison ran on.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    /// UTC, `YYYY-MM-DD HH:MM`.
    pub date: String,
    /// The 1-minute load average when the comparison started: other work on the machine
    /// shares the CPUs the run pins to.
    pub loadavg: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpus = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or("unknown CPU".into(), |(_, m)| m.trim().to_string());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or("unknown".into(), |k| k.trim().to_string());
        let loadavg = fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
            .unwrap_or_default();
        Machine {
            cpus,
            cpu_model,
            kernel,
            date: utc_now(),
            loadavg,
        }
    }
}

/// `YYYY-MM-DD HH:MM` in UTC (days to civil date: Howard Hinnant's algorithm).
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// One contender in one cell of one round.
#[derive(Debug, Clone)]
pub struct Run {
    pub target: Kind,
    pub cell: Cell,
    pub round: usize,
    /// msgs/s (rr, rate, pipe), MB/s (bulk), handshakes/s, or bytes per idle connection.
    pub value: f64,
    /// Messages, handshakes, bytes (bulk) or connections (idle) counted.
    pub ops: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// The proxy's CPU time inside the window (None for direct).
    pub proxy_cpu_us: Option<f64>,
    /// The client's and the upstream's CPU time inside the window (this process).
    pub load_cpu_us: f64,
    /// The user-mode share of the proxy's CPU time in the window (from the utime and stime
    /// ticks of /proc/PID/stat); the rest is kernel time.
    pub proxy_user_share: Option<f64>,
    /// The proxy's system calls and the operations counted in the separate syscall window
    /// (first round only; None where perf could not count).
    pub syscalls: Option<(u64, u64)>,
    pub errors: u64,
    pub first_error: Option<String>,
    window: Duration,
}

impl Run {
    pub fn from_report(
        target: Kind,
        cell: Cell,
        round: usize,
        result: Result<Report, LoadError>,
        proxy_cpu_us: Option<f64>,
        window: Duration,
    ) -> Run {
        let mut run = Run {
            target,
            cell,
            round,
            value: 0.0,
            ops: 0,
            p50_us: 0.0,
            p99_us: 0.0,
            proxy_cpu_us,
            load_cpu_us: 0.0,
            proxy_user_share: None,
            syscalls: None,
            errors: 0,
            first_error: None,
            window,
        };
        match result {
            Ok(report) => {
                run.value = if cell.is_bulk() {
                    report.mb_per_second()
                } else {
                    report.per_second()
                };
                run.ops = if cell.is_bulk() {
                    report.bytes
                } else {
                    report.messages
                };
                run.p50_us = report.micros(0.5);
                run.p99_us = report.micros(0.99);
                run.errors = report.errors;
                run.first_error = report.first_error;
                if run.ops == 0 && run.errors == 0 && !cell.is_idle() {
                    // A window with nothing in it measured nothing (on a shared machine, a
                    // client that got no CPU for the whole window): not a zero for the median.
                    run.errors = 1;
                    run.first_error = Some("nothing counted in the window".into());
                }
            }
            Err(e) => {
                run.errors = 1;
                run.first_error = Some(e.to_string());
            }
        }
        run
    }

    /// Operations in `ops` units: messages and handshakes as they are, bytes as MB (bulk).
    fn units(&self, ops: u64) -> f64 {
        if self.cell.is_bulk() {
            ops as f64 / 1e6
        } else {
            ops as f64
        }
    }

    /// Proxy CPU µs per message or handshake (per MB for bulk).
    pub fn cpu_per_op(&self) -> Option<f64> {
        let units = self.units(self.ops);
        self.proxy_cpu_us
            .filter(|_| units > 0.0)
            .map(|cpu| cpu / units)
    }

    /// The user-mode part of [`Run::cpu_per_op`].
    pub fn user_per_op(&self) -> Option<f64> {
        Some(self.cpu_per_op()? * self.proxy_user_share?)
    }

    /// The kernel part of [`Run::cpu_per_op`] (system calls, interrupts and softirqs the
    /// proxy's threads ran: for a proxy on loopback, most of the TCP stack).
    pub fn kernel_per_op(&self) -> Option<f64> {
        Some(self.cpu_per_op()? * (1.0 - self.proxy_user_share?))
    }

    /// The proxy's system calls per message or handshake (per MB for bulk), from the
    /// separate syscall window.
    pub fn syscalls_per_op(&self) -> Option<f64> {
        let (calls, ops) = self.syscalls?;
        let units = self.units(ops);
        (units > 0.0).then(|| calls as f64 / units)
    }

    /// The proxy's CPU use during the window, in percent of one CPU.
    pub fn cpu_percent(&self) -> Option<f64> {
        self.proxy_cpu_us.map(|cpu| self.percent(cpu))
    }

    /// The client's and upstream's CPU use during the window, in percent of one CPU.
    pub fn load_percent(&self) -> f64 {
        self.percent(self.load_cpu_us)
    }

    fn percent(&self, cpu_us: f64) -> f64 {
        cpu_us / self.window.as_micros().max(1) as f64 * 100.0
    }

    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} {}: {:.1}",
            self.target.name(),
            self.cell.name(),
            self.value
        );
        if self.p99_us > 0.0 && !self.cell.is_idle() {
            let _ = write!(s, ", p50 {:.1} us, p99 {:.1} us", self.p50_us, self.p99_us);
        }
        if let (Some(per), Some(pct)) = (self.cpu_per_op(), self.cpu_percent()) {
            let _ = write!(s, ", proxy {per:.2} CPU-us/op at {pct:.0}% CPU");
            if let (Some(user), Some(kernel)) = (self.user_per_op(), self.kernel_per_op()) {
                let _ = write!(s, " (user {user:.2}, kernel {kernel:.2})");
            }
        }
        if let Some(calls) = self.syscalls_per_op() {
            let _ = write!(s, ", {calls:.2} syscalls/op");
        }
        if !self.cell.is_idle() {
            let _ = write!(s, ", client+upstream {:.0}% CPU", self.load_percent());
        }
        if self.errors > 0 {
            let _ = write!(
                s,
                ", {} ERRORS (first: {})",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            );
        }
        s
    }
}

/// Everything one comparison measured.
#[derive(Debug)]
pub struct Summary {
    pub machine: Machine,
    pub settings: Settings,
    pub versions: Vec<(Kind, String)>,
    pub runs: Vec<Run>,
}

/// One figure of the table: which cell, and what of each run.
type Metric = (Cell, fn(&Run) -> Option<f64>);

const RATE: Metric = (Cell::Rr, |r| Some(r.value));
const RR_CPU: Metric = (Cell::Rr, Run::cpu_per_op);
const RATE_P50: Metric = (Cell::Rate, |r| Some(r.p50_us));
const RATE_P99: Metric = (Cell::Rate, |r| Some(r.p99_us));
const RATE_CPU: Metric = (Cell::Rate, Run::cpu_per_op);
const PIPE: Metric = (Cell::Pipe, |r| Some(r.value));
const PIPE_CPU: Metric = (Cell::Pipe, Run::cpu_per_op);
const BULK: Metric = (Cell::Bulk, |r| Some(r.value));
const BULK_CPU: Metric = (Cell::Bulk, Run::cpu_per_op);
const HANDSHAKES: Metric = (Cell::Handshake, |r| Some(r.value));
const HANDSHAKE_CPU: Metric = (Cell::Handshake, Run::cpu_per_op);
const IDLE_RSS: Metric = (Cell::Idle, |r| Some(r.value));
const FANOUT: Metric = (Cell::Fanout, |r| Some(r.value));
const FANOUT_P50: Metric = (Cell::Fanout, |r| Some(r.p50_us));
const FANOUT_P99: Metric = (Cell::Fanout, |r| Some(r.p99_us));
const FANOUT_CPU: Metric = (Cell::Fanout, Run::cpu_per_op);
const HOG: Metric = (Cell::FanoutHog, |r| Some(r.value));
const HOG_P50: Metric = (Cell::FanoutHog, |r| Some(r.p50_us));
const HOG_P99: Metric = (Cell::FanoutHog, |r| Some(r.p99_us));
const HOG_CPU: Metric = (Cell::FanoutHog, Run::cpu_per_op);
const WSS_RR: Metric = (Cell::WssRr, |r| Some(r.value));
const WSS_RR_CPU: Metric = (Cell::WssRr, Run::cpu_per_op);
const WSS_MANY: Metric = (Cell::WssRrMany, |r| Some(r.value));
const WSS_MANY_CPU: Metric = (Cell::WssRrMany, Run::cpu_per_op);
const TLS_HANDSHAKES: Metric = (Cell::TlsHandshakes, |r| Some(r.value));
const TLS_HANDSHAKE_CPU: Metric = (Cell::TlsHandshakes, Run::cpu_per_op);
const WSS_BULK: Metric = (Cell::WssBulk, |r| Some(r.value));
const WSS_BULK_CPU: Metric = (Cell::WssBulk, Run::cpu_per_op);
const WSS_IDLE_RSS: Metric = (Cell::WssIdle, |r| Some(r.value));

/// The figures of the cost table, for any load cell.
fn value(r: &Run) -> Option<f64> {
    Some(r.value)
}
fn p50(r: &Run) -> Option<f64> {
    Some(r.p50_us)
}
fn p99(r: &Run) -> Option<f64> {
    Some(r.p99_us)
}

impl Summary {
    /// The median over rounds of `metric` for `target`, if it was measured: over the runs
    /// without errors (the errors column counts the others, and the list below the table
    /// names them).
    pub fn median(&self, target: Kind, (cell, f): Metric) -> Option<f64> {
        let mut values: Vec<f64> = self
            .runs
            .iter()
            .filter(|r| r.target == target && r.cell == cell && r.errors == 0)
            .filter_map(f)
            .collect();
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        Some(if values.len() % 2 == 0 {
            (values[mid - 1] + values[mid]) / 2.0
        } else {
            values[mid]
        })
    }

    /// The worst round of `metric` for `target`: the lowest rate (`lowest`) or the highest
    /// latency.
    pub fn worst(&self, target: Kind, (cell, f): Metric, lowest: bool) -> Option<f64> {
        let values = self
            .runs
            .iter()
            .filter(|r| r.target == target && r.cell == cell)
            .filter_map(f);
        if lowest {
            values.min_by(f64::total_cmp)
        } else {
            values.max_by(f64::total_cmp)
        }
    }

    /// The fanout cells' own table: median and worst round, since a collapse shows in one
    /// round of several.
    fn fanout_markdown(&self, t: &mut String) {
        let o = &self.settings.options;
        let _ = writeln!(
            t,
            "Fanout: {} connections, {} msgs/s in total (open loop); \"hog\": a busy loop at nice {} pinned to each proxy CPU. Median of the rounds, worst round in brackets.\n",
            thousands(o.fanout_connections as f64),
            thousands(o.fanout_rate),
            o.hog_nice
        );
        let _ = writeln!(
            t,
            "| target | fanout msgs/s | p50 / p99 µs | proxy CPU µs/msg | with hog: msgs/s (worst) | p50 µs (worst) | p99 µs (worst) | proxy CPU µs/msg |"
        );
        let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for &(kind, _) in &self.versions {
            let get = |metric| self.median(kind, metric);
            let worst = |metric, lowest| self.worst(kind, metric, lowest);
            let with_worst = |m: Option<f64>, w: Option<f64>| match (m, w) {
                (Some(m), Some(w)) => format!("{} ({})", thousands(m), thousands(w)),
                _ => "–".into(),
            };
            let latency = match (get(FANOUT_P50), get(FANOUT_P99)) {
                (Some(p50), Some(p99)) => format!("{} / {}", thousands(p50), thousands(p99)),
                _ => "–".into(),
            };
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                kind.name(),
                opt(get(FANOUT), thousands),
                latency,
                opt(get(FANOUT_CPU), |v| format!("{v:.2}")),
                with_worst(get(HOG), worst(HOG, true)),
                with_worst(get(HOG_P50), worst(HOG_P50, false)),
                with_worst(get(HOG_P99), worst(HOG_P99, false)),
                opt(get(HOG_CPU), |v| format!("{v:.2}")),
            );
        }
        t.push('\n');
    }

    fn errors(&self, target: Kind) -> u64 {
        self.runs
            .iter()
            .filter(|r| r.target == target)
            .map(|r| r.errors)
            .sum()
    }

    pub fn markdown(&self) -> String {
        let s = &self.settings;
        let o = &s.options;
        let m = &self.machine;
        let mut t = String::new();
        let _ = writeln!(t, "### wsplice-bench compare, {} UTC\n", m.date);
        let _ = writeln!(
            t,
            "Machine: {} CPUs ({}), Linux {}, load average {} at the start. Client + upstream on CPU {}, proxy on CPU {}, {} proxy worker(s).",
            m.cpus, m.cpu_model, m.kernel, m.loadavg, o.load_cpus, o.proxy_cpus, s.workers
        );
        let versions: Vec<String> = self
            .versions
            .iter()
            .filter(|(k, _)| *k != Kind::Direct)
            .map(|(_, v)| {
                v.replace("nginx version: ", "")
                    .replace("HAProxy version", "HAProxy")
            })
            .map(|v| v.split(" - ").next().unwrap_or_default().to_string())
            .collect();
        let _ = writeln!(t, "Versions: {}.", versions.join(", "));
        let _ = writeln!(
            t,
            "Each cell {} s after {} ms warm-up, {} round(s) in alternating order, median shown; {}-byte messages.\n",
            s.duration.as_secs_f64(),
            s.warmup.as_millis(),
            s.rounds,
            o.size,
        );
        if s.cells.iter().any(|c| !c.is_tls()) {
            self.plain_table(&mut t);
        }
        if s.cells.iter().any(|c| c.is_tls()) {
            self.tls_table(&mut t);
        }
        if s.cells.iter().any(|c| !c.is_idle()) {
            self.cost_table(&mut t);
        }
        let failed: Vec<&Run> = self.runs.iter().filter(|r| r.errors > 0).collect();
        if !failed.is_empty() {
            let _ = writeln!(t, "Errors:\n");
            for r in failed {
                let _ = writeln!(t, "- {}", r.describe());
            }
        }
        t
    }

    fn plain_table(&self, t: &mut String) {
        let s = &self.settings;
        let o = &s.options;
        let _ = writeln!(
            t,
            "Plain cells: rr {} connections, rate {} connections at {} msgs/s in total, pipe {} connections x {} in flight, bulk {} connections ({} KiB writes), handshake {} loops, idle {} connections held {} s{}.\n",
            o.rr_connections,
            o.rate_connections,
            thousands(o.rate),
            o.pipe_connections,
            o.pipe_depth,
            o.bulk_connections,
            o.bulk_chunk / 1024,
            o.handshake_connections,
            thousands(s.idle as f64),
            o.idle_hold.as_secs_f64(),
            if s.idle < 8000 {
                " (fewer than the 8,000 of the target)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            t,
            "| target | rr msgs/s | rr proxy CPU µs/msg | p50 / p99 µs at {} msgs/s | proxy CPU µs/msg at that rate | pipe msgs/s | bulk MB/s | bulk proxy CPU µs/MB | handshakes/s | RSS per idle connection | errors |",
            thousands(o.rate)
        );
        let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &(kind, _) in &self.versions {
            let get = |metric| self.median(kind, metric);
            let latency = match (get(RATE_P50), get(RATE_P99)) {
                (Some(p50), Some(p99)) => format!("{p50:.1} / {p99:.1}"),
                _ => "–".into(),
            };
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                kind.name(),
                opt(get(RATE), thousands),
                opt(get(RR_CPU), |v| format!("{v:.2}")),
                latency,
                opt(get(RATE_CPU), |v| format!("{v:.2}")),
                opt(get(PIPE), thousands),
                opt(get(BULK), |v| format!("{v:.0}")),
                opt(get(BULK_CPU), |v| format!("{v:.0}")),
                opt(get(HANDSHAKES), thousands),
                opt(get(IDLE_RSS), bytes),
                self.errors(kind)
            );
        }
        let _ = writeln!(
            t,
            "\nProxy CPU = utime + stime of all the proxy's processes during the window (read from each process's CPU-time clock: the figure /proc/PID/stat gives in 10 ms ticks, to the µs), per verified echo, each of which crosses the proxy both ways. RSS per idle connection = (RSS of all its processes, /proc/PID/statm, with the idle connections open - RSS before) / connections.\n"
        );
        if self
            .runs
            .iter()
            .any(|r| matches!(r.cell, Cell::Fanout | Cell::FanoutHog))
        {
            self.fanout_markdown(t);
        }
        let checks = self.checks();
        if !checks.is_empty() {
            let _ = writeln!(t, "Targets (issue 4), wsplice against nginx in this run:\n");
            for (met, line) in checks {
                let _ = writeln!(t, "- {} {line}", if met { "met:" } else { "MISSED:" });
            }
            t.push('\n');
        }
    }

    /// Issue 15's table: per cell and contender, the rate, the latency, and the proxy's CPU
    /// per operation split into user and kernel time, with its system calls per operation.
    fn cost_table(&self, t: &mut String) {
        let s = &self.settings;
        let o = &s.options;
        let _ = writeln!(
            t,
            "Cost per operation (issue 15): rr {} and rr-many {} connections; op = one verified echo (rr, rr-many, rate, pipe, fanout: it crosses the proxy both ways), one MB (bulk), one handshake.\n",
            o.rr_connections, o.rr_many_connections
        );
        let _ = writeln!(
            t,
            "| cell | target | ops/s | p50 / p99 µs | proxy CPU µs/op | user µs/op | kernel µs/op | syscalls/op |"
        );
        let _ = writeln!(t, "|---|---|---:|---:|---:|---:|---:|---:|");
        let calls = match &s.perf {
            Ok(_) => "n/a (perf failed)",
            Err(_) => "n/a",
        };
        for &cell in s.cells.iter().filter(|c| !c.is_idle()) {
            for &(kind, _) in &self.versions {
                if cell.is_tls() && kind == Kind::Direct {
                    continue;
                }
                let get = |f: fn(&Run) -> Option<f64>| self.median(kind, (cell, f));
                let latency = match (get(p50), get(p99)) {
                    (Some(p50), Some(p99)) if p99 > 0.0 => {
                        format!("{} / {}", micros(p50), micros(p99))
                    }
                    _ => "–".into(),
                };
                let two = |v: f64| format!("{v:.2}");
                let proxy = kind != Kind::Direct;
                let _ = writeln!(
                    t,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    cell.name(),
                    kind.name(),
                    opt(get(value), thousands),
                    latency,
                    opt(get(Run::cpu_per_op), two),
                    opt(get(Run::user_per_op), two),
                    opt(get(Run::kernel_per_op), two),
                    match get(Run::syscalls_per_op) {
                        Some(v) => two(v),
                        None if proxy => calls.into(),
                        None => "–".into(),
                    },
                );
            }
        }
        let _ = writeln!(
            t,
            "\nuser / kernel: the proxy CPU column split in the proportion of the utime and stime of all the proxy's processes and threads in the window (/proc/PID/stat, sampled at the kernel's tick), per op; kernel time includes the loopback TCP stack that runs in the proxy's threads. syscalls/op: system calls entered by all the proxy's threads (`perf stat -e raw_syscalls:sys_enter -p PIDS`) in a separate {} s window after the cell's first round, divided by the ops of that window: counting slows every system call a little, so it is never done in the window reported. Work io_uring does for the proxy is not a system call (only `io_uring_enter` counts). n/a: perf is missing, not allowed or without the tracepoint (`--perf-bin`, `--syscall-window 0s` turns it off); –: no proxy.\n",
            o.syscall_window.as_secs_f64()
        );
    }

    /// The TLS cells' table and the targets of issue 12.
    fn tls_table(&self, t: &mut String) {
        let s = &self.settings;
        let o = &s.options;
        let _ = writeln!(
            t,
            "TLS cells: every proxy with the same ECDSA P-256 certificate, TLS 1.3 only, TLS_AES_128_GCM_SHA256 with X25519 (the only suite and group the client offers), full handshakes (the client never resumes). wss-rr {} and {} connections, tls-handshakes {} loops, wss-bulk {} connections ({} KiB writes), wss-idle {} connections held {} s{}.\n",
            o.rr_connections,
            o.wss_rr_many_connections,
            o.handshake_connections,
            o.bulk_connections,
            o.bulk_chunk / 1024,
            thousands(s.wss_idle as f64),
            o.idle_hold.as_secs_f64(),
            if s.wss_idle < 4000 {
                " (fewer than the 4,000 of the target)"
            } else {
                ""
            }
        );
        let (few, many) = (o.rr_connections, o.wss_rr_many_connections);
        let _ = writeln!(
            t,
            "| target | wss rr msgs/s ({few}) | proxy CPU µs/msg ({few}) | wss rr msgs/s ({many}) | proxy CPU µs/msg ({many}) | TLS handshakes/s | proxy CPU µs/handshake | wss bulk MB/s | wss bulk proxy CPU µs/MB | RSS per idle TLS tunnel | errors |"
        );
        let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &(kind, _) in self.versions.iter().filter(|(k, _)| *k != Kind::Direct) {
            let get = |metric| self.median(kind, metric);
            let errors: u64 = self
                .runs
                .iter()
                .filter(|r| r.target == kind && r.cell.is_tls())
                .map(|r| r.errors)
                .sum();
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                kind.name(),
                opt(get(WSS_RR), thousands),
                opt(get(WSS_RR_CPU), |v| format!("{v:.2}")),
                opt(get(WSS_MANY), thousands),
                opt(get(WSS_MANY_CPU), |v| format!("{v:.2}")),
                opt(get(TLS_HANDSHAKES), thousands),
                opt(get(TLS_HANDSHAKE_CPU), |v| format!("{v:.0}")),
                opt(get(WSS_BULK), |v| format!("{v:.0}")),
                opt(get(WSS_BULK_CPU), |v| format!("{v:.0}")),
                opt(get(WSS_IDLE_RSS), bytes),
                errors
            );
        }
        t.push('\n');
        let checks = self.tls_checks();
        if !checks.is_empty() {
            let _ = writeln!(
                t,
                "Targets (issue 12, TLS), wsplice against nginx in this run:\n"
            );
            for (met, line) in checks {
                let _ = writeln!(t, "- {} {line}", if met { "met:" } else { "MISSED:" });
            }
            t.push('\n');
        }
    }

    /// Issue 12's TLS targets, each with whether it was met and the figures behind it.
    pub fn tls_checks(&self) -> Vec<(bool, String)> {
        let mut checks = Vec::new();
        let w = |metric| self.median(Kind::Wsplice, metric);
        let n = |metric| self.median(Kind::Nginx, metric);
        let h = |metric| self.median(Kind::Haproxy, metric);
        let versus = |metric, f: &dyn Fn(f64) -> String| {
            h(metric).map_or(String::new(), |v| format!(", HAProxy {}", f(v)))
        };
        for (metric, connections) in [
            (WSS_RR_CPU, self.settings.options.rr_connections),
            (WSS_MANY_CPU, self.settings.options.wss_rr_many_connections),
        ] {
            if let (Some(w), Some(n)) = (w(metric), n(metric)) {
                checks.push((
                    w <= 0.9 * n,
                    format!(
                        "proxy CPU per wss message <= 0.9x nginx at {connections} connections: wsplice {w:.2} µs = {:.2}x nginx ({n:.2} µs){}",
                        w / n,
                        versus(metric, &|v| format!("{v:.2} µs"))
                    ),
                ));
            }
        }
        if let (Some(w), Some(n)) = (w(TLS_HANDSHAKES), n(TLS_HANDSHAKES)) {
            checks.push((
                w >= n,
                format!(
                    "TLS handshakes/s >= nginx: wsplice {} = {:.2}x nginx ({}){}{}",
                    thousands(w),
                    w / n,
                    thousands(n),
                    versus(TLS_HANDSHAKES, &thousands),
                    match (w_cpu(self, Kind::Wsplice), w_cpu(self, Kind::Nginx)) {
                        (Some(wc), Some(nc)) => format!(
                            "; proxy CPU per handshake {wc:.0} vs {nc:.0} µs ({:.2}x)",
                            wc / nc
                        ),
                        _ => String::new(),
                    }
                ),
            ));
        }
        if let (Some(w), Some(n)) = (w(WSS_IDLE_RSS), n(WSS_IDLE_RSS)) {
            checks.push((
                w <= 0.25 * n && self.settings.wss_idle >= 4000,
                format!(
                    "RSS per idle TLS tunnel <= 0.25x nginx: wsplice {} = {:.2}x nginx ({}) at {}{}",
                    bytes(w),
                    w / n,
                    bytes(n),
                    thousands(self.settings.wss_idle as f64),
                    versus(WSS_IDLE_RSS, &bytes)
                ),
            ));
        }
        checks
    }

    /// The targets, each with whether it was met and the figures behind it.
    pub fn checks(&self) -> Vec<(bool, String)> {
        let mut checks = Vec::new();
        let w = |metric| self.median(Kind::Wsplice, metric);
        let n = |metric| self.median(Kind::Nginx, metric);
        let h = |metric| self.median(Kind::Haproxy, metric);
        let d = |metric| self.median(Kind::Direct, metric);
        if let (Some(w), Some(n)) = (w(RR_CPU), n(RR_CPU)) {
            let below_haproxy = h(RR_CPU).is_none_or(|h| w < h);
            checks.push((
                w <= 0.5 * n && below_haproxy,
                format!(
                    "proxy CPU per message <= 0.5x nginx and below HAProxy: wsplice {w:.2} µs = {:.2}x nginx ({n:.2} µs){}",
                    w / n,
                    h(RR_CPU).map_or(String::new(), |h| format!(", HAProxy {h:.2} µs"))
                ),
            ));
        }
        if let Some(w) = w(IDLE_RSS) {
            checks.push((
                w <= 1024.0 && self.settings.idle >= 8000,
                format!(
                    "RSS per idle connection <= 1 KiB at 8,000: wsplice {} at {}{}{}",
                    bytes(w),
                    thousands(self.settings.idle as f64),
                    n(IDLE_RSS).map_or(String::new(), |n| format!(", nginx {}", bytes(n))),
                    h(IDLE_RSS).map_or(String::new(), |h| format!(", HAProxy {}", bytes(h)))
                ),
            ));
        }
        if let (Some(w), Some(n)) = (w(BULK), n(BULK)) {
            let of_direct = d(BULK).map(|d| w / d);
            checks.push((
                w >= 2.0 * n && of_direct.is_none_or(|r| r >= 0.7),
                format!(
                    "bulk >= 2x nginx and >= 0.7x direct: wsplice {w:.0} MB/s = {:.2}x nginx ({n:.0} MB/s){}{}",
                    w / n,
                    of_direct.map_or(String::new(), |r| format!(", {r:.2}x direct")),
                    match (self.median(Kind::Wsplice, BULK_CPU), self.median(Kind::Nginx, BULK_CPU)) {
                        (Some(wc), Some(nc)) => format!(
                            "; proxy CPU per MB {wc:.0} vs {nc:.0} µs ({:.2}x)",
                            wc / nc
                        ),
                        _ => String::new(),
                    }
                ),
            ));
        }
        if let (Some(w), Some(n)) = (w(HANDSHAKES), n(HANDSHAKES)) {
            checks.push((
                w >= 1.5 * n,
                format!(
                    "handshakes/s >= 1.5x nginx: wsplice {} = {:.2}x nginx ({})",
                    thousands(w),
                    w / n,
                    thousands(n)
                ),
            ));
        }
        if let (Some(w), Some(n)) = (w(RATE_P99), n(RATE_P99)) {
            checks.push((
                w < n,
                format!(
                    "p99 at {} msgs/s below nginx: wsplice {w:.1} µs, nginx {n:.1} µs",
                    thousands(self.settings.options.rate)
                ),
            ));
        }
        if let (Some(worst), Some(w99), Some(n99)) =
            (self.worst(Kind::Wsplice, HOG, true), w(HOG_P99), n(HOG_P99))
        {
            let rate = self.settings.options.fanout_rate;
            checks.push((
                worst >= 0.98 * rate && w99 <= n99,
                format!(
                    "with a CPU hog, no round below 98% of {} msgs/s and median p99 at most nginx's: wsplice worst round {} msgs/s, median p99 {} µs (worst {}), nginx {} µs",
                    thousands(rate),
                    thousands(worst),
                    thousands(w99),
                    opt(self.worst(Kind::Wsplice, HOG_P99, false), thousands),
                    thousands(n99)
                ),
            ));
        }
        checks
    }

    pub fn runs_csv(&self) -> String {
        let mut c = String::from(
            "target,cell,round,value,ops,p50_us,p99_us,proxy_cpu_us,cpu_us_per_op,proxy_cpu_percent,load_cpu_percent,errors,first_error,user_us_per_op,kernel_us_per_op,syscalls,syscall_window_ops,syscalls_per_op\n",
        );
        for r in &self.runs {
            let _ = writeln!(
                c,
                "{},{},{},{:.3},{},{:.1},{:.1},{},{},{},{:.1},{},\"{}\",{},{},{},{},{}",
                r.target.name(),
                r.cell.name(),
                r.round,
                r.value,
                r.ops,
                r.p50_us,
                r.p99_us,
                csv(r.proxy_cpu_us, 0),
                csv(r.cpu_per_op(), 3),
                csv(r.cpu_percent(), 1),
                r.load_percent(),
                r.errors,
                r.first_error.as_deref().unwrap_or("").replace('"', "'"),
                csv(r.user_per_op(), 3),
                csv(r.kernel_per_op(), 3),
                r.syscalls
                    .map_or(String::new(), |(calls, _)| calls.to_string()),
                r.syscalls.map_or(String::new(), |(_, ops)| ops.to_string()),
                csv(r.syscalls_per_op(), 3),
            );
        }
        c
    }

    pub fn summary_csv(&self) -> String {
        let columns: &[(&str, Metric)] = &[
            ("rr_msgs_per_s", RATE),
            ("rr_cpu_us_per_msg", RR_CPU),
            ("rate_p50_us", RATE_P50),
            ("rate_p99_us", RATE_P99),
            ("rate_cpu_us_per_msg", RATE_CPU),
            ("pipe_msgs_per_s", PIPE),
            ("pipe_cpu_us_per_msg", PIPE_CPU),
            ("bulk_mb_per_s", BULK),
            ("bulk_cpu_us_per_mb", BULK_CPU),
            ("handshakes_per_s", HANDSHAKES),
            ("handshake_cpu_us", HANDSHAKE_CPU),
            ("rss_bytes_per_idle_conn", IDLE_RSS),
            ("fanout_msgs_per_s", FANOUT),
            ("fanout_p50_us", FANOUT_P50),
            ("fanout_p99_us", FANOUT_P99),
            ("fanout_cpu_us_per_msg", FANOUT_CPU),
            ("hog_msgs_per_s", HOG),
            ("hog_p50_us", HOG_P50),
            ("hog_p99_us", HOG_P99),
            ("hog_cpu_us_per_msg", HOG_CPU),
            ("wss_rr_msgs_per_s", WSS_RR),
            ("wss_rr_cpu_us_per_msg", WSS_RR_CPU),
            ("wss_rr_many_msgs_per_s", WSS_MANY),
            ("wss_rr_many_cpu_us_per_msg", WSS_MANY_CPU),
            ("tls_handshakes_per_s", TLS_HANDSHAKES),
            ("tls_handshake_cpu_us", TLS_HANDSHAKE_CPU),
            ("wss_bulk_mb_per_s", WSS_BULK),
            ("wss_bulk_cpu_us_per_mb", WSS_BULK_CPU),
            ("rss_bytes_per_idle_tls_tunnel", WSS_IDLE_RSS),
            ("rr_p99_us", (Cell::Rr, p99)),
            ("rr_user_us_per_msg", (Cell::Rr, Run::user_per_op)),
            ("rr_kernel_us_per_msg", (Cell::Rr, Run::kernel_per_op)),
            ("rr_syscalls_per_msg", (Cell::Rr, Run::syscalls_per_op)),
            ("rr_many_msgs_per_s", (Cell::RrMany, value)),
            ("rr_many_p50_us", (Cell::RrMany, p50)),
            ("rr_many_p99_us", (Cell::RrMany, p99)),
            ("rr_many_cpu_us_per_msg", (Cell::RrMany, Run::cpu_per_op)),
            ("rr_many_user_us_per_msg", (Cell::RrMany, Run::user_per_op)),
            (
                "rr_many_kernel_us_per_msg",
                (Cell::RrMany, Run::kernel_per_op),
            ),
            (
                "rr_many_syscalls_per_msg",
                (Cell::RrMany, Run::syscalls_per_op),
            ),
            ("fanout_user_us_per_msg", (Cell::Fanout, Run::user_per_op)),
            (
                "fanout_kernel_us_per_msg",
                (Cell::Fanout, Run::kernel_per_op),
            ),
            (
                "fanout_syscalls_per_msg",
                (Cell::Fanout, Run::syscalls_per_op),
            ),
        ];
        let mut c = String::from("target");
        for (name, _) in columns {
            c.push(',');
            c.push_str(name);
        }
        c.push_str(",errors\n");
        for &(kind, _) in &self.versions {
            c.push_str(kind.name());
            for &(_, metric) in columns {
                c.push(',');
                c.push_str(&csv(self.median(kind, metric), 3));
            }
            let _ = writeln!(c, ",{}", self.errors(kind));
        }
        c
    }

    /// Writes table.md, summary.csv and runs.csv into a new dated folder under `root`.
    pub fn write(&self, root: &Path) -> std::io::Result<PathBuf> {
        let stamp: String = self
            .machine
            .date
            .chars()
            .map(|c| if c.is_ascii_digit() { c } else { '-' })
            .collect();
        let mut dir = root.join(&stamp);
        let mut n = 1;
        while dir.exists() {
            n += 1;
            dir = root.join(format!("{stamp}-{n}"));
        }
        fs::create_dir_all(&dir)?;
        fs::write(dir.join("table.md"), self.markdown())?;
        fs::write(dir.join("summary.csv"), self.summary_csv())?;
        fs::write(dir.join("runs.csv"), self.runs_csv())?;
        Ok(dir)
    }
}

fn w_cpu(summary: &Summary, kind: Kind) -> Option<f64> {
    summary.median(kind, TLS_HANDSHAKE_CPU)
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or("–".into(), f)
}

/// A CSV field: empty when not measured.
fn csv(v: Option<f64>, decimals: usize) -> String {
    v.map_or(String::new(), |v| format!("{v:.decimals$}"))
}

/// 12345.6 -> "12,346".
pub fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < -0.5 { format!("-{out}") } else { out }
}

/// A latency in µs: one decimal below 1,000, thousands separators above.
fn micros(v: f64) -> String {
    if v < 1000.0 {
        format!("{v:.1}")
    } else {
        thousands(v)
    }
}

/// A per-connection memory figure: bytes below 10 KiB, KiB above.
pub fn bytes(v: f64) -> String {
    if v.abs() < 10.0 * 1024.0 {
        format!("{v:.0} B")
    } else {
        format!("{:.1} KiB", v / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1234.4), "1,234");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(bytes(870.0), "870 B");
        assert_eq!(bytes(32.0 * 1024.0), "32.0 KiB");
    }

    #[test]
    fn utc_date_is_well_formed() {
        let d = utc_now();
        assert_eq!(d.len(), 16, "{d}");
        assert!(d.starts_with("20"), "{d}");
    }
}
