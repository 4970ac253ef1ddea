//! What an operator installing wsplice relies on, checked without installing anything: the
//! systemd unit agrees with the shipped config and the binary, the .deb metadata ships what
//! it says, and `--help` documents every flag and signal. scripts/package-test.sh installs it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::BIN;

const UNIT: &str = "packaging/wsplice.service";

/// Every value of `key=` in the unit, in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_string())
        .collect()
}

fn unit_value(unit: &str, key: &str) -> String {
    let values = unit_values(unit, key);
    assert_eq!(values.len(), 1, "{key}= should appear once: {values:?}");
    values[0].clone()
}

fn read_unit() -> String {
    std::fs::read(UNIT)
        .map(|b| String::from_utf8(b).unwrap())
        .unwrap()
}

#[test]
fn unit_runs_the_shipped_config_and_signals_as_documented() {
    let unit = read_unit();
    assert_eq!(unit_value(&unit, "Type"), "notify");
    assert_eq!(
        unit_value(&unit, "ExecStart"),
        "/usr/bin/wsplice --config /etc/wsplice/wsplice.toml"
    );
    assert_eq!(
        unit_values(&unit, "ExecReload"),
        [
            "/usr/bin/wsplice --check --config /etc/wsplice/wsplice.toml",
            "/bin/kill -HUP $MAINPID"
        ]
    );
    assert_eq!(unit_value(&unit, "KillSignal"), "SIGTERM");
    assert_eq!(unit_value(&unit, "Restart"), "on-failure");
    assert_eq!(unit_value(&unit, "User"), "wsplice");
    assert_eq!(unit_value(&unit, "NoNewPrivileges"), "yes");
    assert_eq!(unit_value(&unit, "ProtectSystem"), "strict");
}

#[test]
fn unit_stop_timeout_exceeds_the_drain_and_files_limit_fits() {
    let unit = read_unit();
    let (config, _) = wsplice::upstream::load(Path::new("config/wsplice.toml")).unwrap();
    let drain = config.timeouts.drain.expect("the shipped config drains");
    let stop: Duration = humantime::parse_duration(&unit_value(&unit, "TimeoutStopSec")).unwrap();
    assert!(
        stop >= drain + Duration::from_secs(5),
        "TimeoutStopSec {stop:?} must exceed timeouts.drain {drain:?}, or systemd cuts the drain"
    );
    let files: u64 = unit_value(&unit, "LimitNOFILE").parse().unwrap();
    let needed =
        wsplice::os::fdlimit::needed(config.limits.max_connections, 256, config.listen.len());
    assert!(
        files >= needed,
        "LimitNOFILE {files} < {needed} (max_connections with 256 workers)"
    );
}

#[test]
fn unit_hardening_keeps_io_uring_and_the_notify_socket() {
    let unit = read_unit();
    let filter = unit_value(&unit, "SystemCallFilter");
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(filter.split_whitespace().any(|c| c == call), "{filter}");
    }
    let families = unit_value(&unit, "RestrictAddressFamilies");
    for family in ["AF_INET", "AF_INET6", "AF_UNIX"] {
        assert!(
            families.split_whitespace().any(|f| f == family),
            "{family} missing (AF_UNIX carries READY=1): {families}"
        );
    }
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    // The unit names /usr/bin/wsplice, which verify wants to exist: check a copy naming BIN.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("wsplice.service");
    std::fs::write(&copy, read_unit().replace("/usr/bin/wsplice", BIN)).unwrap();
    let out = match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!("systemd-analyze: {e}: apt-get install systemd (scripts/test.sh does)"),
    };
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}

#[test]
fn deb_metadata_ships_binary_unit_and_config_as_conffiles() {
    let manifest: toml::Table = std::fs::read("Cargo.toml")
        .map(|b| toml::from_str(&String::from_utf8(b).unwrap()).unwrap())
        .unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets: Vec<(String, String)> = deb["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_array().unwrap();
            (
                a[0].as_str().unwrap().to_string(),
                a[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(assets.contains(&("target/release/wsplice".into(), "usr/bin/".into())));
    for (source, _) in assets.iter().filter(|(s, _)| !s.starts_with("target/")) {
        assert!(Path::new(source).exists(), "asset {source} missing");
    }
    let conffiles: Vec<&str> = deb["conf-files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for name in ["wsplice.toml", "upstreams.toml"] {
        assert!(assets.contains(&(format!("config/{name}"), "etc/wsplice/".into())));
        assert!(conffiles.contains(&format!("/etc/wsplice/{name}").as_str()));
    }
    let units = deb["systemd-units"]["unit-scripts"].as_str().unwrap();
    assert!(Path::new(units).join("wsplice.service").exists());
    let scripts = deb["maintainer-scripts"].as_str().unwrap();
    let postinst = std::fs::read(Path::new(scripts).join("postinst"))
        .map(|b| String::from_utf8(b).unwrap())
        .unwrap();
    assert!(
        postinst.contains("#DEBHELPER#"),
        "cargo-deb puts the systemd steps there"
    );
    assert!(postinst.contains("useradd --system"), "the unit's user");
}

#[test]
fn help_documents_every_flag_signal_and_variable() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--config",
        "--check",
        "--version",
        "--help",
        "SIGHUP",
        "SIGTERM",
        "SIGINT",
        "timeouts.drain",
        "RUST_LOG",
        "NOTIFY_SOCKET",
        "Exit codes",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[test]
fn readme_explains_the_service_and_shows_the_demo() {
    let readme = std::fs::read("README.md")
        .map(|b| String::from_utf8(b).unwrap())
        .unwrap();
    let service = readme
        .split("## Run it as a service")
        .nth(1)
        .expect("a \"Run it as a service\" section");
    for step in [
        "dpkg -i",
        "/etc/wsplice/upstreams.toml",
        "systemctl reload wsplice",
    ] {
        assert!(service.contains(step), "the service section lacks {step}");
    }
    assert!(readme.contains("(docs/demo.png)"), "the screenshot link");
    let png = std::fs::read("docs/demo.png").unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "docs/demo.png is a PNG"
    );
}
