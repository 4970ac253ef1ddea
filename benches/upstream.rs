//! Picking an upstream as a new connection does (load the current table, find the route's
//! group, take the round-robin choice), alone and while another thread keeps swapping in new
//! tables as a reload does, to show that readers never wait for the swapper.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;

use arc_swap::ArcSwap;
use criterion::{Criterion, criterion_group, criterion_main};
use wsplice::config::Config;
use wsplice::upstream::UpstreamTable;
use wsplice::upstream::balancer::Affinity;

const CONFIG: &str = r#"
listen = ["127.0.0.1:0"]
upstreams = "upstreams.toml"

[[route]]
path = "/chat"
upstream = "chat"

[[route]]
path = "/"
upstream = "backend"
"#;

fn table(config: &Config, first_port: u16) -> UpstreamTable {
    let servers = |base: u16| {
        (0..4)
            .map(|i| format!("\"127.0.0.1:{}\"", base + i))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        "[backend]\nservers = [{}]\n\n[chat]\nservers = [{}]\n",
        servers(first_port),
        servers(first_port + 100)
    );
    UpstreamTable::parse(Path::new("upstreams.toml"), &text, config).expect("valid table")
}

fn bench_pick(c: &mut Criterion) {
    let config = Config::parse(Path::new("wsplice.toml"), CONFIG).expect("valid config");
    let route = config.routes.find(b"", b"/chat/room").expect("a route");
    let shared = Arc::new(ArcSwap::from_pointee(table(&config, 3000)));
    let pick = |shared: &ArcSwap<UpstreamTable>| {
        let table = shared.load_full();
        black_box(
            table
                .group_for_route(route)
                .balancer
                .pick(&Affinity::NONE)
                .next()
                .map(|(i, addr)| (i, addr.clone())),
        )
    };

    let mut group = c.benchmark_group("round-robin pick");
    group.bench_function("steady table", |b| b.iter(|| pick(&shared)));

    let tables: Vec<Arc<UpstreamTable>> = (0..4)
        .map(|i| Arc::new(table(&config, 4000 + 1000 * i)))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (shared, stop, swaps) = (shared.clone(), stop.clone(), swaps.clone());
        thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                shared.store(tables[i % tables.len()].clone());
                swaps.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    group.bench_function("while another thread swaps tables", |b| {
        b.iter(|| pick(&shared))
    });
    stop.store(true, Ordering::Relaxed);
    swapper.join().expect("swapper thread");
    group.finish();
    assert!(
        swaps.load(Ordering::Relaxed) > 0,
        "the table was never swapped during the bench"
    );
}

criterion_group!(benches, bench_pick);
criterion_main!(benches);
