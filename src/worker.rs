//! A worker: one thread pinned to one CPU, with its own io_uring runtime, its own listeners and
//! its own buffer pool. Workers share only the upstream table (one arc-swap load per
//! connection) and the connection count (one atomic add per accept); nothing per message.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::{error, warn};

use crate::access_log::AccessLog;
use crate::buffers::BufferPool;
use crate::config::Config;
use crate::handshake::{ClientInfo, HandshakeError};
use crate::metrics::{Metrics, Snapshot, WorkerMetrics};
use crate::proxy;
use crate::socket;
use crate::tunnels::Tunnels;
use crate::upstream::UpstreamTable;

/// Relay buffer size: large enough for bulk transfers, small enough for many tunnels.
pub const RELAY_BUFFER: usize = 16 * 1024;
/// Free buffers a worker keeps for reuse.
const POOL_KEEP: usize = 64;
/// io_uring submission queue size per worker.
const RING_ENTRIES: u32 = 1024;

/// What every worker reads: the config, the current upstream table, the connection count.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub table: ArcSwap<UpstreamTable>,
    pub active: AtomicUsize,
    /// Set once a stop signal arrived: accept loops end instead of retrying.
    pub stopping: AtomicBool,
    pub reloads: crate::reload::ReloadStats,
    pub metrics: Metrics,
    pub access_log: Option<AccessLog>,
    /// Pipes each worker may hold for spliced tunnel directions.
    pub pipes_per_worker: usize,
}

impl crate::admin::Source for Shared {
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
        }
    }
}

/// One worker's own state, reachable from each of its connection tasks.
#[derive(Debug)]
pub struct WorkerContext {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub pool: BufferPool,
    /// Every open tunnel of this worker, relayed by one task over a ring of their own.
    pub tunnels: Rc<Tunnels<proxy::TunnelEnd>>,
}

/// Starts worker `id` on its own thread, pinned to `cpu`. It reports on `ready` once its
/// listeners accept, or why it could not start.
pub fn spawn(
    id: usize,
    cpu: Option<usize>,
    shared: Arc<Shared>,
    listeners: Vec<(TcpListener, SocketAddr)>,
    ready: mpsc::Sender<Result<(), String>>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("wsplice-worker-{id}"))
        .spawn(move || {
            if let Some(cpu) = cpu
                && let Err(e) = crate::cpus::pin_current_thread(cpu)
            {
                warn!("worker {id}: cannot pin to CPU {cpu}: {e}");
            }
            let runtime = match build_runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready.send(Err(format!(
                        "worker {id}: cannot create an io_uring instance: {e} (is io_uring disabled, e.g. by kernel.io_uring_disabled or a seccomp profile?)"
                    )));
                    return;
                }
            };
            runtime.block_on(async move {
                let buffer = RELAY_BUFFER.max(shared.config.limits.max_request_head);
                // Enough for that many reads in flight to a writer at once; beyond it,
                // tunnels borrow heap buffers.
                let count = shared.config.limits.receive_buffers;
                let pipes = shared.pipes_per_worker;
                let tunnels = match Tunnels::new(shared.clone(), id, RELAY_BUFFER as u32, count, pipes) {
                    Ok(t) => Rc::new(t),
                    Err(e) => {
                        let _ = ready.send(Err(format!(
                            "worker {id}: cannot create the tunnels' io_uring instance: {e}"
                        )));
                        return;
                    }
                };
                let idle = shared.config.timeouts.idle;
                let ctx = Rc::new(WorkerContext {
                    id,
                    shared,
                    pool: BufferPool::new(buffer, POOL_KEEP),
                    tunnels: tunnels.clone(),
                });
                let owner = ctx.clone();
                let relay = tunnels.clone().run(move |end, report| end.finish(&owner, report));
                tokio_uring::spawn(async move {
                    if let Err(e) = relay.await {
                        error!("worker {id}: the tunnel loop stopped: {e}");
                    }
                });
                if let Some(idle) = idle {
                    tokio_uring::spawn(tunnels.sweep_idle(idle));
                }
                for (listener, local) in listeners {
                    tokio_uring::spawn(accept_loop(ctx.clone(), listener, local));
                }
                let _ = ready.send(Ok(()));
                std::future::pending::<()>().await;
            });
        })
}

/// A ring with COOP_TASKRUN and SINGLE_ISSUER (fewer interrupts, no submit locking), or a plain
/// one on kernels without them. DEFER_TASKRUN is left out: tokio-uring's driver hangs with it.
fn build_runtime() -> io::Result<tokio_uring::Runtime> {
    let tuned = tokio_uring::Runtime::new(
        tokio_uring::builder().entries(RING_ENTRIES).uring_builder(
            tokio_uring::uring_builder()
                .setup_coop_taskrun()
                .setup_single_issuer(),
        ),
    );
    match tuned {
        Ok(rt) => Ok(rt),
        Err(_) => tokio_uring::Runtime::new(tokio_uring::builder().entries(RING_ENTRIES)),
    }
}

impl WorkerContext {
    /// This worker's own counters.
    pub fn metrics(&self) -> &WorkerMetrics {
        &self.shared.metrics.workers[self.id]
    }
}

/// Holds one place of `limits.max_connections` for as long as the connection lives.
/// Created and dropped on its worker's thread, which keeps the worker's gauge single-writer.
pub struct Slot(Rc<WorkerContext>);

impl Slot {
    fn take(ctx: &Rc<WorkerContext>) -> (Slot, usize) {
        let before = ctx.shared.active.fetch_add(1, Ordering::Relaxed);
        ctx.metrics().accepted.add(1);
        ctx.metrics().active.add(1);
        (Slot(ctx.clone()), before)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.shared.active.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics().active.sub(1);
    }
}

async fn accept_loop(ctx: Rc<WorkerContext>, listener: TcpListener, local: SocketAddr) {
    let max = ctx.shared.config.limits.max_connections;
    let mut last_fd_warning: Option<Instant> = None;
    let mut spare = crate::spare_fd::SpareFd::open();
    loop {
        match socket::accept(&listener).await {
            Ok((client, peer)) => {
                let (slot, before) = Slot::take(&ctx);
                let info = ClientInfo { peer, local };
                if before >= max {
                    let err = HandshakeError::Overloaded;
                    let ctx = ctx.clone();
                    let away =
                        proxy::turn_away(ctx, client, info, err, proxy::SHORT_LINGER, Some(slot));
                    tokio_uring::spawn(away);
                    continue;
                }
                tokio_uring::spawn(proxy::serve(ctx.clone(), client, info, slot));
            }
            Err(_) if ctx.shared.stopping.load(Ordering::SeqCst) => return,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                if last_fd_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    error!(
                        "out of file descriptors ({e}): {} connections open, open-files limit {}; new clients get 503. Lower limits.max_connections or raise the limit (ulimit -n / LimitNOFILE)",
                        ctx.shared.active.load(Ordering::Relaxed),
                        crate::fdlimit::current().unwrap_or(0)
                    );
                    last_fd_warning = Some(Instant::now());
                }
                // The spare's descriptor takes one waiting client, to tell it 503.
                if spare.release()
                    && let Ok((client, peer)) = socket::accept(&listener).await
                {
                    let info = ClientInfo { peer, local };
                    let err = HandshakeError::OutOfFiles;
                    let linger = proxy::SHORT_LINGER;
                    let away = proxy::turn_away(ctx.clone(), client, info, err, linger, None);
                    tokio_uring::spawn(away);
                }
                // The next free descriptor goes to the spare, not to an accept that would
                // hand it to a client we could not serve; meanwhile clients wait in the backlog.
                while !spare.restore() {
                    if ctx.shared.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Err(e) => {
                warn!(listen = %local, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
