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
    // Accepted sockets inherit TCP_NODELAY from the listener, so clients need no
    // setsockopt of their own.
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

/// Like [`bind_all`], but taking the listening sockets a running process handed over
/// (`taken`, by address) where an entry's address matches: those sockets keep their accept
/// queues. A port 0 entry takes a handed-over address of the same IP that no other entry
/// names. Taken sockets go round robin to the workers; a worker left without one for an
/// address binds its own. Also returns the handed-over addresses no entry wants any more.
pub fn adopt_all(
    entries: &[Listen],
    workers: usize,
    mut taken: Vec<(SocketAddr, TcpListener)>,
) -> Result<(Vec<WorkerListeners>, Vec<SocketAddr>), (SocketAddr, io::Error)> {
    let mut per_worker: Vec<WorkerListeners> = (0..workers).map(|_| Vec::new()).collect();
    for &entry in entries {
        let claimed = |addr: &SocketAddr| {
            *addr == entry.addr
                || (entry.addr.port() == 0
                    && addr.ip() == entry.addr.ip()
                    && !entries.iter().any(|e| e.addr == *addr))
        };
        let Some(addr) = taken.iter().map(|(a, _)| *a).find(claimed) else {
            for (w, l) in bind_all(&[entry], workers)?.into_iter().enumerate() {
                per_worker[w].extend(l);
            }
            continue;
        };
        let bound = Listen { addr, ..entry };
        let (mine, rest): (Vec<_>, Vec<_>) = taken.into_iter().partition(|(a, _)| *a == addr);
        taken = rest;
        let count = mine.len();
        for (i, (_, listener)) in mine.into_iter().enumerate() {
            // Set by whichever process bound it; set again, as clients inherit it.
            socket2::SockRef::from(&listener)
                .set_tcp_nodelay(true)
                .map_err(|e| (addr, e))?;
            per_worker[i % workers].push((listener, bound));
        }
        for listeners in per_worker.iter_mut().skip(count) {
            listeners.push((bind(addr).map_err(|e| (addr, e))?, bound));
        }
    }
    let mut dropped: Vec<SocketAddr> = taken.into_iter().map(|(a, _)| a).collect();
    dropped.sort();
    dropped.dedup();
    Ok((per_worker, dropped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(per_worker: &[WorkerListeners]) -> Vec<Vec<SocketAddr>> {
        let of = |l: &WorkerListeners| l.iter().map(|(s, _)| s.local_addr().unwrap()).collect();
        per_worker.iter().map(of).collect()
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a blocking connect and accept on loopback
    fn clients_inherit_tcp_nodelay_from_the_listener() {
        // The proxy sets no TCP option on a client socket: it relies on this.
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        listener.set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.nodelay().unwrap());
    }

    #[test]
    fn handed_over_sockets_are_kept_and_topped_up_per_worker() {
        let any = Listen::plain("127.0.0.1:0".parse().unwrap());
        let old = bind_all(&[any, any], 1).unwrap();
        let [a, b] = [old[0][0].1.addr, old[0][1].1.addr];
        let taken: Vec<_> = old
            .into_iter()
            .flatten()
            .map(|(l, e)| (e.addr, l))
            .collect();
        // The new config names `a` outright and `b` by port 0.
        let entries = [Listen::plain(a), any];
        let (per_worker, dropped) = adopt_all(&entries, 3, taken).unwrap();
        assert!(dropped.is_empty());
        assert_eq!(addrs(&per_worker), vec![vec![a, b]; 3]);
        assert_eq!(per_worker[1][1].1.addr, b, "the entry names the bound port");

        let old = bind_all(&[any], 2).unwrap();
        let gone = old[0][0].1.addr;
        let taken: Vec<_> = old
            .into_iter()
            .flatten()
            .map(|(l, e)| (e.addr, l))
            .collect();
        let (per_worker, dropped) = adopt_all(&[Listen::plain(a)], 1, taken).unwrap();
        assert_eq!(dropped, [gone]);
        assert_eq!(addrs(&per_worker), vec![vec![a]]);
    }
}
