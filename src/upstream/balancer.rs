//! Server choice within a group: nginx's smooth weighted round robin, precomputed into one
//! cycle so a pick is a single atomic add shared by all workers, and nginx-style passive
//! health (`max_fails` within `fail_timeout` marks a server down for `fail_timeout`).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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

/// The servers of a group, their weights, and the state that picks among them.
#[derive(Debug)]
pub struct Balancer {
    servers: Vec<SocketAddr>,
    weights: Vec<u32>,
    /// One smooth-weighted-round-robin cycle, as indices into `servers`.
    cycle: Vec<u32>,
    next: AtomicUsize,
    health: Health,
    state: Vec<ServerHealth>,
}

impl Balancer {
    /// `servers` with their weights (1..=MAX_WEIGHT); panics on an empty list (the loader
    /// refuses empty groups first).
    pub fn new(servers: Vec<(SocketAddr, u32)>, health: Health) -> Self {
        assert!(
            (1..=MAX_SERVERS).contains(&servers.len()),
            "a group needs 1 to {MAX_SERVERS} servers"
        );
        let weights: Vec<u32> = servers.iter().map(|(_, w)| (*w).max(1)).collect();
        Balancer {
            cycle: smooth_cycle(&weights),
            state: servers.iter().map(|_| ServerHealth::default()).collect(),
            servers: servers.into_iter().map(|(a, _)| a).collect(),
            weights,
            next: AtomicUsize::new(0),
            health,
        }
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    pub fn weight(&self, index: usize) -> u32 {
        self.weights[index]
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// The servers to try for one connection, as (index, address): the weighted round-robin
    /// choice first, then the rest in group order, servers marked down last (they are tried
    /// anyway rather than refusing without trying). Health is read once, up front, so a
    /// server marked down during the walk is not tried twice.
    pub fn pick(&self) -> impl Iterator<Item = (usize, SocketAddr)> + '_ {
        let n = self.servers.len();
        let tick = self.next.fetch_add(1, Ordering::Relaxed);
        let start = self.cycle[tick % self.cycle.len()] as usize;
        let now = now_ms();
        let mut down = [0u64; MAX_SERVERS / 64];
        for i in (0..n).filter(|&i| !self.is_up(i, now)) {
            down[i / 64] |= 1 << (i % 64);
        }
        let is_down = move |i: usize| down[i / 64] & (1 << (i % 64)) != 0;
        let rotation = move || (0..n).map(move |i| (start + i) % n);
        let up_first = rotation().filter(move |&i| !is_down(i));
        let down_last = rotation().filter(move |&i| is_down(i));
        up_first.chain(down_last).map(|i| (i, self.servers[i]))
    }

    fn is_up(&self, index: usize, now: u64) -> bool {
        self.state[index].down_until_ms.load(Ordering::Relaxed) <= now
    }

    /// Whether server `index` is currently marked down.
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
        if now.saturating_sub(start) >= window {
            s.window_start_ms.store(now, Ordering::Relaxed);
            s.fails.store(0, Ordering::Relaxed);
        }
        let fails = s.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if fails >= self.health.max_fails && self.is_up(index, now) {
            s.down_since_ms.store(now, Ordering::Relaxed);
            s.down_until_ms.store(now + window, Ordering::Relaxed);
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

    /// Continues the previous table's rotation, so a reload does not send the next
    /// connection to the server that took the last one: the same position when the servers
    /// and weights are unchanged, else the first turn of the server that was due next.
    pub fn inherit_position(&self, old: &Balancer) {
        let tick = old.next.load(Ordering::Relaxed);
        let position = if self.servers == old.servers && self.weights == old.weights {
            tick
        } else {
            let due = old.servers[old.cycle[tick % old.cycle.len()] as usize];
            match self.servers.iter().position(|&a| a == due) {
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
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn firsts(b: &Balancer, n: usize) -> Vec<u16> {
        (0..n).map(|_| b.pick().next().unwrap().1.port()).collect()
    }

    #[test]
    fn equal_weights_rotate_and_then_try_the_rest() {
        let b = Balancer::new(
            vec![(addr(1), 1), (addr(2), 1), (addr(3), 1)],
            Health::default(),
        );
        let order: Vec<u16> = b.pick().map(|(_, a)| a.port()).collect();
        assert_eq!(order, [1, 2, 3]);
        let order: Vec<u16> = b.pick().map(|(_, a)| a.port()).collect();
        assert_eq!(order, [2, 3, 1]);
        assert_eq!(firsts(&b, 4), [3, 1, 2, 3]);
    }

    #[test]
    fn smooth_weighted_order_matches_nginx() {
        // nginx's documented example: weights 5, 1, 1 give a a b a c a a.
        let b = Balancer::new(
            vec![(addr(1), 5), (addr(2), 1), (addr(3), 1)],
            Health::default(),
        );
        assert_eq!(firsts(&b, 7), [1, 1, 2, 1, 3, 1, 1]);
    }

    #[test]
    fn weighted_split_is_exact_over_whole_cycles() {
        let b = Balancer::new(vec![(addr(1), 1), (addr(2), 3)], Health::default());
        let picks = firsts(&b, 1000);
        assert_eq!(picks.iter().filter(|&&p| p == 1).count(), 250);
        assert_eq!(picks.iter().filter(|&&p| p == 2).count(), 750);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a plain unit test, no runtime to block
    fn a_failing_server_is_skipped_until_fail_timeout_then_retried() {
        let health = Health {
            max_fails: 2,
            fail_timeout: Duration::from_millis(200),
        };
        let b = Balancer::new(vec![(addr(1), 1), (addr(2), 1)], health);
        assert!(!b.record_failure(0));
        assert!(b.record_failure(0), "second failure marks it down");
        assert!(b.is_down(0));
        for _ in 0..6 {
            let order: Vec<u16> = b.pick().map(|(_, a)| a.port()).collect();
            assert_eq!(order, [2, 1], "down server last");
        }
        std::thread::sleep(Duration::from_millis(250));
        assert!(!b.is_down(0));
        assert_eq!(firsts(&b, 2).iter().filter(|&&p| p == 1).count(), 1);
    }

    #[test]
    fn a_server_marked_down_during_a_walk_is_not_tried_twice() {
        let b = Balancer::new(vec![(addr(1), 1)], Health::default());
        let mut walk = b.pick();
        let (first, _) = walk.next().unwrap();
        assert!(b.record_failure(first));
        assert_eq!(walk.next(), None);
    }

    #[test]
    fn max_fails_zero_never_marks_down() {
        let health = Health {
            max_fails: 0,
            fail_timeout: Duration::from_secs(10),
        };
        let b = Balancer::new(vec![(addr(1), 1)], health);
        for _ in 0..10 {
            assert!(!b.record_failure(0));
        }
        assert!(!b.is_down(0));
    }

    fn health(max_fails: u32, fail_timeout: Duration) -> Health {
        Health {
            max_fails,
            fail_timeout,
        }
    }

    #[test]
    fn a_server_marked_down_takes_the_new_fail_timeout() {
        let old = Balancer::new(vec![(addr(1), 1)], health(1, Duration::from_secs(3600)));
        assert!(old.record_failure(0));
        let shorter = Balancer::new(vec![(addr(1), 1)], health(1, Duration::from_millis(1)));
        shorter.inherit_health(&old);
        let deadline = Instant::now() + Duration::from_secs(5);
        while shorter.is_down(0) {
            assert!(
                Instant::now() < deadline,
                "still down under the old fail_timeout"
            );
            std::thread::yield_now();
        }
        let longer = Balancer::new(vec![(addr(1), 1)], health(1, Duration::from_secs(7200)));
        longer.inherit_health(&old);
        assert!(longer.is_down(0));
        let since = old.state[0].down_since_ms.load(Ordering::Relaxed);
        assert_eq!(
            longer.state[0].down_until_ms.load(Ordering::Relaxed),
            since + 7_200_000,
            "down for the new fail_timeout from when it was marked"
        );
    }

    #[test]
    fn max_fails_zero_in_the_new_table_lifts_a_mark() {
        let old = Balancer::new(vec![(addr(1), 1)], Health::default());
        assert!(old.record_failure(0));
        let new = Balancer::new(vec![(addr(1), 1)], health(0, Duration::from_secs(10)));
        new.inherit_health(&old);
        assert!(!new.is_down(0));
    }

    #[test]
    fn round_robin_continues_across_a_reload() {
        let servers = vec![(addr(1), 1), (addr(2), 1)];
        let old = Balancer::new(servers.clone(), Health::default());
        assert_eq!(firsts(&old, 1), [1]);
        let new = Balancer::new(servers, Health::default());
        new.inherit_position(&old);
        assert_eq!(firsts(&new, 3), [2, 1, 2]);

        // Weighted and unchanged: the exact place in the cycle (a a b a c a a).
        let weighted = vec![(addr(1), 5), (addr(2), 1), (addr(3), 1)];
        let old = Balancer::new(weighted.clone(), Health::default());
        assert_eq!(firsts(&old, 3), [1, 1, 2]);
        let new = Balancer::new(weighted, Health::default());
        new.inherit_position(&old);
        assert_eq!(firsts(&new, 4), [1, 3, 1, 1]);
    }

    #[test]
    fn a_changed_group_starts_at_the_server_that_was_due() {
        let old = Balancer::new(
            vec![(addr(1), 1), (addr(2), 1), (addr(3), 1)],
            Health::default(),
        );
        assert_eq!(firsts(&old, 1), [1]);
        let new = Balancer::new(vec![(addr(3), 1), (addr(2), 1)], Health::default());
        new.inherit_position(&old);
        assert_eq!(firsts(&new, 2), [2, 3]);
        // The server due next is gone: the old position, wrapped into the new cycle.
        let gone = Balancer::new(vec![(addr(4), 1), (addr(5), 1)], Health::default());
        gone.inherit_position(&new);
        assert_eq!(firsts(&gone, 2), [5, 4]);
    }

    #[test]
    fn health_carries_over_to_a_reloaded_table() {
        let old = Balancer::new(vec![(addr(1), 1), (addr(2), 1)], Health::default());
        old.record_failure(1);
        let new = Balancer::new(vec![(addr(2), 1), (addr(3), 1)], Health::default());
        new.inherit_health(&old);
        assert!(new.is_down(0));
        assert!(!new.is_down(1));
    }
}
