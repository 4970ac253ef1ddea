//! Starts wsplice under a small open-files limit with descriptors already taken, as a process
//! that inherited or leaked them would be: it starts (the limit fits `max_connections`) and
//! then runs out of descriptors before reaching `max_connections`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

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
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg(BIN)
        .arg(&config_path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bash");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
            }
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(addr) => addr,
        Err(_) => {
            let _ = child.kill();
            let status = child.wait().ok();
            panic!(
                "wsplice did not start under ulimit -n {nofile} ({status:?}):\n{}",
                log.lock().unwrap()
            );
        }
    };
    Proxy {
        child,
        addr,
        dir,
        log,
    }
}
