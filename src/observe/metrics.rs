//! Metrics, defined once here. Each worker writes only its own block of counters, with plain
//! loads and stores (one writer, so no locked read-modify-write and no shared cache line on
//! the hot path); a scrape sums the blocks into the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Labels of the two directions, shared by logs and metrics.
pub const CLIENT_TO_UPSTREAM: &str = "client->upstream";
pub const UPSTREAM_TO_CLIENT: &str = "upstream->client";

/// A counter or gauge with a single writer thread; any thread may read it.
#[derive(Debug, Default)]
pub struct Meter(AtomicU64);

impl Meter {
    /// Adds `n`. Only the owning worker calls this, so load + store cannot lose an update.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// How an upgrade request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// The upstream answered a valid `101`; the tunnel opened.
    Tunnelled,
    /// The upstream answered something else, which was passed on.
    Refused,
    /// The request was refused by wsplice before any upstream saw it.
    Rejected,
    /// No usable upstream answer: connect failure, timeout, invalid `101`.
    UpstreamFailed,
}

impl Upgrade {
    const ALL: [Upgrade; 4] = [
        Upgrade::Tunnelled,
        Upgrade::Refused,
        Upgrade::Rejected,
        Upgrade::UpstreamFailed,
    ];

    fn label(self) -> &'static str {
        match self {
            Upgrade::Tunnelled => "tunnelled",
            Upgrade::Refused => "refused",
            Upgrade::Rejected => "rejected",
            Upgrade::UpstreamFailed => "upstream_failed",
        }
    }
}

/// Which per-client limit refused a client (429).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `limits.max_connections_per_ip`, at accept.
    Connections,
    /// `limits.handshake_rate_per_ip`, per request head.
    Rate,
}

impl Limit {
    const ALL: [Limit; 2] = [Limit::Connections, Limit::Rate];

    fn label(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::Rate => "rate",
        }
    }
}

/// How a TLS listener's handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsHandshake {
    Ok,
    /// rustls refused it (the reason is logged at debug) or the client left.
    Failed,
    /// Not complete within `timeouts.handshake`.
    TimedOut,
    /// A plain HTTP request, answered `400`.
    PlainHttp,
}

impl TlsHandshake {
    const ALL: [TlsHandshake; 4] = [
        TlsHandshake::Ok,
        TlsHandshake::Failed,
        TlsHandshake::TimedOut,
        TlsHandshake::PlainHttp,
    ];

    fn label(self) -> &'static str {
        match self {
            TlsHandshake::Ok => "ok",
            TlsHandshake::Failed => "failed",
            TlsHandshake::TimedOut => "timed_out",
            TlsHandshake::PlainHttp => "plain_http",
        }
    }
}

/// Why a connection on a `proxy_protocol` listener was closed before its PROXY header was
/// taken; nothing of it reached an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyRefusal {
    /// The TCP peer is not in `trusted_proxies`.
    Untrusted,
    /// The connection starts with something else (a request, a TLS hello).
    Missing,
    /// It starts like a header but breaks the protocol (bad address, port, length, ...).
    Malformed,
    /// The peer closed in the middle of the header.
    Truncated,
    /// No whole header within `timeouts.handshake`.
    Timeout,
}

impl ProxyRefusal {
    const ALL: [ProxyRefusal; 5] = [
        ProxyRefusal::Untrusted,
        ProxyRefusal::Missing,
        ProxyRefusal::Malformed,
        ProxyRefusal::Truncated,
        ProxyRefusal::Timeout,
    ];

    /// The metric label, also the access log's `end="proxy protocol: LABEL"`.
    pub fn label(self) -> &'static str {
        match self {
            ProxyRefusal::Untrusted => "untrusted",
            ProxyRefusal::Missing => "missing",
            ProxyRefusal::Malformed => "malformed",
            ProxyRefusal::Truncated => "truncated",
            ProxyRefusal::Timeout => "timeout",
        }
    }
}

/// Upper bounds (seconds) of the tunnel duration histogram.
pub const TUNNEL_SECONDS: [f64; 9] = [
    0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0,
];

/// One worker's counters. Aligned so two workers never share a cache line.
#[derive(Debug)]
#[repr(align(128))]
pub struct WorkerMetrics {
    pub accepted: Meter,
    pub active: Meter,
    pub tunnels: Meter,
    /// Tunnel directions moved to splice(2) after sustained bulk traffic.
    pub spliced: Meter,
    /// Tunnel reads that borrowed a heap buffer because the kernel's buffer ring was empty.
    pub heap_reads: Meter,
    /// Tunnel sends that found the reader's socket full: the unsent rest moved to a heap
    /// buffer so the ring buffer could go back at once.
    pub spilled_sends: Meter,
    /// Sends of relayed bytes (splices not counted): bytes per send says how well bytes
    /// that arrive together go out together.
    pub sends: Meter,
    /// Tunnels that came over from the process this one replaced (binary upgrade).
    pub handed_over: Meter,
    upgrades: [Meter; 4],
    limited: [Meter; 2],
    tls_handshakes: [Meter; 4],
    proxy_refused: [Meter; 5],
    /// Responses by status, 100..=599.
    responses: Box<[Meter]>,
    /// Bytes relayed: [client->upstream, upstream->client].
    pub bytes: [Meter; 2],
    tunnel_buckets: [Meter; TUNNEL_SECONDS.len()],
    tunnel_count: Meter,
    tunnel_micros: Meter,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            accepted: Meter::default(),
            active: Meter::default(),
            tunnels: Meter::default(),
            spliced: Meter::default(),
            heap_reads: Meter::default(),
            spilled_sends: Meter::default(),
            sends: Meter::default(),
            handed_over: Meter::default(),
            upgrades: Default::default(),
            limited: Default::default(),
            tls_handshakes: Default::default(),
            proxy_refused: Default::default(),
            responses: (100..600).map(|_| Meter::default()).collect(),
            bytes: Default::default(),
            tunnel_buckets: Default::default(),
            tunnel_count: Meter::default(),
            tunnel_micros: Meter::default(),
        }
    }
}

impl WorkerMetrics {
    pub fn upgrade(&self, outcome: Upgrade) {
        self.upgrades[outcome as usize].add(1);
    }

    /// Counts a client refused by a per-client limit (its 429 is counted as a response too).
    pub fn limited(&self, limit: Limit) {
        self.limited[limit as usize].add(1);
    }

    pub fn tls_handshake(&self, outcome: TlsHandshake) {
        self.tls_handshakes[outcome as usize].add(1);
    }

    /// Counts a connection closed for its PROXY header (or its peer's want of trust).
    pub fn proxy_refused(&self, why: ProxyRefusal) {
        self.proxy_refused[why as usize].add(1);
    }

    /// Counts a response sent to a client, by status.
    pub fn response(&self, status: u16) {
        if let Some(cell) = self.responses.get(usize::from(status).wrapping_sub(100)) {
            cell.add(1);
        }
    }

    pub fn tunnel_ended(&self, lasted: Duration) {
        let secs = lasted.as_secs_f64();
        for (bound, bucket) in TUNNEL_SECONDS.iter().zip(&self.tunnel_buckets) {
            if secs <= *bound {
                bucket.add(1);
            }
        }
        self.tunnel_count.add(1);
        self.tunnel_micros.add(lasted.as_micros() as u64);
    }
}

/// Every worker's counters plus the few process-wide ones.
#[derive(Debug)]
pub struct Metrics {
    /// Shared with each worker's tunnel engine, which counts into its own block.
    pub workers: Vec<Arc<WorkerMetrics>>,
    /// Failed connects by upstream server; only written on failure, so a lock is fine.
    /// Keyed by the server as the upstream file writes it (`10.0.0.5:3000`,
    /// `unix:/run/chat.sock`), so this module needs no upstream type.
    connect_failures: Mutex<BTreeMap<String, u64>>,
    pub access_log_dropped: AtomicU64,
}

impl Metrics {
    pub fn new(workers: usize) -> Self {
        Metrics {
            workers: (0..workers)
                .map(|_| Arc::new(WorkerMetrics::default()))
                .collect(),
            connect_failures: Mutex::new(BTreeMap::new()),
            access_log_dropped: AtomicU64::new(0),
        }
    }

    pub fn connect_failed(&self, upstream: &dyn std::fmt::Display) {
        let name = upstream.to_string();
        let mut map = self
            .connect_failures
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *map.entry(name).or_default() += 1;
    }

    fn sum(&self, cell: impl Fn(&WorkerMetrics) -> &Meter) -> u64 {
        self.workers.iter().map(|w| cell(w).get()).sum()
    }
}

/// Process-wide values that live elsewhere, passed in at scrape time.
#[derive(Debug)]
pub struct Snapshot {
    pub reloads_succeeded: u64,
    pub reloads_failed: u64,
    pub last_reload_unix: u64,
    pub table_version: u64,
    pub draining: bool,
    /// Buckets of the per-client limits table (fixed at start; 0 when both limits are off).
    pub client_buckets: u64,
    /// Of those, the ones holding open connections now.
    pub client_buckets_busy: u64,
    /// Certificate pair reloads [ok, failed]; `None` without a `[tls]` section.
    pub certificate_reloads: Option<[u64; 2]>,
    /// Per certificate in use: (first DNS name or file, certificate file, notAfter in Unix
    /// seconds).
    pub certificate_expiry: Vec<(String, String, i64)>,
    /// TLS handshakes without a known SNI name: [default certificate, rejected].
    pub unknown_sni: [u64; 2],
    /// Every upstream server as (group, server as the file writes it, up): down means
    /// marked down by active or passive health.
    pub upstreams_up: Vec<(String, String, bool)>,
}

/// The Prometheus text exposition (format 0.0.4) of everything.
pub fn render(m: &Metrics, s: &Snapshot) -> String {
    let mut out = String::with_capacity(4096);
    single(
        &mut out,
        "wsplice_connections_accepted_total",
        "counter",
        "Client connections accepted.",
        m.sum(|w| &w.accepted),
    );
    single(
        &mut out,
        "wsplice_handoff_tunnels_total",
        "counter",
        "Tunnels handed over by the process this one replaced (binary upgrade); counters restart at an upgrade, so this is how many came over.",
        m.sum(|w| &w.handed_over),
    );
    single(
        &mut out,
        "wsplice_connections_active",
        "gauge",
        "Client connections open now.",
        m.sum(|w| &w.active),
    );

    labelled(
        &mut out,
        "wsplice_upgrades_total",
        "Upgrade requests by outcome.",
        "outcome",
        Upgrade::ALL.map(|o| (o.label(), m.sum(|w| &w.upgrades[o as usize]))),
    );

    header(
        &mut out,
        "wsplice_responses_total",
        "counter",
        "Responses sent to clients, by HTTP status.",
    );
    for (i, status) in (100u16..600).enumerate() {
        let n = m.sum(|w| &w.responses[i]);
        if n > 0 {
            let _ = writeln!(out, "wsplice_responses_total{{status=\"{status}\"}} {n}");
        }
    }

    labelled(
        &mut out,
        "wsplice_limited_total",
        "Clients answered 429 by a per-client limit: limits.max_connections_per_ip (connections) or limits.handshake_rate_per_ip (rate).",
        "limit",
        Limit::ALL.map(|l| (l.label(), m.sum(|w| &w.limited[l as usize]))),
    );
    labelled(
        &mut out,
        "wsplice_tls_handshakes_total",
        "TLS handshakes on TLS listeners, by outcome: ok, failed (refused by rustls or the client left; the reason is logged at debug), timed_out (timeouts.handshake), plain_http (a plain HTTP request, answered 400).",
        "result",
        TlsHandshake::ALL.map(|t| (t.label(), m.sum(|w| &w.tls_handshakes[t as usize]))),
    );
    labelled(
        &mut out,
        "wsplice_proxy_protocol_errors_total",
        "Connections on proxy_protocol listeners closed before a valid PROXY header: peer not in trusted_proxies (untrusted), no header (missing), a broken one (malformed), the peer closed in it (truncated), or none within timeouts.handshake (timeout).",
        "reason",
        ProxyRefusal::ALL.map(|r| (r.label(), m.sum(|w| &w.proxy_refused[r as usize]))),
    );
    single(
        &mut out,
        "wsplice_client_limit_buckets",
        "gauge",
        "Buckets of the per-client limits table: fixed at start whatever the number of client addresses (addresses that share one share its counts).",
        s.client_buckets,
    );
    single(
        &mut out,
        "wsplice_client_limit_buckets_busy",
        "gauge",
        "Buckets of the per-client limits table holding open connections now.",
        s.client_buckets_busy,
    );

    header(
        &mut out,
        "wsplice_upstream_connect_failures_total",
        "counter",
        "Failed connects (refused, timed out, ...) by upstream server.",
    );
    let failures = m
        .connect_failures
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for (upstream, n) in failures {
        let _ = writeln!(
            out,
            "wsplice_upstream_connect_failures_total{{upstream=\"{}\"}} {n}",
            label_value(&upstream)
        );
    }

    header(
        &mut out,
        "wsplice_relayed_bytes_total",
        "counter",
        "Bytes relayed after the heads (bodies, tunnel bytes), by direction.",
    );
    for (i, direction) in [CLIENT_TO_UPSTREAM, UPSTREAM_TO_CLIENT].iter().enumerate() {
        let n = m.sum(|w| &w.bytes[i]);
        let _ = writeln!(
            out,
            "wsplice_relayed_bytes_total{{direction=\"{direction}\"}} {n}"
        );
    }

    header(
        &mut out,
        "wsplice_tunnel_duration_seconds",
        "histogram",
        "How long closed tunnels were open.",
    );
    for (i, bound) in TUNNEL_SECONDS.iter().enumerate() {
        let n = m.sum(|w| &w.tunnel_buckets[i]);
        let _ = writeln!(
            out,
            "wsplice_tunnel_duration_seconds_bucket{{le=\"{bound}\"}} {n}"
        );
    }
    let count = m.sum(|w| &w.tunnel_count);
    let _ = writeln!(
        out,
        "wsplice_tunnel_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(
        out,
        "wsplice_tunnel_duration_seconds_sum {}",
        m.sum(|w| &w.tunnel_micros) as f64 / 1e6
    );
    let _ = writeln!(out, "wsplice_tunnel_duration_seconds_count {count}");

    header(
        &mut out,
        "wsplice_tunnels_active",
        "gauge",
        "Tunnels open now, by worker.",
    );
    for (i, w) in m.workers.iter().enumerate() {
        let _ = writeln!(
            out,
            "wsplice_tunnels_active{{worker=\"{i}\"}} {}",
            w.tunnels.get()
        );
    }

    single(
        &mut out,
        "wsplice_spliced_directions_total",
        "counter",
        "Tunnel directions that moved to splice(2) (zero-copy through a pipe) after sustained bulk traffic.",
        m.sum(|w| &w.spliced),
    );
    single(
        &mut out,
        "wsplice_tunnel_heap_reads_total",
        "counter",
        "Tunnel reads into a heap buffer because the receive buffer ring was empty (or this kernel has none), or to get a spliced direction past TCP urgent data. Growing with traffic means limits.receive_buffers is too small for the load.",
        m.sum(|w| &w.heap_reads),
    );
    single(
        &mut out,
        "wsplice_tunnel_spilled_sends_total",
        "counter",
        "Tunnel sends the reader's socket could not take whole at once (the unsent rest was copied to a heap buffer so the receive buffer went back to the ring). Counts slow or stuck readers.",
        m.sum(|w| &w.spilled_sends),
    );
    single(
        &mut out,
        "wsplice_tunnel_sends_total",
        "counter",
        "Sends of relayed bytes by tunnels (splices not counted); wsplice_relayed_bytes_total over this is the mean bytes per send.",
        m.sum(|w| &w.sends),
    );

    header(
        &mut out,
        "wsplice_upstream_reloads_total",
        "counter",
        "Upstream file reloads by result.",
    );
    let _ = writeln!(
        out,
        "wsplice_upstream_reloads_total{{result=\"success\"}} {}",
        s.reloads_succeeded
    );
    let _ = writeln!(
        out,
        "wsplice_upstream_reloads_total{{result=\"failure\"}} {}",
        s.reloads_failed
    );
    single(
        &mut out,
        "wsplice_upstream_last_reload_success_timestamp_seconds",
        "gauge",
        "Unix time the upstream table in use was loaded.",
        s.last_reload_unix,
    );
    header(
        &mut out,
        "wsplice_upstream_up",
        "gauge",
        "1 while an upstream server may be picked, 0 while active health checks or passive health (max_fails) have it down.",
    );
    for (group, server, up) in &s.upstreams_up {
        let _ = writeln!(
            out,
            "wsplice_upstream_up{{group=\"{}\",server=\"{}\"}} {}",
            label_value(group),
            label_value(server),
            u8::from(*up)
        );
    }
    single(
        &mut out,
        "wsplice_upstream_table_version",
        "gauge",
        "Version of the upstream table in use (1 at start, +1 per accepted reload).",
        s.table_version,
    );

    if let Some([ok, failed]) = s.certificate_reloads {
        labelled(
            &mut out,
            "wsplice_certificate_reloads_total",
            "Certificate pair reloads by result (a changed file or SIGHUP); a failed one keeps the pair in use.",
            "result",
            [("ok", ok), ("failed", failed)],
        );
        let [defaulted, rejected] = s.unknown_sni;
        labelled(
            &mut out,
            "wsplice_tls_unknown_sni_total",
            "TLS handshakes without SNI or with a name no certificate covers, by what tls.unknown_sni gave them: the first certificate (default) or a handshake alert (rejected).",
            "action",
            [("default", defaulted), ("rejected", rejected)],
        );
        header(
            &mut out,
            "wsplice_certificate_expiry_timestamp_seconds",
            "gauge",
            "Unix time each certificate in use expires (its notAfter), by first DNS name and file.",
        );
        for (name, file, not_after) in &s.certificate_expiry {
            let _ = writeln!(
                out,
                "wsplice_certificate_expiry_timestamp_seconds{{name=\"{}\",file=\"{}\"}} {not_after}",
                label_value(name),
                label_value(file)
            );
        }
    }

    single(
        &mut out,
        "wsplice_access_log_dropped_total",
        "counter",
        "Access log lines dropped because the writer fell behind.",
        m.access_log_dropped.load(Ordering::Relaxed),
    );
    single(
        &mut out,
        "wsplice_draining",
        "gauge",
        "1 while stopping (draining open connections), else 0.",
        u8::from(s.draining),
    );
    out
}

/// A label value in the exposition format: a unix socket path may hold `\\`, `"` or a
/// newline, which would end the value or the line.
fn label_value(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A counter with one value per value of its one label.
fn labelled<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) {
    header(out, name, "counter", help);
    for (value, n) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

/// A metric with one unlabelled value.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_value_cannot_end_early() {
        assert_eq!(label_value("unix:/run/chat.sock"), "unix:/run/chat.sock");
        assert_eq!(label_value("unix:/a\"b\\c\nd"), "unix:/a\\\"b\\\\c\\nd");
    }
}
