//! A worker: one thread pinned to one CPU, with its own io_uring ring (handshakes and tunnels
//! share it, see [`crate::uring::op`]) under a single-threaded tokio runtime, its own
//! listeners and its own buffer pool. Workers share only the upstream table (one arc-swap
//! load per connection) and the connection count (one atomic add per accept); nothing per
//! message.

use std::io;
use std::net::TcpListener;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::fault;
use super::handoff::Outgoing;
use super::listener::WorkerListeners;
use crate::config::Listen;
use crate::http::{ClientInfo, HandshakeError};
use crate::observe::metrics::Limit;
use crate::os::{cpus, fdlimit, spare_fd::SpareFd};
use crate::proxy::{self, Shared, Slot, TunnelEnd, WorkerContext};
use crate::tunnel::{Detached, Receive, Tunnels};
use crate::uring::buffers::BufferPool;
use crate::uring::stream;

/// Relay buffer size: large enough for bulk transfers, small enough for many tunnels.
pub const RELAY_BUFFER: usize = 16 * 1024;
/// Free buffers a worker keeps for reuse.
const POOL_KEEP: usize = 64;
/// Exit status when a running worker cannot go on (systemd restarts on it).
pub const EXIT_WORKER_FAILED: i32 = 3;

/// Starts worker `id` on its own thread, pinned to `cpu`. It reports on `ready` once its
/// listeners accept, or why it could not start.
pub fn spawn(
    id: usize,
    cpu: Option<usize>,
    shared: Arc<Shared>,
    listeners: WorkerListeners,
    handoff: Handoff,
    ready: mpsc::Sender<Result<(), String>>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("wsplice-worker-{id}"))
        .spawn(move || {
            if let Some(cpu) = cpu
                && let Err(e) = cpus::pin_current_thread(cpu)
            {
                warn!("worker {id}: cannot pin to CPU {cpu}: {e}");
            }
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready.send(Err(format!("worker {id}: cannot start its runtime: {e}")));
                    return;
                }
            };
            tokio::task::LocalSet::new().block_on(&runtime, async move {
                let buffer = RELAY_BUFFER.max(shared.config.limits.max_request_head);
                // Enough for that many reads in flight to a writer at once; beyond it,
                // tunnels borrow heap buffers.
                let count = shared.config.limits.receive_buffers;
                let pipes = shared.pipes_per_worker;
                let metrics = shared.metrics.workers[id].clone();
                let max = shared.config.limits.max_connections;
                let multishot = shared.config.limits.multishot_receive;
                let receive = Receive { multishot, defer: shared.config.limits.defer_taskrun };
                let tunnels = match Tunnels::new(id, metrics, max, RELAY_BUFFER as u32, count, pipes, receive) {
                    Ok(t) => Rc::new(t),
                    Err(e) => {
                        let _ = ready.send(Err(format!(
                            "worker {id}: cannot create an io_uring instance: {e} (is io_uring disabled, e.g. by kernel.io_uring_disabled or a seccomp profile?)"
                        )));
                        return;
                    }
                };
                if tunnels.multishot() {
                    info!("worker {id}: tunnels receive with capped multishot receives");
                } else if multishot && !tunnels.deferred() {
                    info!("worker {id}: tunnels receive once per read (capped multishot receives need a ring whose completion work waits for the loop: `limits.defer_taskrun`)");
                } else if multishot {
                    info!("worker {id}: tunnels receive once per read (capped multishot receives need Linux 6.17+)");
                }
                let idle = shared.config.timeouts.idle;
                let ctx = Rc::new(WorkerContext {
                    id,
                    shared,
                    pool: BufferPool::new(buffer, POOL_KEEP),
                    tunnels: tunnels.clone(),
                });
                let owner = ctx.clone();
                let carrier = ctx.clone();
                let Handoff { out, adopt } = handoff;
                let relay = tunnels.clone().run(
                    move |end, report| {
                        fault::inject_panic("tunnel-loop-panic");
                        end.finish(&owner, report)
                    },
                    move |tunnel| carry(&carrier, out.as_ref(), tunnel),
                );
                tokio::task::spawn_local(async move {
                    let e = match fault::injected_error("tunnel-loop-error") {
                        Some(e) => e,
                        None => relay.await.err().unwrap_or_else(|| io::Error::other("it returned")),
                    };
                    // The worker would go on accepting tunnels that nobody relays: better to
                    // stop the process, and let the service manager start a whole one.
                    error!("worker {id}: the tunnel loop stopped: {e}; exiting (status 3)");
                    std::process::exit(EXIT_WORKER_FAILED);
                });
                if let Some(idle) = idle {
                    tokio::task::spawn_local(tunnels.sweep_idle(idle));
                }
                let listeners: Vec<_> = listeners.into_iter().map(|(l, e)| (Rc::new(l), e)).collect();
                for (listener, entry) in &listeners {
                    let running = Accepting::new(&ctx.shared);
                    tokio::task::spawn_local(accept_loop(ctx.clone(), listener.clone(), *entry, running));
                }
                let sockets = listeners.into_iter().map(|(l, _)| l).collect();
                tokio::task::spawn_local(hand_over_on_stop(ctx.clone(), sockets));
                if let Some(adopt) = adopt {
                    tokio::task::spawn_local(resume(ctx.clone(), adopt));
                }
                let _ = ready.send(Ok(()));
                std::future::pending::<()>().await;
            });
        })
}

/// A worker's part in a binary upgrade.
pub struct Handoff {
    /// Where its tunnels go when this process hands over; `None`: no handoff socket.
    pub out: Option<Outgoing>,
    /// Tunnels that came over from the process this one replaces, for this worker.
    pub adopt: Option<tokio::sync::mpsc::UnboundedReceiver<Detached<Vec<u8>>>>,
}

/// Passes a tunnel that left the engine on to the handoff thread, then gives up its place;
/// once the handoff is over, resumes it here instead, to drain.
fn carry(ctx: &WorkerContext, out: Option<&Outgoing>, tunnel: Detached<TunnelEnd>) {
    let handoff = &ctx.shared.handoff;
    let tunnel = if handoff.over.load(Ordering::SeqCst) {
        tunnel
    } else {
        let entry = tunnel.payload.carry(ctx);
        let (leaving, end) = tunnel.replace(entry);
        let sent = match out {
            Some(out) => out.send(leaving).map_err(|back| back.0),
            None => Err(leaving),
        };
        match sent {
            Ok(()) => return drop(end),
            Err(back) => {
                ctx.metrics().tunnels.add(1);
                back.replace(end).0
            }
        }
    };
    ctx.tunnels.keep(tunnel);
}

/// At a stop: when the listening sockets went to a new process, cancels the accepts on them
/// (they stay open: the new process accepts on them); once the new process serves, detaches
/// every plain tunnel.
async fn hand_over_on_stop(ctx: Rc<WorkerContext>, listeners: Vec<Rc<TcpListener>>) {
    ctx.shared.stopped().await;
    let handoff = &ctx.shared.handoff;
    if !handoff.listeners_given.load(Ordering::SeqCst) {
        return;
    }
    for listener in &listeners {
        if let Err(e) = stream::cancel_accepts(listener).await {
            warn!(
                "worker {}: cannot stop accepting for the handoff: {e}",
                ctx.id
            );
        }
    }
    loop {
        let notified = ctx.shared.stop.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if handoff.handing_over.load(Ordering::SeqCst) {
            ctx.tunnels.detach_all();
            return;
        }
        notified.await;
    }
}

/// Resumes the tunnels that came over for this worker.
async fn resume(
    ctx: Rc<WorkerContext>,
    mut adopt: tokio::sync::mpsc::UnboundedReceiver<Detached<Vec<u8>>>,
) {
    while let Some(tunnel) = adopt.recv().await {
        let end = match TunnelEnd::resume(&ctx, &tunnel.payload) {
            Ok(end) => end,
            Err(e) => {
                warn!("worker {}: a tunnel that came over was closed: {e}", ctx.id);
                continue;
            }
        };
        let (tunnel, _) = tunnel.replace(end);
        ctx.tunnels.adopt(tunnel);
        ctx.metrics().handed_over.add(1);
    }
}

/// Counts an accept loop from its spawning to its end (see `HandoffState::accepting`).
struct Accepting(Arc<Shared>);

impl Accepting {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.handoff.accepting.fetch_add(1, Ordering::SeqCst);
        Accepting(shared.clone())
    }
}

impl Drop for Accepting {
    fn drop(&mut self) {
        self.0.handoff.accepting.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(
    ctx: Rc<WorkerContext>,
    listener: Rc<TcpListener>,
    entry: Listen,
    _running: Accepting,
) {
    let local = entry.addr;
    let max = ctx.shared.config.limits.max_connections;
    let trusted = ctx.shared.config.trusted_proxies.clone();
    let mut last_fd_warning: Option<Instant> = None;
    let mut spare = SpareFd::open();
    tokio::select! {
        () = ctx.shared.started() => {}
        () = ctx.shared.stopped() => return,
    }
    loop {
        // A stop shuts the listener down, or (when it went to a new process) cancels the
        // pending accept; one not yet submitted is not submitted.
        if ctx.shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        match stream::accept(&listener).await {
            Ok((client, peer)) => {
                let (mut slot, before) = Slot::take(&ctx);
                let mut info = ClientInfo::direct(peer, local);
                info.tls = entry.tls;
                // Whose X-Forwarded-For is believed: a trusted peer's, on a plain listener.
                // On a PROXY listener the balancer is trusted with the header instead.
                info.forwarded_trusted = !entry.proxy_protocol && trusted.contains(peer.ip());
                // A client known only later (from its PROXY header, or a trusted proxy's
                // first request) is counted then.
                let count_now = !entry.proxy_protocol && !info.forwarded_trusted;
                let refused = if before >= max {
                    Some(HandshakeError::Overloaded)
                } else if count_now && !slot.count_client(peer.ip()) {
                    // Refused here, where the address is known and nothing is read yet.
                    ctx.metrics().limited(Limit::Connections);
                    Some(HandshakeError::ClientConnections)
                } else {
                    None
                };
                if let Some(err) = refused {
                    let ctx = ctx.clone();
                    let away =
                        proxy::turn_away(ctx, client, info, err, proxy::SHORT_LINGER, Some(slot));
                    tokio::task::spawn_local(away);
                    continue;
                }
                let serve = proxy::serve(ctx.clone(), client, info, slot, entry.proxy_protocol);
                tokio::task::spawn_local(serve);
            }
            Err(_) if ctx.shared.stopping.load(Ordering::SeqCst) => return,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                if last_fd_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    error!(
                        "out of file descriptors ({e}): {} connections open, open-files limit {}; new clients get 503. Lower limits.max_connections or raise the limit (ulimit -n / LimitNOFILE)",
                        ctx.shared.active.load(Ordering::Relaxed),
                        fdlimit::current().unwrap_or(0)
                    );
                    last_fd_warning = Some(Instant::now());
                }
                // The spare's descriptor takes one waiting client, to tell it 503.
                if spare.release()
                    && let Ok((client, peer)) = stream::accept(&listener).await
                {
                    let mut info = ClientInfo::direct(peer, local);
                    info.tls = entry.tls;
                    let err = HandshakeError::OutOfFiles;
                    let linger = proxy::SHORT_LINGER;
                    let away = proxy::turn_away(ctx.clone(), client, info, err, linger, None);
                    tokio::task::spawn_local(away);
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
