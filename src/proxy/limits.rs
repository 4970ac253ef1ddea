//! Per-client limits shared by all workers: open connections (`limits.max_connections_per_ip`)
//! and request heads per second (`limits.handshake_rate_per_ip`) per client address, an IPv6
//! client by its /64.
//!
//! The table is a fixed array of buckets, sized once at start from `limits.max_connections`,
//! indexed by a keyed hash of the address: a flood from any number of addresses cannot grow
//! it, and nothing is ever inserted, evicted or swept. Addresses that share a bucket share its
//! counts, so a collision can only make the limit stricter, never looser; the hash key is
//! random per process, so nobody can aim their addresses at someone else's bucket. Each
//! bucket is two atomics (a connection count, and a GCRA "theoretical arrival time" for the
//! rate), updated by compare-and-swap: no lock, and workers meet only when their clients land
//! in the same bucket.
//!
//! Connections are counted against their client address once it is known, and a refused
//! one is answered 429 like a 503 over `limits.max_connections`: at accept, before a byte is
//! read, for a direct client; after the PROXY header, before any request, on a
//! `proxy_protocol` listener; at the first complete request head for a trusted proxy's
//! connection (the client its `X-Forwarded-For` names). The count is released by the
//! connection's [`Slot`](super::Slot). The rate is checked once per
//! complete request head (each keep-alive request counts), before it is routed.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::Limits;

/// Fewest and most buckets: 64 KiB to 16 MiB of table.
const MIN_BUCKETS: usize = 1 << 12;
const MAX_BUCKETS: usize = 1 << 20;
/// Buckets per allowed connection: with that many, an address shares its bucket with a busy
/// one in about one case in eight even when every connection comes from its own address.
const BUCKETS_PER_CONNECTION: usize = 8;

#[derive(Debug, Default)]
struct Bucket {
    open: AtomicU32,
    /// Nanoseconds after `epoch` at which the bucket is empty again (GCRA).
    tat: AtomicU64,
}

/// What counting a new connection decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// `max_connections_per_ip` is off: nothing counted.
    Off,
    /// Counted in this bucket; give it back to [`ClientLimits::close`] when the connection ends.
    Counted(u32),
    /// The address already holds its limit: nothing counted.
    Refused,
}

/// The per-client table; see the module doc.
#[derive(Debug)]
pub struct ClientLimits {
    buckets: Box<[Bucket]>,
    hasher: RandomState,
    /// 0: off.
    max_open: u32,
    /// Nanoseconds between two requests at the configured rate; 0: off.
    interval: u64,
    /// How far ahead of now a bucket's arrival time may run: one burst's worth.
    tolerance: u64,
    epoch: Instant,
}

impl ClientLimits {
    pub fn new(limits: &Limits) -> Self {
        let max_open = u32::try_from(limits.max_connections_per_ip).unwrap_or(u32::MAX);
        let (interval, tolerance) = match limits.handshake_rate_per_ip {
            Some(rate) => {
                let interval = (rate.per.as_nanos() / u128::from(rate.requests)).max(1) as u64;
                (interval, interval * u64::from(rate.burst()))
            }
            None => (0, 0),
        };
        let count = if max_open == 0 && interval == 0 {
            0
        } else {
            (limits
                .max_connections
                .saturating_mul(BUCKETS_PER_CONNECTION))
            .next_power_of_two()
            .clamp(MIN_BUCKETS, MAX_BUCKETS)
        };
        ClientLimits {
            buckets: (0..count).map(|_| Bucket::default()).collect(),
            hasher: RandomState::new(),
            max_open,
            interval,
            tolerance,
            epoch: Instant::now(),
        }
    }

    /// Buckets in the table (0 when both limits are off); fixed for the process's life.
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Buckets holding open connections now (read by a scrape, not on the hot path).
    pub fn busy(&self) -> usize {
        self.buckets
            .iter()
            .filter(|b| b.open.load(Ordering::Relaxed) > 0)
            .count()
    }

    /// Bytes the table takes, whatever the number of addresses seen.
    pub fn memory(&self) -> usize {
        std::mem::size_of_val(&*self.buckets)
    }

    /// The bucket of `ip`: IPv4 (also IPv4-mapped IPv6) by address, IPv6 by its /64, since
    /// one host is usually given a whole /64.
    fn bucket_of(&self, ip: IpAddr) -> usize {
        let key: (u8, u64) = match ip {
            IpAddr::V4(v4) => (4, u64::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => (4, u64::from(u32::from(v4))),
                None => (6, (u128::from(v6) >> 64) as u64),
            },
        };
        self.hasher.hash_one(key) as usize & (self.buckets.len() - 1)
    }

    /// Counts a new connection from `ip`, unless its address already holds
    /// `max_connections_per_ip`.
    pub fn open(&self, ip: IpAddr) -> Admit {
        if self.max_open == 0 {
            return Admit::Off;
        }
        let index = self.bucket_of(ip);
        let max = self.max_open;
        match self.buckets[index]
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            }) {
            Ok(_) => Admit::Counted(index as u32),
            Err(_) => Admit::Refused,
        }
    }

    /// Counts a connection from `ip` that is open already (handed over by the process this
    /// one replaced), even past `max_connections_per_ip`.
    pub fn carry(&self, ip: IpAddr) -> Admit {
        if self.max_open == 0 {
            return Admit::Off;
        }
        let index = self.bucket_of(ip);
        self.buckets[index].open.fetch_add(1, Ordering::Relaxed);
        Admit::Counted(index as u32)
    }

    /// Gives back a connection counted by [`open`](Self::open).
    pub fn close(&self, bucket: u32) {
        self.buckets[bucket as usize]
            .open
            .fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether `ip` may send another request head now (a token bucket in GCRA form: one
    /// atomic per bucket). A refused request takes nothing, so a client that keeps trying is
    /// let through again at the configured rate.
    pub fn request(&self, ip: IpAddr) -> bool {
        if self.interval == 0 {
            return true;
        }
        let now = self.epoch.elapsed().as_nanos() as u64;
        let tat = &self.buckets[self.bucket_of(ip)].tat;
        let mut current = tat.load(Ordering::Relaxed);
        loop {
            let next = current.max(now) + self.interval;
            if next - now > self.tolerance {
                return false;
            }
            match tat.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }

    /// How long until `ip` may send a request again (for tests and logs).
    pub fn wait(&self, ip: IpAddr) -> Duration {
        if self.interval == 0 {
            return Duration::ZERO;
        }
        let now = self.epoch.elapsed().as_nanos() as u64;
        let tat = self.buckets[self.bucket_of(ip)].tat.load(Ordering::Relaxed);
        Duration::from_nanos((tat.max(now) + self.interval - now).saturating_sub(self.tolerance))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rate;

    fn limits(per_ip: usize, rate: Option<u32>) -> ClientLimits {
        ClientLimits::new(&Limits {
            max_request_head: 16384,
            max_connections: 9000,
            receive_buffers: 256,
            multishot_receive: false,
            defer_taskrun: None,
            max_connections_per_ip: per_ip,
            handshake_rate_per_ip: rate.map(|requests| Rate {
                requests,
                per: Duration::from_secs(1),
            }),
        })
    }

    #[test]
    fn both_off_costs_no_table() {
        let table = limits(0, None);
        assert_eq!(table.buckets(), 0);
        assert_eq!(table.open("10.0.0.1".parse().unwrap()), Admit::Off);
        assert!(table.request("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn connections_are_counted_per_address_and_given_back() {
        let table = limits(2, None);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let Admit::Counted(first) = table.open(a) else {
            panic!()
        };
        assert!(matches!(table.open(a), Admit::Counted(_)));
        assert_eq!(table.open(a), Admit::Refused);
        assert!(matches!(table.open(b), Admit::Counted(_)));
        table.close(first);
        assert!(matches!(table.open(a), Admit::Counted(_)));
    }

    #[test]
    fn ipv6_is_grouped_by_its_64_and_mapped_ipv4_is_ipv4() {
        let table = limits(1, None);
        assert!(matches!(
            table.open("2001:db8:1:2::1".parse().unwrap()),
            Admit::Counted(_)
        ));
        let same_64 = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        assert_eq!(table.open(same_64), Admit::Refused);
        assert!(matches!(
            table.open("192.0.2.7".parse().unwrap()),
            Admit::Counted(_)
        ));
        assert_eq!(
            table.open("::ffff:192.0.2.7".parse().unwrap()),
            Admit::Refused
        );
    }

    #[test]
    fn rate_allows_one_seconds_burst_then_refills_at_the_rate() {
        let table = limits(0, Some(5));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let passed = (0..10).filter(|_| table.request(a)).count();
        assert_eq!(passed, 5);
        assert!(table.request("10.0.0.2".parse().unwrap()));
        let wait = table.wait(a);
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(200));
    }

    /// A flood from a million addresses leaves the table as it was sized at start, each
    /// bucket's count exact (every open is matched by a close).
    #[test]
    fn the_table_stays_bounded_whatever_the_addresses() {
        let table = limits(1, Some(1));
        let memory = table.memory();
        assert_eq!(
            table.buckets(),
            (9000 * BUCKETS_PER_CONNECTION).next_power_of_two()
        );
        let mut held = Vec::new();
        for i in 0..1_000_000u32 {
            let ip = IpAddr::from(i.wrapping_mul(2_654_435_761).to_be_bytes());
            table.request(ip);
            if let Admit::Counted(b) = table.open(ip) {
                held.push(b);
            }
        }
        assert_eq!(table.memory(), memory);
        assert_eq!(table.busy(), held.len());
        assert!(held.len() <= table.buckets());
        for b in held {
            table.close(b);
        }
        assert_eq!(table.busy(), 0);
        println!(
            "client limits table: {} buckets, {} KiB",
            table.buckets(),
            memory / 1024
        );
    }
}
