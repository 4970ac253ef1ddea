//! The open-files limit. Each proxied connection holds two descriptors (client and upstream),
//! so `limits.max_connections` is checked against RLIMIT_NOFILE at start-up, where a clear
//! message beats an obscure EMFILE under load.

use std::io;

/// Descriptors kept aside for listeners, the runtime's rings, logs and reloads.
pub const RESERVE: u64 = 64;

/// Raises the soft open-files limit to the hard one; returns the resulting limit.
pub fn raise() -> io::Result<u64> {
    let mut lim = get()?;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads a fully initialised rlimit we own.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// The soft open-files limit now in force.
pub fn current() -> io::Result<u64> {
    Ok(get()?.rlim_cur)
}

fn get() -> io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc == 0 {
        Ok(lim)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Descriptors each worker holds whatever its load: per `listen` address its listener, the
/// duplicate kept for stopping and a spare for answering 503 when out of descriptors; plus
/// its two io_uring instances (the runtime's and the tunnels') and its runtime's epoll and
/// wake-up descriptors.
pub fn per_worker(listen: usize) -> u64 {
    3 * listen as u64 + 4
}

/// Pipes (two descriptors each) a worker may open for spliced tunnel directions out of the
/// `headroom` left once `limits.max_connections` and the fixed descriptors are counted, so
/// splicing never takes a descriptor a connection was promised.
pub fn pipes_per_worker(headroom: u64, workers: usize) -> usize {
    (headroom / 2 / workers.max(1) as u64) as usize
}

/// Descriptors needed to hold `max_connections` proxied connections on `workers` workers.
pub fn needed(max_connections: usize, workers: usize, listen: usize) -> u64 {
    2 * max_connections as u64 + fixed(workers, listen)
}

/// The part of [`needed`] that does not grow with connections.
pub fn fixed(workers: usize, listen: usize) -> u64 {
    workers as u64 * per_worker(listen) + RESERVE
}
