//! The access log: one line per connection when it closes, in logfmt. Workers hand finished
//! lines to a writer thread through a bounded queue and never wait on it: if the writer falls
//! behind, lines are dropped and counted rather than stalling traffic.

use std::fmt::Write as _;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, SystemTime};

use crate::config::AccessLogTarget;

/// Lines waiting for the writer before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// The sending side, shared by all workers.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: SyncSender<String>,
}

/// One finished connection.
pub struct Entry<'a> {
    pub client: SocketAddr,
    pub route: &'a str,
    /// The server as the upstream file writes it (`10.0.0.5:3000`, `unix:/run/chat.sock`).
    pub upstream: Option<&'a dyn std::fmt::Display>,
    pub status: u16,
    pub client_to_upstream: u64,
    pub upstream_to_client: u64,
    pub duration: Duration,
    pub end: &'a str,
}

impl AccessLog {
    /// Opens the target and starts the writer thread; `None` when the log is off.
    pub fn open(target: &AccessLogTarget) -> io::Result<Option<AccessLog>> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok(None),
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("wsplice-access-log".into())
            .spawn(move || write_lines(rx, BufWriter::new(out)))?;
        Ok(Some(AccessLog { tx }))
    }

    /// Queues the line for `entry`; false if it was dropped (writer behind or gone).
    pub fn record(&self, entry: &Entry<'_>) -> bool {
        match self.tx.try_send(format_entry(entry, SystemTime::now())) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

/// `time=... client=... route=... upstream=... status=... ...`, one line.
pub fn format_entry(e: &Entry<'_>, at: SystemTime) -> String {
    let mut line = String::with_capacity(192);
    let upstream = e
        .upstream
        .map_or_else(|| "-".to_string(), ToString::to_string);
    // A socket path with a space or a quote would split the logfmt field: quote it then.
    let upstream =
        if upstream.contains([' ', '"', '\\', '=']) || upstream.contains(char::is_control) {
            format!("{upstream:?}")
        } else {
            upstream
        };
    // A client named by a trusted proxy's X-Forwarded-For has no known port (0): the address
    // alone then.
    let client: &dyn std::fmt::Display = match e.client.port() {
        0 => &e.client.ip(),
        _ => &e.client,
    };
    let _ = write!(
        line,
        "time={} client={} route={:?} upstream={} status={} client_to_upstream={} upstream_to_client={} duration_ms={} end={:?}",
        humantime::format_rfc3339_millis(at),
        client,
        e.route,
        upstream,
        e.status,
        e.client_to_upstream,
        e.upstream_to_client,
        e.duration.as_millis(),
        e.end,
    );
    line
}

fn write_lines(rx: Receiver<String>, mut out: impl Write) {
    while let Ok(line) = rx.recv() {
        let _ = writeln!(out, "{line}");
        // Write what else is queued, then flush once per burst.
        while let Ok(line) = rx.try_recv() {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_is_one_logfmt_line() {
        let entry = Entry {
            client: "127.0.0.1:5000".parse().unwrap(),
            route: "/websocket",
            upstream: Some(&"127.0.0.1:3000"),
            status: 101,
            client_to_upstream: 12,
            upstream_to_client: 34,
            duration: Duration::from_millis(1500),
            end: "closed",
        };
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            format_entry(&entry, at),
            "time=2023-11-14T22:13:20.000Z client=127.0.0.1:5000 route=\"/websocket\" upstream=127.0.0.1:3000 status=101 client_to_upstream=12 upstream_to_client=34 duration_ms=1500 end=\"closed\""
        );
        let unix = Entry {
            upstream: Some(&"unix:/run/chat.sock"),
            ..entry
        };
        assert!(format_entry(&unix, at).contains(" upstream=unix:/run/chat.sock "));
        let spaced = Entry {
            upstream: Some(&"unix:/run/my app.sock"),
            ..unix
        };
        assert!(format_entry(&spaced, at).contains(" upstream=\"unix:/run/my app.sock\" "));
        let forwarded = Entry {
            client: "[2001:db8::9]:0".parse().unwrap(),
            ..spaced
        };
        assert!(format_entry(&forwarded, at).contains(" client=2001:db8::9 "));
    }
}
