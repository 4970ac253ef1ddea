//! The load tool (tools/bench) through the real wsplice binary: rr, bulk and idle verify
//! every echo and every byte through the proxy, and a short `compare` of direct against
//! wsplice produces its table and CSV files with no errors, for the plain cells and for the
//! TLS ones (and against nginx and HAProxy's TLS configs where they are installed), with the
//! cost table's user/kernel split and system calls (n/a, not a failure, without perf).

mod common;

use std::time::Duration;

use common::{Proxy, TestConfig, upstreams};
use wsplice_bench::compare;
use wsplice_bench::load::{Load, bulk, echo, idle};
use wsplice_bench::report::{NoProbe, Report};
use wsplice_bench::upstream::Upstream;

fn load(target: std::net::SocketAddr, connections: usize) -> Load {
    Load {
        target,
        connections,
        duration: Duration::from_millis(400),
        warmup: Duration::from_millis(100),
        tls: None,
    }
}

fn assert_clean(report: &Report) {
    assert_eq!(report.errors, 0, "{report}");
    assert!(
        report.messages + report.bytes > 0,
        "nothing counted: {report}"
    );
}

#[test]
fn rr_bulk_and_idle_through_wsplice() {
    let up = Upstream::start("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let proxy = Proxy::start(&TestConfig::default(), &upstreams("backend", &[up.addr]));
    let rt = wsplice_bench::runtime(1).unwrap();
    rt.block_on(async {
        let closed = echo::Pace::Closed { depth: 1 };
        let rr = echo::run(&load(proxy.addr, 8), 64, closed, &mut NoProbe)
            .await
            .unwrap();
        assert_clean(&rr);

        let bulk = bulk::run(&load(proxy.addr, 2), 64 * 1024, &mut NoProbe)
            .await
            .unwrap();
        assert_clean(&bulk);

        let held = idle::run(
            &load(proxy.addr, 100),
            Duration::from_millis(100),
            &mut NoProbe,
        )
        .await
        .unwrap();
        assert_clean(&held);
        assert_eq!(held.messages, 100, "{held}");
    });
}

/// The CPUs this test may run on, as a list `compare` accepts.
fn allowed_cpus() -> String {
    let status = std::fs::read("/proc/self/status").unwrap();
    String::from_utf8_lossy(&status)
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn compare_direct_against_wsplice() {
    let results = tempfile::tempdir().unwrap();
    let cpus = allowed_cpus();
    let args = [
        "compare",
        "--targets",
        "direct,wsplice",
        "--cells",
        "rr,rr-many,rate,pipe,bulk,handshake,idle,fanout",
        "--rr-many-connections",
        "40",
        "--syscall-window",
        "200ms",
        "--fanout-connections",
        "50",
        "--fanout-rate",
        "500",
        "--duration",
        "300ms",
        "--rounds",
        "1",
        "--idle",
        "100",
        "--idle-hold",
        "100ms",
        "--load-cpus",
        &cpus,
        "--proxy-cpus",
        &cpus,
        "--workers",
        "1",
        "--wsplice-bin",
        common::BIN,
        "--results",
        results.path().to_str().unwrap(),
    ];
    let options = <compare::Options as clap::Parser>::try_parse_from(args).unwrap();
    let summary = compare::run(&options).unwrap();

    for run in &summary.runs {
        assert_eq!(run.errors, 0, "{}", run.describe());
    }
    // Seven load cells for each target, plus the idle cell for wsplice.
    assert_eq!(summary.runs.len(), 15);
    let table = summary.markdown();
    assert!(
        table.contains("| direct |") && table.contains("| wsplice |"),
        "{table}"
    );
    assert!(table.contains("| target | fanout msgs/s |"), "{table}");
    let wsplice_rr = summary
        .runs
        .iter()
        .find(|r| r.target == compare::proxies::Kind::Wsplice && r.cell == compare::Cell::Rr)
        .unwrap();
    assert!(wsplice_rr.value > 0.0 && wsplice_rr.cpu_per_op().unwrap() > 0.0);
    assert_cost_table(&summary, &table);
    let rr_many = summary
        .runs
        .iter()
        .find(|r| r.target == compare::proxies::Kind::Wsplice && r.cell == compare::Cell::RrMany)
        .unwrap();
    assert!(
        rr_many.value > 0.0 && rr_many.p99_us > 0.0,
        "{}",
        rr_many.describe()
    );

    let dirs: Vec<_> = std::fs::read_dir(results.path()).unwrap().collect();
    assert_eq!(dirs.len(), 1);
    let dir = dirs[0].as_ref().unwrap().path();
    for file in ["table.md", "summary.csv", "runs.csv"] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    let summary_csv = String::from_utf8(std::fs::read(dir.join("summary.csv")).unwrap()).unwrap();
    assert_eq!(summary_csv.lines().count(), 3, "{summary_csv}");
    for column in [
        "rr_many_p99_us",
        "rr_user_us_per_msg",
        "rr_syscalls_per_msg",
    ] {
        assert!(summary_csv.contains(column), "{column}: {summary_csv}");
    }
    let runs_csv = String::from_utf8(std::fs::read(dir.join("runs.csv")).unwrap()).unwrap();
    assert!(runs_csv.starts_with("target,cell,round,value,ops,p50_us,p99_us,proxy_cpu_us,cpu_us_per_op,proxy_cpu_percent,load_cpu_percent,errors,first_error,"), "{runs_csv}");
}

/// The cost table has a row per load cell and contender; wsplice's CPU splits into user and
/// kernel parts that add up, and its system calls are counted wherever perf can count them.
fn assert_cost_table(summary: &compare::table::Summary, table: &str) {
    assert!(
        table.contains("| cell | target | ops/s | p50 / p99 µs | proxy CPU µs/op | user µs/op | kernel µs/op | syscalls/op |"),
        "{table}"
    );
    let perf = compare::syscalls::available(std::path::Path::new("perf")).is_ok();
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("| rr | wsplice |"))
        .collect();
    assert_eq!(rows.len(), 1, "{table}");
    assert_eq!(rows[0].ends_with("| n/a |"), !perf, "{table}");
    for run in summary
        .runs
        .iter()
        .filter(|r| r.target == compare::proxies::Kind::Wsplice && !r.cell.is_idle())
    {
        if let (Some(cpu), Some(user), Some(kernel)) =
            (run.cpu_per_op(), run.user_per_op(), run.kernel_per_op())
        {
            assert!(
                (user + kernel - cpu).abs() < 1e-6 * cpu.max(1.0),
                "{}",
                run.describe()
            );
            assert!(user >= 0.0 && kernel >= 0.0, "{}", run.describe());
        }
        if perf {
            assert!(run.syscalls_per_op().is_some(), "{}", run.describe());
        }
    }
}

/// Without perf, the syscalls column says n/a and the comparison still succeeds.
#[test]
fn compare_without_perf_says_na() {
    let results = tempfile::tempdir().unwrap();
    let cpus = allowed_cpus();
    let args = [
        "compare",
        "--targets",
        "wsplice",
        "--cells",
        "rr",
        "--duration",
        "200ms",
        "--rounds",
        "1",
        "--load-cpus",
        &cpus,
        "--proxy-cpus",
        &cpus,
        "--workers",
        "1",
        "--wsplice-bin",
        common::BIN,
        "--perf-bin",
        "/nonexistent/perf",
        "--results",
        results.path().to_str().unwrap(),
    ];
    let options = <compare::Options as clap::Parser>::try_parse_from(args).unwrap();
    let summary = compare::run(&options).unwrap();
    assert_eq!(summary.runs.len(), 1);
    let run = &summary.runs[0];
    assert_eq!(run.errors, 0, "{}", run.describe());
    assert!(run.syscalls.is_none(), "{}", run.describe());
    let table = summary.markdown();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("| rr | wsplice |") && l.ends_with("| n/a |")),
        "{table}"
    );
}

/// `compare` with the TLS cells only, a fraction of a second each; every run must be clean.
fn compare_tls(targets: &str, extra: &[&str]) -> compare::table::Summary {
    let results = tempfile::tempdir().unwrap();
    let cpus = allowed_cpus();
    let mut args = vec![
        "compare",
        "--targets",
        targets,
        "--cells",
        "tls",
        "--duration",
        "300ms",
        "--rounds",
        "1",
        "--wss-idle",
        "50",
        "--wss-rr-many-connections",
        "20",
        "--syscall-window",
        "200ms",
        "--idle-hold",
        "100ms",
        "--load-cpus",
        &cpus,
        "--proxy-cpus",
        &cpus,
        "--workers",
        "1",
        "--wsplice-bin",
        common::BIN,
        "--results",
        results.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let options = <compare::Options as clap::Parser>::try_parse_from(args).unwrap();
    let summary = compare::run(&options).unwrap();
    for run in &summary.runs {
        assert_eq!(run.errors, 0, "{}", run.describe());
        assert!(run.cell.is_tls(), "{}", run.describe());
        if !run.cell.is_idle() {
            // (The idle cell's RSS figure may be below zero with this few connections.)
            assert!(run.value > 0.0, "{}", run.describe());
            assert!(run.cpu_per_op().unwrap() > 0.0, "{}", run.describe());
        }
    }
    summary
}

#[test]
fn compare_tls_cells_through_wsplice() {
    let summary = compare_tls("direct,wsplice", &[]);
    // Four load cells and the idle one, for wsplice only: direct has no TLS.
    assert_eq!(summary.runs.len(), 5, "{:?}", summary.runs);
    assert!(
        summary
            .runs
            .iter()
            .all(|r| r.target == compare::proxies::Kind::Wsplice)
    );
    let table = summary.markdown();
    assert!(table.contains("| wsplice |"), "{table}");
    assert!(table.contains("TLS handshakes/s"), "{table}");
    assert!(!table.contains("| direct |"), "{table}");
    assert!(!table.contains("rr msgs/s | rr proxy CPU"), "{table}");
}

/// The nginx and HAProxy TLS configs, where both are installed (CI may have neither).
#[test]
fn compare_tls_cells_through_nginx_and_haproxy_when_installed() {
    let find = |name: &str| {
        ["/usr/sbin", "/usr/bin", "/usr/local/sbin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(name))
            .find(|p| p.is_file())
    };
    let (Some(nginx), Some(haproxy)) = (find("nginx"), find("haproxy")) else {
        eprintln!("nginx or haproxy not installed: skipped");
        return;
    };
    let (nginx, haproxy) = (nginx.display().to_string(), haproxy.display().to_string());
    let summary = compare_tls(
        "nginx,haproxy",
        &["--nginx-bin", &nginx, "--haproxy-bin", &haproxy],
    );
    assert_eq!(summary.runs.len(), 10, "{:?}", summary.runs);
    let checks = summary.tls_checks();
    assert!(checks.is_empty(), "no wsplice, no targets: {checks:?}");
}
