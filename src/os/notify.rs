//! systemd readiness (`Type=notify`): tells the service manager on `NOTIFY_SOCKET` that every
//! worker listens, so `systemctl start` returns only once wsplice serves, and that a stop has
//! begun. Without `NOTIFY_SOCKET` it does nothing. The protocol is one datagram; no crate needed.

use std::io;
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;

use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, warn};

/// Sends `READY=1` (with the listening addresses as `STATUS=`) and, from a task on the current
/// tokio runtime, `STOPPING=1` at the first SIGTERM or SIGINT. Call it once every worker listens.
/// `main`: this process takes the place of the one systemd started (a binary upgrade), so it
/// names itself the main process (`MAINPID=`; the unit needs `NotifyAccess=all`).
pub fn ready(listening: &[SocketAddr], main: bool) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let addrs: Vec<String> = listening.iter().map(ToString::to_string).collect();
    let mut message = format!("READY=1\nSTATUS=listening on {}", addrs.join(", "));
    if main {
        message = format!("MAINPID={}\n{message}", std::process::id());
    }
    if let Err(e) = send(&target, &message) {
        warn!("cannot notify the service manager on {target:?}: {e}");
        return;
    }
    debug!("notified the service manager: READY=1");
    let (term, int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            warn!("cannot watch stop signals for the service manager: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        let (mut term, mut int) = (term, int);
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if let Err(e) = send(&target, "STOPPING=1\nSTATUS=draining") {
            warn!("cannot notify the service manager on {target:?}: {e}");
        }
    });
}

/// Sends one datagram to `target`: a socket path, or `@name` for an abstract socket.
fn send(target: &std::ffi::OsStr, message: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = target.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        socket.send_to_addr(message.as_bytes(), &addr)?;
    } else {
        socket.send_to(message.as_bytes(), target)?;
    }
    Ok(())
}
