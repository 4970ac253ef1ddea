//! System calls a proxy makes, counted by `perf stat -e raw_syscalls:sys_enter` attached to
//! its processes (every thread). Counting taxes each system call a little, so compare does it
//! in a separate short window after a cell's measured one, never in the window whose msgs/s
//! and CPU it reports. perf starts with its counter disabled and is switched on and off at
//! the window's edges through a control pipe, so attaching (tens of ms) falls outside it.
//! Operations io_uring runs for a proxy are not system calls: only `io_uring_enter` counts.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::report::Probe;
use crate::sys;

const EVENT: &str = "raw_syscalls:sys_enter";
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `perf` can count [`EVENT`] here (installed, allowed, tracepoint present): a
/// one-off count of `true`.
pub fn available(perf: &Path) -> Result<(), String> {
    let out = Command::new(perf)
        .args(["stat", "-x,", "-e", EVENT, "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", perf.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    match parse(&stderr) {
        Some(_) if out.status.success() => Ok(()),
        _ => Err(format!(
            "{} stat -e {EVENT} failed: {}",
            perf.display(),
            stderr.trim()
        )),
    }
}

/// A `perf stat` attached to some processes, counting only between [`Probe::start`] and
/// [`Probe::end`].
pub struct Counter {
    perf: Child,
    dir: tempfile::TempDir,
    control: File,
    ack: File,
    /// Whether both edges of the window were acknowledged, so the count is the window's.
    started: bool,
    ended: bool,
}

impl Counter {
    /// Attaches `perf` to `pids` with the counter off.
    pub fn attach(perf: &Path, pids: &[u32]) -> Result<Counter, String> {
        let err = |what: &str, e: std::io::Error| format!("perf stat: {what}: {e}");
        let dir = tempfile::Builder::new()
            .prefix("wsplice-bench-perf-")
            .tempdir()
            .map_err(|e| err("temporary directory", e))?;
        let (control_path, ack_path) = (dir.path().join("control"), dir.path().join("ack"));
        sys::mkfifo(&control_path).map_err(|e| err("control pipe", e))?;
        sys::mkfifo(&ack_path).map_err(|e| err("ack pipe", e))?;
        // Both ends opened read-write before perf starts: neither open blocks, and perf's own
        // opens find a peer.
        let open = |path: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
        };
        let control = open(&control_path).map_err(|e| err("control pipe", e))?;
        let ack = open(&ack_path).map_err(|e| err("ack pipe", e))?;
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        let perf = Command::new(perf)
            .arg("stat")
            .args(["-x,", "-e", EVENT, "-D", "-1"])
            .arg("--control")
            .arg(format!(
                "fifo:{},{}",
                control_path.display(),
                ack_path.display()
            ))
            .arg("-o")
            .arg(dir.path().join("count"))
            .args(["-p", &pids.join(",")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| err("start", e))?;
        Ok(Counter {
            perf,
            dir,
            control,
            ack,
            started: false,
            ended: false,
        })
    }

    /// Sends `command` and waits for perf's acknowledgement (perf answers only once it has
    /// attached and is counting, or has stopped).
    fn command(&mut self, command: &str) -> bool {
        if self
            .control
            .write_all(format!("{command}\n").as_bytes())
            .is_err()
        {
            return false;
        }
        let until = Instant::now() + ACK_TIMEOUT;
        let mut seen = Vec::new();
        let mut buf = [0u8; 64];
        while Instant::now() < until {
            match self.ack.read(&mut buf) {
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if seen.windows(3).any(|w| w == b"ack") {
                        return true;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if matches!(self.perf.try_wait(), Ok(Some(_))) {
                        return false;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Stops perf and returns the count of the window, or why there is none.
    pub fn finish(mut self) -> Result<u64, String> {
        let _ = sys::signal(self.perf.id(), libc::SIGINT);
        let until = Instant::now() + ACK_TIMEOUT;
        while matches!(self.perf.try_wait(), Ok(None)) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        if matches!(self.perf.try_wait(), Ok(None)) {
            let _ = self.perf.kill();
            let _ = self.perf.wait();
            return Err("perf stat did not stop".into());
        }
        if !(self.started && self.ended) {
            return Err("perf stat did not acknowledge the window's edges".into());
        }
        let out = fs::read_to_string(self.dir.path().join("count"))
            .map_err(|e| format!("perf stat wrote no count: {e}"))?;
        parse(&out).ok_or_else(|| format!("no {EVENT} count in perf's output: {out}"))
    }
}

impl Probe for Counter {
    fn start(&mut self) {
        self.started = self.command("enable");
    }

    fn end(&mut self) {
        self.ended = self.command("disable");
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        if matches!(self.perf.try_wait(), Ok(None)) {
            let _ = self.perf.kill();
            let _ = self.perf.wait();
        }
    }
}

/// The count from `perf stat -x,` output: the first field of the event's line (`<not
/// counted>` and `<not supported>` are none).
fn parse(output: &str) -> Option<u64> {
    output
        .lines()
        .find(|l| l.split(',').nth(2) == Some(EVENT))
        .and_then(|l| l.split(',').next()?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_perf_csv() {
        let out = "# started on Wed Dec  2 21:35:40 2026\n\n795605,,raw_syscalls:sys_enter,203769778,100.00,,Events disabled\nEvents enabled\n";
        assert_eq!(parse(out), Some(795_605));
        assert_eq!(
            parse("<not counted>,,raw_syscalls:sys_enter,0,100.00,,"),
            None
        );
        assert_eq!(parse("Events disabled\n"), None);
    }
}
