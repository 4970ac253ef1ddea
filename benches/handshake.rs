//! The per-connection hot path before the byte pump: request head parse + upstream rewrite,
//! response head parse, upstream pick and relay-buffer reuse, all through the library's API;
//! and the cost of a head that trickles in a byte at a time, parsed on every read (what the
//! proxy did before [`HeadScan`]) against scanned once.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wsplice::http::{ClientInfo, HeadScan, MAX_HEADERS, Parsed, parse_request, parse_response};
use wsplice::proxy::limits::{Admit, ClientLimits};
use wsplice::upstream::balancer::key::HashKey;
use wsplice::upstream::balancer::{Affinity, Balance, Balancer, Health, Policy};
use wsplice::uring::buffers::BufferPool;

const SMALL_UPGRADE: &[u8] = b"GET /chat HTTP/1.1\r\n\
Host: server.example.com\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Origin: http://example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
\r\n";

const SWITCHING: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
\r\n";

/// A browser upgrade carrying a heavy cookie jar and tracing headers: about 8 KiB.
fn large_upgrade() -> Vec<u8> {
    let mut head = b"GET /chat?room=lobby&token=abcdef0123456789 HTTP/1.1\r\n\
Host: server.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: */*\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Sec-WebSocket-Version: 13\r\n\
Origin: https://example.com\r\n\
Sec-WebSocket-Extensions: permessage-deflate\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Connection: keep-alive, Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
Upgrade: websocket\r\n\
X-Forwarded-For: 198.51.100.1, 198.51.100.2\r\n"
        .to_vec();
    let mut i = 0;
    while head.len() < 8 * 1024 - 200 {
        head.extend_from_slice(
            format!(
                "Cookie: session_{i:02}=Zm9vYmFyYmF6cXV4MDEyMzQ1Njc4OWFiY2RlZmdoaWprbG1ub3BxcnN0dXZ3eHl6QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo\r\n"
            )
            .as_bytes(),
        );
        head.extend_from_slice(
            format!("X-Trace-{i:02}: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n")
                .as_bytes(),
        );
        i += 1;
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn client() -> ClientInfo {
    ClientInfo::direct(
        "203.0.113.7:51234".parse().unwrap(),
        "127.0.0.1:8080".parse().unwrap(),
    )
}

fn bench_request(c: &mut Criterion) {
    let large = large_upgrade();
    let client = client();
    let mut group = c.benchmark_group("parse_request+write_upstream");
    for (name, head) in [("small", SMALL_UPGRADE), ("8KiB", &large[..])] {
        let mut out = Vec::with_capacity(2 * head.len());
        group.throughput(Throughput::Bytes(head.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let Ok(Parsed::Complete(req)) = parse_request(black_box(head), &mut headers) else {
                    panic!("bench head does not parse");
                };
                out.clear();
                req.write_upstream(&client, &mut out);
                black_box(&out);
            })
        });
    }
    group.finish();
}

fn bench_response(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_response");
    group.throughput(Throughput::Bytes(SWITCHING.len() as u64));
    group.bench_function("101", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let Ok(Parsed::Complete(resp)) = parse_response(black_box(SWITCHING), &mut headers)
            else {
                panic!("bench head does not parse");
            };
            black_box(resp.status);
        })
    });
    group.finish();
}

/// A 16 KiB head, as 40 fields of 400 bytes.
fn slow_head() -> Vec<u8> {
    let mut head = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\n".to_vec();
    let pad = format!("X-Pad: {}\r\n", "a".repeat(400));
    while head.len() < 16 * 1024 {
        head.extend_from_slice(pad.as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Feeds `head` one byte per read and parses whenever `ready` says so; panics unless the
/// head parses once whole.
fn trickle(head: &[u8], buf: &mut Vec<u8>, mut ready: impl FnMut(&[u8]) -> bool) {
    buf.clear();
    for &byte in head {
        buf.push(byte);
        if !ready(buf) {
            continue;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        if let Ok(Parsed::Complete(req)) = parse_request(buf, &mut headers) {
            assert_eq!(req.len, head.len());
            return;
        }
    }
    panic!("bench head does not parse");
}

fn bench_slow_head(c: &mut Criterion) {
    let head = slow_head();
    let mut buf = Vec::with_capacity(head.len());
    let mut group = c.benchmark_group("16KiB head in 1-byte reads");
    group.sample_size(10);
    group.bench_function("parsed on every read (before)", |b| {
        b.iter(|| trickle(black_box(&head), &mut buf, |_| true))
    });
    group.bench_function("scanned once (HeadScan)", |b| {
        b.iter(|| {
            let mut scan = HeadScan::default();
            trickle(black_box(&head), &mut buf, |buf| scan.ready(buf))
        })
    });
    group.finish();
}

fn bench_pick(c: &mut Criterion) {
    let servers: Vec<(SocketAddr, u32)> = (0..4)
        .map(|i| (SocketAddr::from(([10, 0, 0, i], 3000)), u32::from(i) + 1))
        .collect();
    let balancer = Balancer::new(servers.clone(), Health::default());
    c.bench_function("Balancer::pick", |b| {
        b.iter(|| black_box(balancer.pick(&Affinity::NONE).next()))
    });
    let with = |balance, sticky: Option<&str>| {
        let policy = Policy {
            balance,
            sticky_cookie: sticky.map(str::to_string),
        };
        Balancer::with_policy("chat", servers.clone(), Health::default(), &policy)
    };
    // What a connection pays: the choice plus its open-connection count held and dropped.
    let least = with(Balance::LeastConn, None);
    c.bench_function("Balancer::pick least_conn + open", |b| {
        b.iter(|| {
            let (i, addr) = least.pick(&Affinity::NONE).next().unwrap();
            black_box((least.open(i), addr))
        })
    });
    let hash = with(Balance::Hash(HashKey::Header("X-User".into())), Some("srv"));
    let head = b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com\r\nX-User: alice@example.com\r\nCookie: a=1; srv=00000000000000ff\r\n\r\n";
    let client = std::net::IpAddr::from([10, 1, 2, 3]);
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Ok(Parsed::Complete(req)) = parse_request(head, &mut headers) else {
        unreachable!("a complete head")
    };
    c.bench_function("Balancer::affinity + pick hash header + sticky", |b| {
        b.iter(|| {
            let affinity = hash.affinity(black_box(&req), b"/chat", client);
            black_box(hash.pick(&affinity).next())
        })
    });
}

fn bench_buffers(c: &mut Criterion) {
    let pool = BufferPool::new(16 * 1024, 64);
    c.bench_function("BufferPool get+put", |b| {
        b.iter(|| {
            let buf = pool.get();
            pool.put(black_box(buf));
        })
    });
}

/// What the per-client limits add to each connection (open + close at accept) and to each
/// request head (the rate check), spread over many addresses as a flood would be.
fn bench_client_limits(c: &mut Criterion) {
    let limits = wsplice::config::Limits {
        max_request_head: 16384,
        max_connections: 9000,
        receive_buffers: 256,
        multishot_receive: false,
        defer_taskrun: None,
        max_connections_per_ip: 100,
        handshake_rate_per_ip: Some(wsplice::config::Rate {
            requests: 1_000_000,
            per: std::time::Duration::from_secs(1),
        }),
    };
    let table = ClientLimits::new(&limits);
    let mut n = 0u32;
    let mut next_ip = move || {
        n = n.wrapping_add(0x9E37_79B9);
        std::net::IpAddr::from(n.to_be_bytes())
    };
    c.bench_function("client limits open+close", |b| {
        b.iter(|| {
            if let Admit::Counted(bucket) = table.open(black_box(next_ip())) {
                table.close(bucket);
            }
        })
    });
    c.bench_function("client limits rate check", |b| {
        b.iter(|| table.request(black_box(next_ip())))
    });
}

criterion_group!(
    benches,
    bench_request,
    bench_response,
    bench_slow_head,
    bench_pick,
    bench_buffers,
    bench_client_limits
);
criterion_main!(benches);
