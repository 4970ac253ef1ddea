//! Server choice within a group. Every mode ends the same way: one first choice, then the
//! rest of the group in rotation order from it, servers marked down last. The first choice is
//! the server a valid sticky cookie names, if it is up; else, by `balance`, nginx's smooth
//! weighted round robin (precomputed into one cycle, so a pick is one atomic add shared by
//! all workers), the least-loaded server ([`least_conn`]), or the key's server on a
//! consistent-hash ring ([`ring`], [`key`]). Passive health is nginx's: `max_fails` within
//! `fail_timeout` marks a server down for `fail_timeout`; beside it, a server that active
//! health checks found down ([`super::health`]) is down too.

pub mod cookie;
pub mod key;
pub mod least_conn;
pub mod ring;
pub mod stable_hash;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::addr::UpstreamAddr;
use super::health::Verdict;
use crate::http::RequestHead;
use cookie::Sticky;
use key::HashKey;
use least_conn::{Load, Open};
use ring::Ring;

/// Largest weight a server may have; keeps the precomputed cycle small.
pub const MAX_WEIGHT: u32 = 1000;
/// Most servers in one group.
pub const MAX_SERVERS: usize = 256;

/// Passive health settings of one group (nginx `max_fails`, `fail_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Failed connects within `fail_timeout` that mark a server down; 0 never marks it.
    pub max_fails: u32,
    pub fail_timeout: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
        }
    }
}

/// Failure bookkeeping of one server, shared by every worker.
#[derive(Debug, Default)]
struct ServerHealth {
    fails: AtomicU32,
    window_start_ms: AtomicU64,
    /// When the server was last marked down: a reload re-times the mark with its own
    /// `fail_timeout`.
    down_since_ms: AtomicU64,
    down_until_ms: AtomicU64,
}

/// A group's `balance`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConn,
    Hash(HashKey),
}

/// How a group picks: its `balance` and `sticky_cookie`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    pub balance: Balance,
    pub sticky_cookie: Option<String>,
}

impl std::fmt::Display for Policy {
    /// As the upstream file writes it: `balance = "hash" hash_key = "path" sticky_cookie = "s"`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.balance {
            Balance::RoundRobin => write!(f, "balance = \"round_robin\"")?,
            Balance::LeastConn => write!(f, "balance = \"least_conn\"")?,
            Balance::Hash(key) => write!(f, "balance = \"hash\" hash_key = \"{key}\"")?,
        }
        match &self.sticky_cookie {
            Some(name) => write!(f, " sticky_cookie = \"{name}\""),
            None => Ok(()),
        }
    }
}

/// What a request brings to the choice, read from its head by [`Balancer::affinity`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Affinity {
    /// The hash of the group's `hash_key` in the request (`balance = "hash"`).
    pub key: Option<u64>,
    /// The server id the request's sticky cookie carries.
    pub cookie: Option<u64>,
}

impl Affinity {
    pub const NONE: Affinity = Affinity {
        key: None,
        cookie: None,
    };
}

#[derive(Debug)]
enum Mode {
    RoundRobin,
    LeastConn,
    Hash { key: HashKey, ring: Ring },
}

/// The servers of a group, their weights, and the state that picks among them.
#[derive(Debug)]
pub struct Balancer {
    servers: Vec<UpstreamAddr>,
    weights: Vec<u32>,
    /// One smooth-weighted-round-robin cycle, as indices into `servers`.
    cycle: Vec<u32>,
    next: AtomicUsize,
    health: Health,
    state: Vec<ServerHealth>,
    policy: Policy,
    mode: Mode,
    sticky: Option<Sticky>,
    /// Open connections by server, shared with the tables before and after this one.
    loads: Vec<Load>,
    /// Active health by server, shared likewise; the checker writes it.
    verdicts: Vec<Arc<Verdict>>,
}

impl Balancer {
    /// A round-robin group without sticky cookie: see [`Balancer::with_policy`].
    pub fn new(servers: Vec<(impl Into<UpstreamAddr>, u32)>, health: Health) -> Self {
        Self::with_policy("", servers, health, &Policy::default())
    }

    /// Group `group`'s `servers` with their weights (1..=MAX_WEIGHT); panics on an empty list
    /// (the loader refuses empty groups first).
    pub fn with_policy(
        group: &str,
        servers: Vec<(impl Into<UpstreamAddr>, u32)>,
        health: Health,
        policy: &Policy,
    ) -> Self {
        assert!(
            (1..=MAX_SERVERS).contains(&servers.len()),
            "a group needs 1 to {MAX_SERVERS} servers"
        );
        let weights: Vec<u32> = servers.iter().map(|(_, w)| (*w).max(1)).collect();
        let servers: Vec<UpstreamAddr> = servers.into_iter().map(|(a, _)| a.into()).collect();
        let mode = match &policy.balance {
            Balance::RoundRobin => Mode::RoundRobin,
            Balance::LeastConn => Mode::LeastConn,
            Balance::Hash(key) => Mode::Hash {
                key: key.clone(),
                ring: Ring::new(&servers, &weights),
            },
        };
        Balancer {
            cycle: smooth_cycle(&weights),
            state: servers.iter().map(|_| ServerHealth::default()).collect(),
            loads: servers.iter().map(|_| Load::default()).collect(),
            verdicts: servers.iter().map(|_| Arc::default()).collect(),
            sticky: policy
                .sticky_cookie
                .as_deref()
                .map(|name| Sticky::new(name, group, &servers)),
            servers,
            weights,
            next: AtomicUsize::new(0),
            health,
            mode,
            policy: policy.clone(),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// What the request brings to the choice: its hash key's hash and its sticky cookie.
    /// `path` is the normalised path it was routed on, `client` the client's address.
    pub fn affinity(&self, head: &RequestHead<'_, '_>, path: &[u8], client: IpAddr) -> Affinity {
        Affinity {
            key: match &self.mode {
                Mode::Hash { key, .. } => key.hash(head, path, client),
                _ => None,
            },
            cookie: self.sticky.as_ref().and_then(|s| s.requested(head.headers)),
        }
    }

    /// Counts a connection (attempt) to server `index` until the guard drops.
    pub fn open(&self, index: usize) -> Open {
        self.loads[index].open()
    }

    /// Connections open to server `index` now, across all workers.
    pub fn open_connections(&self, index: usize) -> usize {
        self.loads[index].count()
    }

    /// The `Set-Cookie` line to send when a request with `affinity` was served by server
    /// `index`: none without a sticky cookie, or when the request's cookie named that server.
    /// `secure`: the client came over https, to wsplice or to a trusted proxy (the cookie
    /// gets `Secure`).
    pub fn set_cookie(&self, affinity: &Affinity, index: usize, secure: bool) -> Option<Arc<[u8]>> {
        let sticky = self.sticky.as_ref()?;
        if affinity.cookie.and_then(|id| sticky.server(id)) == Some(index) {
            return None;
        }
        Some(sticky.line(index, secure).clone())
    }

    pub fn servers(&self) -> &[UpstreamAddr] {
        &self.servers
    }

    pub fn weight(&self, index: usize) -> u32 {
        self.weights[index]
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// The servers to try for one connection, as (index, address): the first choice (see the
    /// module doc), then the rest in group order from it, servers marked down last (they are
    /// tried anyway rather than refusing without trying). Health is read once, up front, so a
    /// server marked down during the walk is not tried twice.
    pub fn pick(&self, affinity: &Affinity) -> impl Iterator<Item = (usize, &UpstreamAddr)> + '_ {
        let n = self.servers.len();
        let now = now_ms();
        let mut down = [0u64; MAX_SERVERS / 64];
        for i in (0..n).filter(|&i| !self.is_up(i, now)) {
            down[i / 64] |= 1 << (i % 64);
        }
        let is_down = move |i: usize| down[i / 64] & (1 << (i % 64)) != 0;
        let start = self.first_choice(affinity, |i| !is_down(i));
        let rotation = move || (0..n).map(move |i| (start + i) % n);
        let up_first = rotation().filter(move |&i| !is_down(i));
        let down_last = rotation().filter(move |&i| is_down(i));
        up_first.chain(down_last).map(|i| (i, &self.servers[i]))
    }

    /// The sticky cookie's server if it is up; else the hash key's server (the first up on
    /// the ring); else the round-robin choice, or for `least_conn` the least loaded with
    /// ties going by round robin.
    fn first_choice(&self, affinity: &Affinity, up: impl Fn(usize) -> bool + Copy) -> usize {
        let sticky = self.sticky.as_ref().zip(affinity.cookie);
        if let Some(i) = sticky.and_then(|(s, id)| s.server(id))
            && up(i)
        {
            return i;
        }
        if let (Mode::Hash { ring, .. }, Some(key)) = (&self.mode, affinity.key)
            && let Some(i) = ring.lookup(key, up)
        {
            return i;
        }
        let tick = self.next.fetch_add(1, Ordering::Relaxed);
        let turn = self.cycle[tick % self.cycle.len()] as usize;
        match self.mode {
            Mode::LeastConn => least_conn::least_loaded(turn, &self.loads, &self.weights, up),
            _ => turn,
        }
    }

    fn is_up(&self, index: usize, now: u64) -> bool {
        self.state[index].down_until_ms.load(Ordering::Relaxed) <= now
            && !self.verdicts[index].is_down()
    }

    /// Server `index`'s active-health verdict.
    pub fn verdict(&self, index: usize) -> &Arc<Verdict> {
        &self.verdicts[index]
    }

    /// Whether server `index` is currently marked down, by passive or active health.
    pub fn is_down(&self, index: usize) -> bool {
        !self.is_up(index, now_ms())
    }

    /// Records a failed connect to server `index`; returns true if this marked it down.
    pub fn record_failure(&self, index: usize) -> bool {
        if self.health.max_fails == 0 {
            return false;
        }
        let s = &self.state[index];
        let now = now_ms();
        let window = self.health.fail_timeout.as_millis() as u64;
        let start = s.window_start_ms.load(Ordering::Relaxed);
        // Workers fail concurrently: one of them starts the new window and this failure is its
        // first; the others count into it rather than resetting it again.
        let fails = if now.saturating_sub(start) >= window
            && s.window_start_ms
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            s.fails.store(1, Ordering::Relaxed);
            1
        } else {
            s.fails.fetch_add(1, Ordering::Relaxed) + 1
        };
        if fails < self.health.max_fails {
            return false;
        }
        let until = s.down_until_ms.load(Ordering::Relaxed);
        // Only the worker that moves `down_until` from "up" marks the server down.
        if until <= now
            && s.down_until_ms
                .compare_exchange(until, now + window, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            s.down_since_ms.store(now, Ordering::Relaxed);
            s.fails.store(0, Ordering::Relaxed);
            s.window_start_ms.store(now, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Records a successful connect: the server's failure count starts over.
    pub fn record_success(&self, index: usize) {
        let s = &self.state[index];
        if s.fails.load(Ordering::Relaxed) != 0 {
            s.fails.store(0, Ordering::Relaxed);
        }
    }

    /// Hands the open-connection counts of servers that stay on from the previous table.
    pub fn inherit_loads(&mut self, old: &Balancer) {
        for (i, addr) in self.servers.iter().enumerate() {
            if let Some(j) = old.servers.iter().position(|a| a == addr) {
                self.loads[i] = old.loads[j].share();
            }
        }
    }

    /// Carries failure state over from the previous table for servers that stay, so a
    /// reload during an outage does not send traffic back to a server known to be down. A
    /// server marked down stays down for this table's `fail_timeout` counted from when it was
    /// marked, and not at all if this table has `max_fails = 0`.
    pub fn inherit_health(&self, old: &Balancer) {
        let now = now_ms();
        let window = self.health.fail_timeout.as_millis() as u64;
        for (i, addr) in self.servers.iter().enumerate() {
            let Some(j) = old.servers.iter().position(|a| a == addr) else {
                continue;
            };
            let (new, old) = (&self.state[i], &old.state[j]);
            new.fails
                .store(old.fails.load(Ordering::Relaxed), Ordering::Relaxed);
            new.window_start_ms.store(
                old.window_start_ms.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
            let down = old.down_until_ms.load(Ordering::Relaxed) > now;
            if down && self.health.max_fails != 0 {
                let since = old.down_since_ms.load(Ordering::Relaxed);
                new.down_since_ms.store(since, Ordering::Relaxed);
                new.down_until_ms.store(since + window, Ordering::Relaxed);
            }
        }
    }

    /// Shares the active-health verdicts of servers that stay with the previous table.
    pub fn inherit_verdicts(&mut self, old: &Balancer) {
        for (i, addr) in self.servers.iter().enumerate() {
            if let Some(j) = old.servers.iter().position(|a| a == addr) {
                self.verdicts[i] = old.verdicts[j].clone();
            }
        }
    }

    /// Continues the previous table's rotation, so a reload does not send the next
    /// connection to the server that took the last one: the same position when the servers
    /// and weights are unchanged, else the first turn of the server that was due next.
    pub fn inherit_position(&self, old: &Balancer) {
        let tick = old.next.load(Ordering::Relaxed);
        let position = if self.servers == old.servers && self.weights == old.weights {
            tick
        } else {
            let due = &old.servers[old.cycle[tick % old.cycle.len()] as usize];
            match self.servers.iter().position(|a| a == due) {
                Some(i) => self
                    .cycle
                    .iter()
                    .position(|&c| c as usize == i)
                    .unwrap_or(0),
                None => tick % self.cycle.len(),
            }
        };
        self.next.store(position, Ordering::Relaxed);
    }
}

/// Milliseconds on a process-wide monotonic clock. Starts at 1 so that 0 means "never".
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One cycle of nginx's smooth weighted round robin: each step adds every weight to its
/// server's current weight, picks the largest, and subtracts the total from it. Weights are
/// divided by their gcd first, so equal weights give a cycle as long as the group.
fn smooth_cycle(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let reduced: Vec<i64> = weights.iter().map(|&w| i64::from(w / g)).collect();
    let total: i64 = reduced.iter().sum();
    let mut current = vec![0i64; reduced.len()];
    (0..total)
        .map(|_| {
            let mut best = 0;
            for i in 0..reduced.len() {
                current[i] += reduced[i];
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            best as u32
        })
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests;
