//! Consistent hashing for `balance = "hash"`: a weighted hash ring (ketama, as nginx's
//! `hash ... consistent`). Each server owns 160 points per unit of weight, placed by the
//! stable hash of its address and the point's number; a key goes to the owner of the first
//! point at or after the key's hash.
//!
//! A ring rather than Maglev: a server's points depend on nothing but its own address and
//! weight, so removing a server moves exactly the keys that were on it and no other key, and
//! adding one takes keys only onto itself. Maglev fills its table by letting servers take
//! turns, so a change also reassigns a small share of other servers' slots: for WebSocket
//! clients that reconnect after a change, that share would be torn off servers that never
//! changed. The price is a binary search per pick (at most 18 steps) against Maglev's one
//! lookup, which is nothing beside a connect.

use std::fmt::Display;

use super::stable_hash::StableHasher;

/// Ring points per unit of weight (ketama's and nginx's number).
const POINTS_PER_WEIGHT: u64 = 160;
/// Most points in one ring (2.5 MiB). Past it, every server gets proportionally fewer
/// points (at least one per unit of weight); only then does a change move other keys too.
const MAX_POINTS: u64 = 1 << 18;

/// The points of every server, sorted by hash.
#[derive(Debug)]
pub struct Ring {
    hashes: Vec<u64>,
    /// Index into the group's servers of the point at the same position in `hashes`.
    owners: Vec<u16>,
}

impl Ring {
    /// The ring of `servers` with their weights.
    pub fn new(servers: &[impl Display], weights: &[u32]) -> Self {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let per_weight = POINTS_PER_WEIGHT.min(MAX_POINTS / total.max(1)).max(1);
        let mut points: Vec<(u64, u16)> = Vec::with_capacity((total * per_weight) as usize);
        for (i, (addr, &weight)) in servers.iter().zip(weights).enumerate() {
            let name = addr.to_string();
            for point in 0..u64::from(weight) * per_weight {
                let hash = StableHasher::default()
                    .write(name.as_bytes())
                    .write(b"#")
                    .write(&point.to_le_bytes())
                    .finish();
                points.push((hash, i as u16));
            }
        }
        points.sort_unstable();
        Ring {
            hashes: points.iter().map(|p| p.0).collect(),
            owners: points.iter().map(|p| p.1).collect(),
        }
    }

    /// The server for a key with hash `key`: the owner of the first point at or after it,
    /// walking on past the points of servers not `up` (so a server's keys spread over the
    /// others while it is down, and come back when it is up). None when no server is up.
    pub fn lookup(&self, key: u64, up: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.hashes.len();
        let first = self.hashes.partition_point(|&h| h < key);
        (0..n)
            .map(|k| usize::from(self.owners[(first + k) % n]))
            .find(|&i| up(i))
    }

    pub fn points(&self) -> usize {
        self.hashes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::balancer::stable_hash::stable_hash;
    use std::net::SocketAddr;

    fn servers(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, i as u8 + 1], 3000)))
            .collect()
    }

    fn place(ring: &Ring, group: &[SocketAddr], keys: u32) -> Vec<SocketAddr> {
        (0..keys)
            .map(|k| {
                let key = stable_hash(format!("user-{k}").as_bytes());
                group[ring.lookup(key, |_| true).unwrap()]
            })
            .collect()
    }

    #[test]
    fn removing_one_of_n_moves_only_its_own_keys() {
        let all = servers(5);
        let before = place(&Ring::new(&all, &[1; 5]), &all, 20_000);
        let removed = all[2];
        let rest: Vec<SocketAddr> = all.iter().copied().filter(|&a| a != removed).collect();
        let after = place(&Ring::new(&rest, &[1; 4]), &rest, 20_000);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if *b == removed {
                moved += 1;
            } else {
                assert_eq!(a, b, "a key of a server that stayed moved");
            }
        }
        let share = f64::from(moved) / 20_000.0;
        assert!(
            (0.12..0.28).contains(&share),
            "{share} moved, about 1/5 expected"
        );
    }

    #[test]
    fn adding_a_server_takes_keys_only_onto_it() {
        let all = servers(4);
        let before = place(&Ring::new(&all[..3], &[1; 3]), &all[..3], 20_000);
        let after = place(&Ring::new(&all, &[1; 4]), &all, 20_000);
        for (b, a) in before.iter().zip(&after) {
            assert!(a == b || *a == all[3], "{b} -> {a}");
        }
    }

    #[test]
    fn keys_spread_by_weight() {
        let all = servers(2);
        let placed = place(&Ring::new(&all, &[1, 3]), &all, 20_000);
        let on_heavy = placed.iter().filter(|&&a| a == all[1]).count();
        let share = on_heavy as f64 / 20_000.0;
        assert!((0.68..0.82).contains(&share), "{share} on weight 3 of 4");
    }

    #[test]
    fn a_down_servers_keys_go_to_the_others_and_come_back() {
        let all = servers(3);
        let ring = Ring::new(&all, &[1; 3]);
        let key = (0..)
            .map(|k: u32| stable_hash(&k.to_le_bytes()))
            .find(|&h| ring.lookup(h, |_| true) == Some(1))
            .unwrap();
        let elsewhere = ring.lookup(key, |i| i != 1).unwrap();
        assert_ne!(elsewhere, 1);
        assert_eq!(ring.lookup(key, |i| i != 1), Some(elsewhere), "stable");
        assert_eq!(ring.lookup(key, |_| true), Some(1));
        assert_eq!(ring.lookup(key, |_| false), None);
    }

    #[test]
    fn a_huge_group_stays_within_the_point_budget() {
        let all: Vec<SocketAddr> = (0..256)
            .map(|i| SocketAddr::from(([10, 0, 1, i as u8], 3000)))
            .collect();
        let ring = Ring::new(&all, &[1000; 256]);
        assert_eq!(ring.points(), 256_000);
    }
}
