//! What an operator installing wsplice relies on, checked without installing anything: the
//! systemd unit agrees with the shipped config and the binary, the .deb metadata ships what
//! it says, and `--help` documents every flag and signal. scripts/package-test.sh installs it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::BIN;

const UNIT: &str = "packaging/wsplice.service";
/// What the .deb installs as /etc/wsplice/wsplice.toml: the quick-start config/wsplice.toml
/// with the handoff socket on.
const PACKAGED_CONFIG: &str = "packaging/wsplice.toml";
/// The upgrade in place under systemd, as the unit and the README give it.
const UPGRADE_COMMAND: &str = "systemctl kill --kill-whom=main --signal=SIGUSR2 wsplice";

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

fn read(path: &str) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8(b).unwrap())
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn read_unit() -> String {
    read(UNIT)
}

/// The packaged config as installed: beside the upstream file the .deb ships with it.
fn load_packaged_config() -> wsplice::config::Config {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(PACKAGED_CONFIG, dir.path().join("wsplice.toml")).unwrap();
    std::fs::copy("config/upstreams.toml", dir.path().join("upstreams.toml")).unwrap();
    wsplice::upstream::load(&dir.path().join("wsplice.toml"))
        .unwrap()
        .0
}

#[test]
fn unit_runs_the_shipped_config_and_signals_as_documented() {
    let unit = read_unit();
    assert_eq!(unit_value(&unit, "Type"), "notify");
    assert_eq!(
        unit_value(&unit, "NotifyAccess"),
        "all",
        "the process that takes over sends MAINPID= and READY=1 before it is the main one"
    );
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
    let config = load_packaged_config();
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
fn packaged_config_is_the_quick_start_one_with_a_handoff_socket_the_unit_makes() {
    let quick = read("config/wsplice.toml");
    assert!(
        quick.contains("\n# handoff = "),
        "config/wsplice.toml shows handoff, off"
    );
    assert_eq!(
        read(PACKAGED_CONFIG),
        quick.replacen("\n# handoff = ", "\nhandoff = ", 1),
        "{PACKAGED_CONFIG} must be config/wsplice.toml with the handoff line on, nothing else"
    );
    let (config, _) = wsplice::upstream::load(Path::new("config/wsplice.toml")).unwrap();
    assert_eq!(
        config.handoff, None,
        "the quick start needs no runtime directory"
    );

    let socket = load_packaged_config()
        .handoff
        .expect("the .deb's config has handoff");
    let unit = read_unit();
    let runtime = Path::new("/run").join(unit_value(&unit, "RuntimeDirectory"));
    assert_eq!(
        socket.parent(),
        Some(runtime.as_path()),
        "the handoff socket must be in the unit's RuntimeDirectory, the only place under /run \
         that ProtectSystem=strict leaves writable"
    );
    assert_eq!(unit_value(&unit, "RuntimeDirectoryMode"), "0700");
    assert!(
        unit_values(&unit, "RuntimeDirectoryPreserve").is_empty(),
        "the directory goes when the unit stops; an upgrade in place never stops it"
    );
    assert!(
        unit.contains(UPGRADE_COMMAND),
        "the unit names the upgrade command"
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
    for source in [PACKAGED_CONFIG, "config/upstreams.toml"] {
        assert!(assets.contains(&(source.into(), "etc/wsplice/".into())));
    }
    for name in ["wsplice.toml", "upstreams.toml"] {
        assert!(conffiles.contains(&format!("/etc/wsplice/{name}").as_str()));
    }
    let units = &deb["systemd-units"];
    assert!(
        Path::new(units["unit-scripts"].as_str().unwrap())
            .join("wsplice.service")
            .exists()
    );
    for key in ["restart-after-upgrade", "stop-on-upgrade"] {
        assert_eq!(
            units.get(key).and_then(|v| v.as_bool()),
            Some(false),
            "{key} = false: postinst upgrades in place instead, keeping open WebSockets"
        );
    }
    let scripts = deb["maintainer-scripts"].as_str().unwrap();
    let postinst = read(Path::new(scripts).join("postinst").to_str().unwrap());
    let generated = postinst
        .find("#DEBHELPER#")
        .expect("cargo-deb puts the systemd steps there");
    assert!(postinst.contains("useradd --system"), "the unit's user");
    let upgrade = postinst
        .find("kill -USR2")
        .expect("postinst upgrades in place");
    assert!(
        generated < upgrade,
        "the upgrade in place runs after the generated daemon-reload"
    );
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
        "--takeover",
        "SIGHUP",
        "SIGUSR2",
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
    let upgrading = readme
        .split("## Upgrading")
        .nth(1)
        .expect("an \"Upgrading\" section");
    for needle in [
        UPGRADE_COMMAND,
        "--takeover",
        "kill -USR2",
        "wsplice_handoff_tunnels_total",
    ] {
        assert!(
            upgrading.contains(needle),
            "the Upgrading section lacks {needle}"
        );
    }
    assert!(readme.contains("(docs/demo.png)"), "the screenshot link");
    let png = std::fs::read("docs/demo.png").unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "docs/demo.png is a PNG"
    );
}
