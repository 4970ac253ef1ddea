//! Open-connection counts for `balance = "least_conn"`, and the least-loaded choice.
//!
//! A server's count is the reference count of one shared cell: every connection to it holds
//! a clone ([`Open`]) from its connect attempt until its tunnel or response ends, so opening
//! and closing cost exactly the one atomic add and sub an `Arc` clone and drop do, never
//! anything per message, and a connection that outlives the table it was picked from still
//! counts. The tables that list the server hold the other references, and say so in
//! `tables`, so `count = strong references - tables`. A reload hands the cell on to the new
//! table for servers that stay, so counts survive it (for an instant around the hand-over a
//! count may read one off, which a balancer can live with). Counting runs in every balance
//! mode, so switching a group to `least_conn` by a reload starts from true counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
struct Cell {
    /// How many tables hold this cell (as a [`Load`]).
    tables: AtomicUsize,
}

/// One server's count, as a table holds it.
#[derive(Debug)]
pub struct Load(Arc<Cell>);

impl Default for Load {
    fn default() -> Self {
        Load(Arc::new(Cell {
            tables: AtomicUsize::new(1),
        }))
    }
}

impl Load {
    /// The same count, for a new table that keeps the server.
    pub fn share(&self) -> Load {
        self.0.tables.fetch_add(1, Ordering::Relaxed);
        Load(Arc::clone(&self.0))
    }

    /// Counts one more connection until the returned guard drops.
    #[inline]
    pub fn open(&self) -> Open {
        Open {
            _cell: Arc::clone(&self.0),
        }
    }

    /// Connections open now (connect attempts and handshakes included), across all workers.
    #[inline]
    pub fn count(&self) -> usize {
        Arc::strong_count(&self.0).saturating_sub(self.0.tables.load(Ordering::Relaxed))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.tables.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One open connection to a server, counted until dropped; carried by the connection (into
/// its tunnel) for as long as it lives.
#[derive(Debug)]
pub struct Open {
    _cell: Arc<Cell>,
}

/// The server that gets the next connection: the one with the fewest open connections per
/// unit of weight among those `up`, the first of equals in rotation order from `start` (the
/// smooth weighted round-robin choice), so ties go by round robin. `start` itself when none
/// is up.
pub fn least_loaded(
    start: usize,
    loads: &[Load],
    weights: &[u32],
    up: impl Fn(usize) -> bool,
) -> usize {
    let n = loads.len();
    let mut best: Option<(usize, u64, u64)> = None;
    for i in (0..n).map(|k| (start + k) % n).filter(|&i| up(i)) {
        let (count, weight) = (loads[i].count() as u64, u64::from(weights[i]));
        // count/weight < best_count/best_weight, without division.
        if best.is_none_or(|(_, c, w)| count * w < c * weight) {
            best = Some((i, count, weight));
        }
    }
    best.map_or(start, |(i, _, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_follows_open_guards_across_tables() {
        let old = Load::default();
        assert_eq!(old.count(), 0);
        let a = old.open();
        let b = old.open();
        assert_eq!(old.count(), 2);
        let new = old.share();
        assert_eq!(new.count(), 2, "a reload keeps the count");
        drop(old);
        assert_eq!(new.count(), 2);
        drop(a);
        let c = new.open();
        assert_eq!(new.count(), 2);
        drop((b, c));
        assert_eq!(new.count(), 0);
    }

    #[test]
    fn fewest_per_weight_wins_and_ties_go_from_start() {
        let loads: Vec<Load> = (0..3).map(|_| Load::default()).collect();
        let _held: Vec<Open> = [0, 0, 1, 1, 2].iter().map(|&i| loads[i].open()).collect();
        let all = |_| true;
        // Counts 2, 2, 1.
        assert_eq!(least_loaded(0, &loads, &[1, 1, 1], all), 2);
        // Weight 3 on server 0: 2/3 < 1/1.
        assert_eq!(least_loaded(1, &loads, &[3, 1, 1], all), 0);
        // Ties (2/2 = 2/2 = 1/1) go to the first from start.
        assert_eq!(least_loaded(0, &loads, &[2, 2, 1], all), 0);
        assert_eq!(least_loaded(1, &loads, &[2, 2, 1], all), 1);
        assert_eq!(least_loaded(2, &loads, &[2, 2, 1], all), 2);
        // Down servers are passed over; none up gives start.
        assert_eq!(least_loaded(0, &loads, &[1, 1, 1], |i| i != 2), 0);
        assert_eq!(least_loaded(1, &loads, &[1, 1, 1], |_| false), 1);
    }
}
