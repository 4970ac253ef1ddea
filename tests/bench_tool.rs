//! The load tool (tools/bench) through the real wsplice binary: rr, bulk and idle verify
//! every echo and every byte through the proxy, and a short `compare` of direct against
//! wsplice produces its table and CSV files with no errors, for the plain cells and for the
//! TLS ones (and against nginx and HAProxy's TLS configs where they are installed).

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
        "rr,rate,pipe,bulk,handshake,idle,fanout",
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
    // Six load cells for each target, plus the idle cell for wsplice.
    assert_eq!(summary.runs.len(), 13);
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

    let dirs: Vec<_> = std::fs::read_dir(results.path()).unwrap().collect();
    assert_eq!(dirs.len(), 1);
    let dir = dirs[0].as_ref().unwrap().path();
    for file in ["table.md", "summary.csv", "runs.csv"] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    let summary_csv = String::from_utf8(std::fs::read(dir.join("summary.csv")).unwrap()).unwrap();
    assert_eq!(summary_csv.lines().count(), 3, "{summary_csv}");
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
