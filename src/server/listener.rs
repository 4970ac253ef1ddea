//! Listening sockets: one per worker per `listen` address, all bound with SO_REUSEPORT so the
//! kernel spreads new connections across workers without a shared accept queue.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Socket, Type};

use crate::config::Listen;

/// Backlog asked of the kernel (it is capped by net.core.somaxconn).
pub const BACKLOG: i32 = 4096;

/// Binds one SO_REUSEPORT listener on `addr`.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// One worker's listeners, each with its entry (the port filled in if it was 0).
pub type WorkerListeners = Vec<(TcpListener, Listen)>;

/// Binds `workers` listeners for each address. A port 0 address gets a port from the first
/// bind, and the other workers bind that same port.
/// Returns, per worker, its listeners with their bound addresses.
pub fn bind_all(
    entries: &[Listen],
    workers: usize,
) -> Result<Vec<WorkerListeners>, (SocketAddr, io::Error)> {
    let mut per_worker: Vec<WorkerListeners> = (0..workers).map(|_| Vec::new()).collect();
    for &entry in entries {
        let addr = entry.addr;
        let first = bind(addr).map_err(|e| (addr, e))?;
        let bound = Listen {
            addr: first.local_addr().map_err(|e| (addr, e))?,
            ..entry
        };
        per_worker[0].push((first, bound));
        for listeners in per_worker.iter_mut().skip(1) {
            let again = bind(bound.addr).map_err(|e| (bound.addr, e))?;
            listeners.push((again, bound));
        }
    }
    Ok(per_worker)
}
