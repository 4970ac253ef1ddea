//! Round robin, passive health and the carry-over of both across a reload.

use std::net::SocketAddr;

use super::*;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn port(a: &UpstreamAddr) -> u16 {
    match a {
        UpstreamAddr::Tcp(a) => a.port(),
        UpstreamAddr::Unix(_) => panic!("a TCP server expected"),
    }
}

fn firsts(b: &Balancer, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| port(b.pick(&Affinity::NONE).next().unwrap().1))
        .collect()
}

#[test]
fn equal_weights_rotate_and_then_try_the_rest() {
    let b = Balancer::new(
        vec![(addr(1), 1), (addr(2), 1), (addr(3), 1)],
        Health::default(),
    );
    let order: Vec<u16> = b.pick(&Affinity::NONE).map(|(_, a)| port(a)).collect();
    assert_eq!(order, [1, 2, 3]);
    let order: Vec<u16> = b.pick(&Affinity::NONE).map(|(_, a)| port(a)).collect();
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
        let order: Vec<u16> = b.pick(&Affinity::NONE).map(|(_, a)| port(a)).collect();
        assert_eq!(order, [2, 1], "down server last");
    }
    std::thread::sleep(Duration::from_millis(250));
    assert!(!b.is_down(0));
    assert_eq!(firsts(&b, 2).iter().filter(|&&p| p == 1).count(), 1);
}

#[test]
fn a_server_marked_down_during_a_walk_is_not_tried_twice() {
    let b = Balancer::new(vec![(addr(1), 1)], Health::default());
    let mut walk = b.pick(&Affinity::NONE);
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

fn with(balance: Balance, sticky: Option<&str>, ports: &[u16]) -> Balancer {
    let policy = Policy {
        balance,
        sticky_cookie: sticky.map(str::to_string),
    };
    let servers = ports.iter().map(|&p| (addr(p), 1)).collect();
    Balancer::with_policy("chat", servers, Health::default(), &policy)
}

fn first(b: &Balancer, affinity: &Affinity) -> u16 {
    port(b.pick(affinity).next().unwrap().1)
}

#[test]
fn least_conn_takes_the_least_loaded_and_ties_by_round_robin() {
    let b = with(Balance::LeastConn, None, &[1, 2, 3]);
    let held: Vec<_> = (0..4).map(|_| b.open(0)).collect();
    let _one = b.open(1);
    assert_eq!(first(&b, &Affinity::NONE), 3);
    let _three = b.open(2);
    // 4, 1, 1: servers 2 and 3 tie and take turns.
    let picks: Vec<u16> = (0..4).map(|_| first(&b, &Affinity::NONE)).collect();
    assert!(picks.iter().all(|&p| p != 1), "{picks:?}");
    assert!(picks.contains(&2) && picks.contains(&3), "{picks:?}");
    drop(held);
    assert_eq!(b.open_connections(0), 0);
    assert_eq!(first(&b, &Affinity::NONE), 1);
}

#[test]
fn least_conn_passes_over_a_server_marked_down() {
    let b = with(Balance::LeastConn, None, &[1, 2]);
    let _busy = b.open(1);
    assert!(b.record_failure(0));
    let order: Vec<u16> = b.pick(&Affinity::NONE).map(|(_, a)| port(a)).collect();
    assert_eq!(order, [2, 1]);
}

#[test]
fn hash_sends_a_key_to_one_server_and_no_key_round_robin() {
    let b = with(Balance::Hash(key::HashKey::ClientIp), None, &[1, 2, 3, 4]);
    for k in 0..50u64 {
        let affinity = Affinity {
            key: Some(stable_hash::stable_hash(&k.to_le_bytes())),
            cookie: None,
        };
        let one = first(&b, &affinity);
        assert!((0..5).all(|_| first(&b, &affinity) == one));
    }
    let spread: std::collections::HashSet<u16> =
        (0..4).map(|_| first(&b, &Affinity::NONE)).collect();
    assert_eq!(spread.len(), 4, "no key: round robin");
}

#[test]
fn a_hash_keys_server_marked_down_hands_it_to_another_until_it_is_back() {
    let b = Balancer::with_policy(
        "chat",
        vec![(addr(1), 1), (addr(2), 1), (addr(3), 1)],
        Health {
            max_fails: 1,
            fail_timeout: Duration::from_millis(300),
        },
        &Policy {
            balance: Balance::Hash(key::HashKey::Path),
            sticky_cookie: None,
        },
    );
    let affinity = Affinity {
        key: Some(42),
        cookie: None,
    };
    let (home, _) = b.pick(&affinity).next().unwrap();
    assert!(b.record_failure(home));
    let other = b.pick(&affinity).next().unwrap().0;
    assert_ne!(other, home);
    assert_eq!(
        b.pick(&affinity).next().unwrap().0,
        other,
        "the same stand-in"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.is_down(home) {
        assert!(Instant::now() < deadline);
        std::thread::yield_now();
    }
    assert_eq!(b.pick(&affinity).next().unwrap().0, home);
}

#[test]
fn a_valid_cookie_wins_while_its_server_is_up() {
    let b = with(Balance::RoundRobin, Some("srv"), &[1, 2, 3]);
    let id = cookie::server_id("chat", &addr(2).into());
    let affinity = Affinity {
        key: None,
        cookie: Some(id),
    };
    assert!((0..6).all(|_| first(&b, &affinity) == 2));
    assert_eq!(b.set_cookie(&affinity, 1), None, "already has it");
    let line = b
        .set_cookie(&Affinity::NONE, 1)
        .expect("a new client gets one");
    assert_eq!(
        &line[..],
        format!("Set-Cookie: srv={id:016x}; Path=/; HttpOnly\r\n").as_bytes()
    );
    assert!(b.record_failure(1));
    let elsewhere = first(&b, &affinity);
    assert_ne!(elsewhere, 2, "its server is down: balanced");
    let index = usize::from(elsewhere - 1);
    assert!(b.set_cookie(&affinity, index).is_some(), "and a new cookie");
    let unknown = Affinity {
        key: None,
        cookie: Some(7),
    };
    assert!(b.set_cookie(&unknown, 0).is_some());
}

#[test]
fn no_sticky_cookie_no_set_cookie() {
    let b = with(Balance::LeastConn, None, &[1]);
    assert_eq!(b.set_cookie(&Affinity::NONE, 0), None);
}

#[test]
fn open_counts_carry_over_to_a_reloaded_table() {
    let old = with(Balance::LeastConn, None, &[1, 2]);
    let _a = old.open(0);
    let _b = old.open(1);
    let _c = old.open(1);
    let mut new = with(Balance::LeastConn, None, &[2, 3]);
    new.inherit_loads(&old);
    drop(old);
    assert_eq!(new.open_connections(0), 2);
    assert_eq!(new.open_connections(1), 0);
    assert_eq!(first(&new, &Affinity::NONE), 3);
}

/// A unix socket server takes turns, is marked down and is known again after a reload like
/// a TCP one: its path is its identity.
#[test]
fn a_unix_socket_server_balances_like_a_tcp_one() {
    let unix = || {
        UpstreamAddr::parse_unix("unix:/run/chat.sock")
            .unwrap()
            .unwrap()
    };
    let servers = || vec![(unix(), 1), (UpstreamAddr::from(addr(1)), 1)];
    let b = Balancer::new(servers(), Health::default());
    let firsts: Vec<String> = (0..4)
        .map(|_| b.pick(&Affinity::NONE).next().unwrap().1.to_string())
        .collect();
    assert_eq!(
        firsts,
        [
            "unix:/run/chat.sock",
            "127.0.0.1:1",
            "unix:/run/chat.sock",
            "127.0.0.1:1"
        ]
    );
    assert!(b.record_failure(0));
    let order: Vec<usize> = b.pick(&Affinity::NONE).map(|(i, _)| i).collect();
    assert_eq!(order, [1, 0], "the down socket last");
    let after = Balancer::new(servers(), Health::default());
    after.inherit_health(&b);
    assert!(after.is_down(0), "the same path is the same server");
}

/// Workers that fail at once mark a server down once, after `max_fails` failures between them.
#[test]
fn concurrent_failures_mark_a_server_down_once() {
    let health = Health {
        max_fails: 3,
        fail_timeout: Duration::from_secs(60),
    };
    for _ in 0..50 {
        let b = Balancer::new(vec![(addr(1), 1), (addr(2), 1)], health);
        let marked: usize = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..5).filter(|_| b.record_failure(0)).count()))
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        assert_eq!(marked, 1);
        assert!(b.is_down(0));
    }
}

/// A server that active health checks took down is skipped by every balance mode and by a
/// sticky cookie, and tried last; its verdict carries over to a table that keeps it.
#[test]
fn an_actively_down_server_is_skipped_by_every_mode() {
    let servers = || vec![(addr(1), 1), (addr(2), 1), (addr(3), 1)];
    let modes = [
        Balance::RoundRobin,
        Balance::LeastConn,
        Balance::Hash(key::HashKey::Path),
    ];
    for balance in modes {
        let policy = Policy {
            balance,
            sticky_cookie: Some("srv".into()),
        };
        let b = Balancer::with_policy("chat", servers(), Health::default(), &policy);
        assert!(b.verdict(1).record(false, 1, 1));
        assert!(b.is_down(1));
        let cookie = cookie::server_id("chat", &addr(2).into());
        for key in 0..50u64 {
            let affinity = Affinity {
                key: Some(key.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                cookie: Some(cookie),
            };
            let order: Vec<u16> = b.pick(&affinity).map(|(_, a)| port(a)).collect();
            assert_eq!(order.last(), Some(&2), "{:?}: {order:?}", policy.balance);
            assert_eq!(order.len(), 3);
        }
        let mut next = Balancer::with_policy("chat", servers(), Health::default(), &policy);
        next.inherit_verdicts(&b);
        assert!(next.is_down(1));
        assert!(next.verdict(1).record(true, 1, 1));
        assert!(!b.is_down(1), "one verdict, shared");
    }
}
