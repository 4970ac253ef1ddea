//! A proxy as /proc sees it: its process and every descendant (nginx's master and workers),
//! with their summed CPU time (utime + stime, and the two apart) and resident memory.

use std::collections::HashMap;
use std::fs;
use std::time::{Duration, Instant};

use crate::sys;

/// A process tree rooted at one pid.
#[derive(Debug, Clone, Copy)]
pub struct ProcTree {
    pub root: u32,
}

impl ProcTree {
    /// The root and all its live descendants.
    pub fn pids(&self) -> Vec<u32> {
        let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
        if let Ok(entries) = fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                    continue;
                };
                if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1)?.parse().ok()) {
                    children.entry(ppid).or_default().push(pid);
                }
            }
        }
        let mut pids = vec![self.root];
        let mut i = 0;
        while i < pids.len() {
            if let Some(kids) = children.get(&pids[i]) {
                pids.extend(kids);
            }
            i += 1;
        }
        pids
    }

    /// CPU time (utime + stime) of the whole tree so far, in microseconds.
    pub fn cpu_micros(&self) -> u64 {
        self.pids().into_iter().map(cpu_micros).sum()
    }

    /// User and kernel CPU time (utime, stime) of the whole tree so far, in clock ticks.
    pub fn cpu_ticks(&self) -> (u64, u64) {
        self.pids()
            .into_iter()
            .filter_map(stat_fields)
            .map(|f| {
                let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                (field(11), field(12))
            })
            .fold((0, 0), |(u, s), (du, ds)| (u + du, s + ds))
    }

    /// Resident memory of the whole tree, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let pages: u64 = self
            .pids()
            .into_iter()
            .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/statm")).ok())
            .filter_map(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum();
        pages * sys::page_size()
    }

    /// Waits (at most `limit`) until the tree has used no CPU for 100 ms, so work left over
    /// from one run (closing thousands of connections) is not billed to the next.
    pub fn settle(&self, limit: Duration) {
        let until = Instant::now() + limit;
        let mut last = self.cpu_micros();
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.cpu_micros();
            if now == last {
                return;
            }
            last = now;
        }
    }
}

/// CPU time (utime + stime, all threads) of one process, in microseconds: from its CPU-time
/// clock (nanosecond resolution) where readable, else from /proc/PID/stat (in clock ticks,
/// 10 ms on most systems).
pub fn cpu_micros(pid: u32) -> u64 {
    if let Some(nanos) = sys::process_cpu_nanos(pid) {
        return nanos / 1000;
    }
    let Some(f) = stat_fields(pid) else { return 0 };
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Fields 14 and 15 of /proc/PID/stat, counted after the command name.
    (field(11) + field(12)) * 1_000_000 / sys::clock_ticks()
}

/// The fields of /proc/PID/stat after the parenthesised command name (state first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = ProcTree {
            root: std::process::id(),
        };
        assert!(me.pids().contains(&std::process::id()));
        assert!(me.rss_bytes() > 0);
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(0);
        }
        assert!(me.cpu_micros() > 0);
        let clock = cpu_micros(std::process::id());
        let f = stat_fields(std::process::id()).unwrap();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        let from_stat = ticks * 1_000_000 / sys::clock_ticks();
        // The two sources agree to within a few ticks.
        assert!(
            clock + 50_000 >= from_stat && from_stat + 50_000 >= clock,
            "{clock} vs {from_stat}"
        );
    }
}
