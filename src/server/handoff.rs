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
use std::time::Duration;

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
    info!("handoff: {} is ready for the next upgrade", path.display());
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("wsplice-handoff".into())
        .spawn(move || {
            let handed = answer(&socket, &path, &shared, &listeners, &outgoing);
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
        match offer(&conn, shared, listeners) {
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
    if shared.stopping.load(Ordering::SeqCst) {
        let reason = "it is stopping (its listeners are closed); start wsplice afresh".to_string();
        let _ = wire::send(
            conn,
            &Message::Refuse {
                reason: reason.clone(),
            },
        );
        return Err(format!("refused pid {pid}: {reason}"));
    }
    if version != VERSION {
        let reason = format!(
            "pid {pid} speaks handoff format {version}, pid {} speaks {VERSION}: stop and start instead",
            std::process::id()
        );
        let _ = wire::send(
            conn,
            &Message::Refuse {
                reason: reason.clone(),
            },
        );
        return Err(format!("refused: {reason}"));
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
/// as it comes; ends once only `wss://` tunnels are left. Returns how many went.
fn hand_over(
    conn: &Socket,
    pid: u32,
    shared: &Shared,
    outgoing: &mpsc::Receiver<Detached<Vec<u8>>>,
) -> u64 {
    shared.handing_over.store(true, Ordering::SeqCst);
    shared.stopping.store(true, Ordering::SeqCst);
    shared.stop.notify_waiters();
    let (mut sent, mut lost) = (0u64, 0u64);
    let mut forward = |tunnel: Detached<Vec<u8>>| {
        if lost == 0 && wire::send(conn, &Message::Tunnel(tunnel)).is_ok() {
            sent += 1;
        } else {
            lost += 1;
        }
    };
    loop {
        match outgoing.recv_timeout(Duration::from_millis(10)) {
            Ok(tunnel) => forward(tunnel),
            Err(RecvTimeoutError::Timeout) => {
                // A worker sends a tunnel before giving up its place, so once the places
                // left are the wss tunnels', every plain one is in the channel.
                let wss = shared.wss_tunnels.load(Ordering::SeqCst);
                if shared.active.load(Ordering::SeqCst) <= wss {
                    while let Ok(tunnel) = outgoing.try_recv() {
                        forward(tunnel);
                    }
                    break;
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    if lost > 0 || wire::send(conn, &Message::Done { tunnels: sent }).is_err() {
        error!("handoff: pid {pid} went away during the handoff: {lost} tunnels closed");
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
                    info!("handoff: pid {pid} handed over {tunnels} tunnels");
                    return came;
                }
                Ok(Some(_)) => warn!("handoff: pid {pid} sent something unexpected; ignored"),
                Ok(None) => {
                    warn!("handoff: pid {pid} closed the handoff socket after {came} tunnels");
                    return came;
                }
                Err(e) => {
                    warn!("handoff: reading pid {pid}'s tunnels failed after {came}: {e}");
                    return came;
                }
            }
        }
    }
}
