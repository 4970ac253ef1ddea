//! Starts wsplice under a small open-files limit with descriptors already taken, as a process
//! that inherited or leaked them would be: it starts (the limit fits `max_connections`) and
//! then runs out of descriptors before reaching `max_connections`.

use std::process::Command;

use super::{BIN, Proxy, TestConfig, write_files};

/// Runs wsplice through bash with `ulimit -n nofile` and descriptors `taken` held open
/// (inherited across exec, counted against the limit).
pub fn start(
    config: &TestConfig,
    upstreams: &str,
    nofile: u32,
    taken: std::ops::Range<u32>,
) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let config_path = write_files(dir.path(), &config.toml(), upstreams);
    let script = format!(
        "ulimit -n {nofile} || exit 90; for fd in $(seq {} {}); do eval \"exec $fd</dev/null\" || exit 91; done; exec \"$0\" --config \"$1\"",
        taken.start,
        taken.end - 1
    );
    let mut command = Command::new("bash");
    command.arg("-c").arg(script).arg(BIN).arg(&config_path);
    Proxy::spawn(command, dir, &format!(" under ulimit -n {nofile}"))
}
