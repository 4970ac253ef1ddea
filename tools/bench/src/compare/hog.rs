//! A CPU hog for the `fanout-hog` cell: one busy-looping process per proxy CPU, pinned there
//! and given a scheduling weight (`--hog-nice`, default -5: about three quarters of the CPU
//! against a proxy at nice 0), as on a host with other work. A proxy that only loses
//! throughput in proportion is fine; one whose latency explodes has a wake-up, batching or
//! fairness defect.

use std::process::{Child, Command, Stdio};

use crate::sys;

/// The running hogs; dropping them stops them.
#[derive(Debug)]
pub struct Hog {
    children: Vec<Child>,
}

impl Hog {
    /// Starts one busy loop at `nice` on each of `cpus` (a shell loop: no system calls, all
    /// user time). Without the right to raise its priority, nice runs it at the usual one.
    pub fn start(cpus: &[usize], nice: i32) -> Hog {
        let mut children = Vec::new();
        for &cpu in cpus {
            let mut command = Command::new("nice");
            command
                .args([
                    "-n",
                    &nice.to_string(),
                    "/bin/sh",
                    "-c",
                    "while :; do :; done",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            sys::confine(&mut command, &[cpu]);
            match command.spawn() {
                Ok(child) => children.push(child),
                Err(e) => eprintln!("compare: cannot start a CPU hog on CPU {cpu}: {e}"),
            }
        }
        Hog { children }
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
