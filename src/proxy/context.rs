//! What a connection's code can reach: the state all workers share (config, upstream
//! table, counters) and its own worker's (buffer pool, tunnel loop), plus the slot that
//! holds its place under `limits.max_connections`. The server builds these; the proxy only
//! reads them.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arc_swap::ArcSwap;

use super::TunnelEnd;
use super::limits::{Admit, ClientLimits};
use crate::config::Config;
use crate::observe::access_log::AccessLog;
use crate::observe::admin;
use crate::observe::metrics::{Metrics, Snapshot, WorkerMetrics};
use crate::tunnel::Tunnels;
use crate::upstream::UpstreamTable;
use crate::upstream::reload::ReloadStats;
use crate::uring::buffers::BufferPool;

/// What every worker reads: the config, the current upstream table, the connection count.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub table: ArcSwap<UpstreamTable>,
    pub active: AtomicUsize,
    /// Set once a stop signal arrived: accept loops end instead of retrying.
    pub stopping: AtomicBool,
    /// Notified when `stopping` is set: connections waiting for their next request close.
    pub stop: tokio::sync::Notify,
    /// Where a binary upgrade to a new process stands.
    pub handoff: HandoffState,
    /// Set once everything that may fail at start-up has run: accept loops wait for it,
    /// so a process that fails to start (after taking sockets over) accepted nobody.
    pub serving: AtomicBool,
    /// Notified when `serving` is set.
    pub go: tokio::sync::Notify,
    pub reloads: ReloadStats,
    pub metrics: Metrics,
    pub access_log: Option<AccessLog>,
    /// Pipes each worker may hold for spliced tunnel directions.
    pub pipes_per_worker: usize,
    /// Open connections and request rate per client address.
    pub client_limits: ClientLimits,
    /// The certificates and rustls configuration of TLS listeners; `None` without `[tls]`.
    pub tls: Option<crate::tls::Tls>,
}

impl admin::Source for Shared {
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn snapshot(&self) -> Snapshot {
        let r = &self.reloads;
        Snapshot {
            reloads_succeeded: r.succeeded.load(Ordering::Relaxed),
            reloads_failed: r.failed.load(Ordering::Relaxed),
            last_reload_unix: r.last_success_unix.load(Ordering::Relaxed),
            table_version: r.version.load(Ordering::Relaxed),
            draining: self.stopping.load(Ordering::Relaxed),
            client_buckets: self.client_limits.buckets() as u64,
            client_buckets_busy: self.client_limits.busy() as u64,
            certificate_reloads: self.tls.as_ref().map(|t| {
                [
                    t.reloads.ok.load(Ordering::Relaxed),
                    t.reloads.failed.load(Ordering::Relaxed),
                ]
            }),
            certificate_expiry: self.tls.as_ref().map_or_else(Vec::new, |t| t.expiry()),
            unknown_sni: self.tls.as_ref().map_or([0, 0], |t| t.unknown_sni()),
            upstreams_up: self
                .table
                .load()
                .groups()
                .iter()
                .flat_map(|g| {
                    g.servers().iter().enumerate().map(|(i, server)| {
                        (g.name.clone(), server.to_string(), !g.balancer.is_down(i))
                    })
                })
                .collect(),
        }
    }
}

/// Where a binary upgrade stands in this process (see `server::handoff`).
#[derive(Debug, Default)]
pub struct HandoffState {
    /// The listening sockets went to a new process: a stop must not shut them down (that
    /// would shut them for it too); accepts are cancelled instead.
    pub listeners_given: AtomicBool,
    /// The new process serves (set before `stopping`): plain tunnels leave for it.
    pub handing_over: AtomicBool,
    /// The handoff is over (done, given up, or the new process went away): a tunnel that
    /// still leaves an engine is resumed here instead, to drain like a `wss://` one.
    pub over: AtomicBool,
    /// Accept loops still running: a connection accepted is counted in `active` before
    /// its loop ends.
    pub accepting: AtomicUsize,
    /// `wss://` tunnels open: they stay in this process, to drain.
    pub wss_tunnels: AtomicUsize,
}

/// One worker's own state, reachable from each of its connection tasks.
#[derive(Debug)]
pub struct WorkerContext {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub pool: BufferPool,
    /// Every open tunnel of this worker, relayed by one task over a ring of their own.
    pub tunnels: Rc<Tunnels<TunnelEnd>>,
}

impl WorkerContext {
    /// This worker's own counters.
    pub fn metrics(&self) -> &WorkerMetrics {
        &self.shared.metrics.workers[self.id]
    }
}

/// Holds one place of `limits.max_connections` (and, once [`Slot::count_client`] took it, one
/// of its address's `limits.max_connections_per_ip`) for as long as the connection lives.
/// Created and dropped on its worker's thread, which keeps the worker's gauge single-writer.
pub struct Slot {
    ctx: Rc<WorkerContext>,
    client: Counted,
}

/// Where a connection stands with its client address's count (one word, so a tunnel's
/// table entry does not grow).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// Not yet: the client is learnt after accept (a PROXY header, a trusted proxy's request).
    Not,
    /// Admitted with `max_connections_per_ip` off.
    Off,
    /// Counted in this bucket of the per-client table.
    In(u32),
}

impl Slot {
    /// Takes a place; also returns how many were taken before.
    pub fn take(ctx: &Rc<WorkerContext>) -> (Slot, usize) {
        let before = ctx.shared.active.fetch_add(1, Ordering::Relaxed);
        ctx.metrics().accepted.add(1);
        ctx.metrics().active.add(1);
        let slot = Slot {
            ctx: ctx.clone(),
            client: Counted::Not,
        };
        (slot, before)
    }

    /// A place for a tunnel handed over by the process this one replaced, counted against
    /// its client address whatever that address holds already.
    pub fn resumed(ctx: &Rc<WorkerContext>, ip: std::net::IpAddr) -> Slot {
        ctx.shared.active.fetch_add(1, Ordering::Relaxed);
        ctx.metrics().active.add(1);
        let client = match ctx.shared.client_limits.carry(ip) {
            Admit::Counted(bucket) => Counted::In(bucket),
            Admit::Off | Admit::Refused => Counted::Off,
        };
        Slot {
            ctx: ctx.clone(),
            client,
        }
    }

    /// Counts the connection against its client address too; false when that address
    /// already holds `limits.max_connections_per_ip` (then nothing is counted).
    pub fn count_client(&mut self, ip: std::net::IpAddr) -> bool {
        self.client = match self.ctx.shared.client_limits.open(ip) {
            Admit::Off => Counted::Off,
            Admit::Counted(bucket) => Counted::In(bucket),
            Admit::Refused => return false,
        };
        true
    }

    /// Whether the connection was counted against its client address (or admitted with the
    /// limit off) already.
    pub fn counted(&self) -> bool {
        self.client != Counted::Not
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let shared = &self.ctx.shared;
        // Release: a tunnel handed on was sent before its place is given up, and the
        // handoff thread reads the count to know every tunnel was sent.
        shared.active.fetch_sub(1, Ordering::Release);
        if let Counted::In(bucket) = self.client {
            shared.client_limits.close(bucket);
        }
        self.ctx.metrics().active.sub(1);
    }
}

impl Shared {
    /// Resolves once the process serves (see `serving`).
    pub async fn started(&self) {
        until(&self.go, &self.serving).await;
    }

    /// Starts serving: accept loops go.
    pub fn start_serving(&self) {
        self.serving.store(true, Ordering::SeqCst);
        self.go.notify_waiters();
    }

    /// Resolves once the process is stopping.
    pub async fn stopped(&self) {
        until(&self.stop, &self.stopping).await;
    }
}

/// Resolves once `flag` is set; whoever sets it then notifies the waiters of `notify`.
async fn until(notify: &tokio::sync::Notify, flag: &AtomicBool) {
    let notified = notify.notified();
    tokio::pin!(notified);
    // Registered before the check, so a notice between the two is not missed.
    notified.as_mut().enable();
    if flag.load(Ordering::SeqCst) {
        return;
    }
    notified.await;
}
