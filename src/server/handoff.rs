//! Binary upgrade without cutting a tunnel: the running process hands its listening sockets
//! and every plain tunnel to a new process over the Unix socket named by `handoff`.
//!
//! The old side ([`serve`]) waits on that socket on a thread of its own. A new process
//! started with `--takeover` ([`take_over`]) says hello with its format version; a version
//! this build does not speak is refused before anything is given away. Otherwise the old
//! sends a duplicate of every listening socket (the sockets themselves move: no accept queue
//! is reset, no port is ever closed), and the new one starts its workers on them and says
//! `Ready`. Only then does the old stop accepting (its pending accepts cancelled, the sockets
//! left open) and detach its plain tunnels, which the workers pass here one by one, to be
//! sent on with their descriptors and resumed by the new process's workers
//! ([`Takeover::receive`]). Connections still in their handshake finish here and follow once
//! they are tunnels; keep-alive connections close between requests, as on a stop. When only
//! `wss://` tunnels are left (their cipher state stays here) the old says `Done` and drains
//! those as on SIGTERM.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};
use tracing::{error, info, warn};

use super::fault;
use crate::os::fd_passing;
use crate::proxy::Shared;
use crate::tunnel::Detached;

mod wire;

use wire::{Message, VERSION};

/// A tunnel on its way out: the workers send, the handoff thread forwards.
pub type Outgoing = mpsc::Sender<Detached<Vec<u8>>>;
/// A tunnel that came over, on its way to a worker.
pub type Incoming = tokio::sync::mpsc::UnboundedSender<Detached<Vec<u8>>>;

/// How long the old process waits for the new one to say hello, and then to serve.
const HELLO_WITHIN: Duration = Duration::from_secs(10);
const READY_WITHIN: Duration = Duration::from_secs(60);
/// How long a handoff waits for a handshake to end when `timeouts.handshake` or
/// `timeouts.response` is off.
const LONGEST_HANDSHAKE: Duration = Duration::from_secs(60);

/// After a handoff gave up waiting, how long no tunnel may arrive before `Done`.
const GRACE: Duration = Duration::from_millis(200);

/// A handoff this process made: to whom, and how many tunnels went.
pub struct Handed {
    pub pid: u32,
    pub tunnels: u64,
}

/// Binds the handoff socket at `path` (mode 0600, replacing a stale one) and answers the
/// next process that takes over on a thread of its own: hands it `listeners` and then the
/// tunnels that arrive on `outgoing`, and reports on `finished`.
pub fn serve(
    path: &Path,
    shared: Arc<Shared>,
    listeners: Vec<(SocketAddr, TcpListener)>,
    outgoing: mpsc::Receiver<Detached<Vec<u8>>>,
    finished: tokio::sync::oneshot::Sender<Handed>,
) -> io::Result<()> {
    let socket = bind(path)?;
    let can = crate::uring::stream::cancels_by_fd();
    if can {
        info!("handoff: {} is ready for the next upgrade", path.display());
    } else {
        warn!(
            "handoff: this kernel cannot cancel pending accepts by descriptor (Linux 5.19+), so this process cannot hand over; takeovers will be refused"
        );
    }
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("wsplice-handoff".into())
        .spawn(move || {
            let handed = answer(&socket, &path, &shared, &listeners, &outgoing, can);
            let _ = finished.send(handed);
        })?;
    Ok(())
}

/// A seqpacket socket listening at `path`: bound under a temporary name, made 0600, then
/// renamed over `path`, so nobody else can connect in between and a running process's
/// socket is replaced only by a working one.
fn bind(path: &Path) -> io::Result<Socket> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".new-{}", std::process::id()));
    let temporary = PathBuf::from(temporary);
    let _ = std::fs::remove_file(&temporary);
    let socket = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
    socket.bind(&SockAddr::unix(&temporary)?)?;
    let placed = std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| socket.listen(4))
        .and_then(|()| std::fs::rename(&temporary, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temporary);
        return Err(e);
    }
    Ok(socket)
}

/// Answers processes that try to take over until one does; returns what went to it.
fn answer(
    socket: &Socket,
    path: &Path,
    shared: &Shared,
    listeners: &[(SocketAddr, TcpListener)],
    outgoing: &mpsc::Receiver<Detached<Vec<u8>>>,
    can: bool,
) -> Handed {
    loop {
        let conn = match socket.accept() {
            Ok((conn, _)) => conn,
            Err(e) => {
                warn!("handoff: cannot accept on {}: {e}", path.display());
                #[allow(clippy::disallowed_methods)] // the handoff thread, not a worker
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        match offer(&conn, shared, listeners, can) {
            Ok(pid) => {
                let tunnels = hand_over(&conn, pid, shared, outgoing);
                return Handed { pid, tunnels };
            }
            Err(why) => warn!("handoff: {why}; this process serves on"),
        }
    }
}

/// Checks who connected and what it speaks, and gives it the listening sockets. `Ok`: it
/// serves them now (its pid); this process must stop accepting and hand its tunnels over.
fn offer(
    conn: &Socket,
    shared: &Shared,
    listeners: &[(SocketAddr, TcpListener)],
    can: bool,
) -> Result<u32, String> {
    let me = effective_uid();
    let uid = fd_passing::peer_uid(conn).map_err(|e| format!("cannot tell who connected: {e}"))?;
    if uid != me && uid != 0 {
        return Err(format!(
            "refused a takeover by uid {uid}: only this process's user ({me}) or root may take over"
        ));
    }
    let _ = conn.set_read_timeout(Some(HELLO_WITHIN));
    let mut buf = Vec::new();
    let (version, pid) = match wire::recv(conn, &mut buf) {
        Ok(Some(Message::Hello { version, pid })) => (version, pid),
        Ok(_) => return Err("refused a takeover that did not begin with hello".into()),
        Err(e) => return Err(format!("refused a takeover: {e}")),
    };
    let refuse = |reason: String| {
        let _ = wire::send(
            conn,
            &Message::Refuse {
                reason: reason.clone(),
            },
        );
        Err(format!("refused pid {pid}: {reason}"))
    };
    if !can {
        return refuse("its kernel cannot stop its accepts without closing the listening sockets (Linux 5.19+ can); restart instead".into());
    }
    if version != VERSION {
        let me = std::process::id();
        return refuse(format!(
            "pid {pid} speaks handoff format {version}, pid {me} speaks {VERSION}: stop and start instead"
        ));
    }
    // From here on a stop must leave the sockets open (the new process may serve them); a
    // stop that came first is seen here (both sides store, then load).
    shared.handoff.listeners_given.store(true, Ordering::SeqCst);
    if shared.stopping.load(Ordering::SeqCst) {
        return refuse("it is stopping (its listeners are closed); start wsplice afresh".into());
    }
    info!(
        "handoff: pid {pid} is taking over; handing it {} listening sockets",
        listeners.len()
    );
    for (addr, listener) in listeners {
        let socket = listener
            .try_clone()
            .map(OwnedFd::from)
            .map_err(|e| format!("cannot hand over {addr}: {e}"))?;
        let addr = *addr;
        wire::send(conn, &Message::Listener { addr, socket })
            .map_err(|e| format!("pid {pid} went away: {e}"))?;
    }
    let me = std::process::id();
    wire::send(conn, &Message::Listeners { pid: me })
        .map_err(|e| format!("pid {pid} went away: {e}"))?;
    let _ = conn.set_read_timeout(Some(READY_WITHIN));
    match wire::recv(conn, &mut buf) {
        Ok(Some(Message::Ready)) => Ok(pid),
        Ok(None) => Err(format!("pid {pid} gave up before serving")),
        Ok(Some(_)) => Err(format!("pid {pid} sent something else than ready")),
        Err(e) => Err(format!("pid {pid} did not get to serve: {e}")),
    }
}

/// The new process serves: stops accepting, detaches every plain tunnel and forwards each
/// as it comes; ends once only `wss://` tunnels are left, or after `timeouts.handshake` +
/// `timeouts.response` (what a handshake may take; a plain request's long response may
/// outlast it): what becomes a tunnel after that drains here. Returns how many went.
fn hand_over(
    conn: &Socket,
    pid: u32,
    shared: &Shared,
    outgoing: &mpsc::Receiver<Detached<Vec<u8>>>,
) -> u64 {
    let handoff = &shared.handoff;
    handoff.handing_over.store(true, Ordering::SeqCst);
    shared.stopping.store(true, Ordering::SeqCst);
    shared.stop.notify_waiters();
    let timeouts = &shared.config.timeouts;
    let most = timeouts.handshake.unwrap_or(LONGEST_HANDSHAKE)
        + timeouts.response.unwrap_or(LONGEST_HANDSHAKE);
    let deadline = Instant::now() + most;
    let (mut sent, mut lost, mut gone) = (0u64, 0u64, false);
    let mut forward = |tunnel: Detached<Vec<u8>>| {
        if gone {
            lost += 1;
            return;
        }
        match wire::send(conn, &Message::Tunnel(tunnel)) {
            Ok(()) => sent += 1,
            Err(e) => {
                // The tunnel is closed; a peer that is gone takes no more.
                lost += 1;
                gone = matches!(
                    e.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                );
                warn!("handoff: a tunnel could not be sent to pid {pid}: {e}");
            }
        }
    };
    loop {
        match outgoing.recv_timeout(Duration::from_millis(10)) {
            Ok(tunnel) => forward(tunnel),
            Err(RecvTimeoutError::Timeout) => {
                // A connection is counted in `active` before its accept loop ends, and a
                // worker sends a tunnel before giving up its place: once no loop accepts
                // and the places left are the wss tunnels', every plain one is in the
                // channel. (Loaded in this order, a count read can only be too high.)
                let accepting = handoff.accepting.load(Ordering::SeqCst);
                let active = shared.active.load(Ordering::SeqCst);
                let wss = handoff.wss_tunnels.load(Ordering::SeqCst);
                let done = accepting == 0 && active <= wss;
                if done || Instant::now() >= deadline {
                    if !done {
                        warn!(
                            "handoff: {} connections still in their handshake or a plain request after {most:?}; those that become tunnels drain here",
                            active.saturating_sub(wss)
                        );
                    }
                    handoff.over.store(true, Ordering::SeqCst);
                    // Done, nothing more can come. Given up, a worker that read `over` just
                    // before it was set may still be sending one: wait until none came
                    // for a while.
                    let grace = if done { Duration::ZERO } else { GRACE };
                    while let Ok(tunnel) = outgoing.recv_timeout(grace) {
                        forward(tunnel);
                    }
                    break;
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    handoff.over.store(true, Ordering::SeqCst);
    if gone || wire::send(conn, &Message::Done { tunnels: sent }).is_err() {
        error!("handoff: pid {pid} went away during the handoff: {lost} tunnels closed");
    } else if lost > 0 {
        error!("handoff: {lost} tunnels could not be sent to pid {pid} and were closed");
    }
    sent
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    #[allow(unsafe_code)]
    unsafe {
        libc::geteuid()
    }
}

/// The running process, as this one takes over from it: its listening sockets are here
/// already; its tunnels follow once this one serves ([`Takeover::receive`]).
pub struct Takeover {
    socket: Socket,
    pub pid: u32,
    pub listeners: Vec<(SocketAddr, TcpListener)>,
}

/// Connects to the process serving the handoff socket at `path` and takes its listening
/// sockets. Nothing is given away by it yet: on any error it serves on.
pub fn take_over(path: &Path) -> Result<Takeover, String> {
    let socket = Socket::new(Domain::UNIX, Type::SEQPACKET, None).map_err(|e| e.to_string())?;
    let addr = SockAddr::unix(path).map_err(|e| e.to_string())?;
    socket.connect(&addr).map_err(|e| {
        format!(
            "cannot connect to {}: {e} (is a wsplice with this handoff socket running?)",
            path.display()
        )
    })?;
    let me = effective_uid();
    match fd_passing::peer_uid(&socket) {
        Ok(uid) if uid == me || uid == 0 => {}
        Ok(uid) => {
            return Err(format!(
                "{} is served by uid {uid}, not by this user ({me}) or root",
                path.display()
            ));
        }
        Err(e) => return Err(format!("cannot tell who serves {}: {e}", path.display())),
    }
    let _ = socket.set_read_timeout(Some(HELLO_WITHIN));
    let version = if fault::on("handoff-version") {
        u32::MAX
    } else {
        VERSION
    };
    let pid = std::process::id();
    let gone = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
            "the running process did not answer within {}s (is it handing over to another process already?)",
            HELLO_WITHIN.as_secs()
        ),
        _ => format!("the running process went away: {e}"),
    };
    wire::send(&socket, &Message::Hello { version, pid }).map_err(gone)?;
    let (mut listeners, mut buf) = (Vec::new(), Vec::new());
    loop {
        match wire::recv(&socket, &mut buf).map_err(gone)? {
            Some(Message::Listener { addr, socket }) => listeners.push((addr, socket.into())),
            Some(Message::Listeners { pid }) => {
                return Ok(Takeover {
                    socket,
                    pid,
                    listeners,
                });
            }
            Some(Message::Refuse { reason }) => return Err(format!("it refused: {reason}")),
            Some(_) => return Err("the running process sent something unexpected".into()),
            None => return Err("the running process closed the handoff socket".into()),
        }
    }
}

impl Takeover {
    /// Tells the old process that this one serves, then receives its tunnels and hands them
    /// to `workers` in turn. Returns how many came, once the old process is done.
    pub fn receive(self, workers: &[Incoming]) -> u64 {
        let Takeover { socket, pid, .. } = self;
        if let Err(e) = wire::send(&socket, &Message::Ready) {
            warn!("handoff: pid {pid} went away before its tunnels came: {e}");
            return 0;
        }
        let _ = socket.set_read_timeout(None);
        let (mut came, mut buf) = (0u64, Vec::new());
        loop {
            match wire::recv(&socket, &mut buf) {
                Ok(Some(Message::Tunnel(tunnel))) => {
                    let _ = workers[came as usize % workers.len()].send(tunnel);
                    came += 1;
                }
                Ok(Some(Message::Done { tunnels })) => {
                    if tunnels != came {
                        warn!("handoff: pid {pid} sent {tunnels} tunnels, {came} came");
                    }
                    return came;
                }
                Ok(Some(_)) => warn!("handoff: pid {pid} sent something unexpected; ignored"),
                Ok(None) => {
                    warn!("handoff: pid {pid} closed the handoff socket after {came} tunnels");
                    return came;
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    // That one tunnel is lost (its descriptors are closed); the rest come.
                    warn!("handoff: a message from pid {pid} was unreadable: {e}");
                }
                Err(e) => {
                    warn!("handoff: reading pid {pid}'s tunnels failed after {came}: {e}");
                    return came;
                }
            }
        }
    }
}
