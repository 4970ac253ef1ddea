//! Upstream changes as a non-event: hot swap under load in all three write styles, weights,
//! passive health, and a binary handoff without a refused connection.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Proxy, TestConfig, echo_upstream, upstreams};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Opens a tunnel, checks one echo, and returns which upstream served it.
async fn probe(url: &str) -> Result<SocketAddr, String> {
    let (mut ws, response) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| format!("handshake failed: {e}"))?;
    let upstream = response
        .headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or("no X-Upstream header")?;
    ws.send(Message::text("probe"))
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(m))) if m == Message::text("probe") => {}
        other => return Err(format!("bad echo: {other:?}")),
    }
    let _ = ws.close(None).await;
    Ok(upstream)
}

/// The three ways operators replace a file.
#[derive(Clone, Copy, Debug)]
enum Style {
    InPlace,
    Rename,
    SymlinkSwap,
}

fn replace_file(dir: &Path, style: Style, content: &str, generation: usize) {
    let file = dir.join("upstreams.toml");
    match style {
        Style::InPlace => std::fs::write(&file, content).unwrap(),
        Style::Rename => {
            let tmp = dir.join(".upstreams.toml.tmp");
            std::fs::write(&tmp, content).unwrap();
            std::fs::rename(&tmp, &file).unwrap();
        }
        Style::SymlinkSwap => {
            // Kubernetes ConfigMap layout: upstreams.toml -> ..data/upstreams.toml,
            // ..data -> ..gen_N; an update re-points ..data with one rename.
            let gen_dir = format!("..gen_{generation}");
            std::fs::create_dir(dir.join(&gen_dir)).unwrap();
            std::fs::write(dir.join(&gen_dir).join("upstreams.toml"), content).unwrap();
            let tmp = dir.join("..data_tmp");
            std::os::unix::fs::symlink(&gen_dir, &tmp).unwrap();
            std::fs::rename(&tmp, dir.join("..data")).unwrap();
            if std::fs::symlink_metadata(&file).is_ok_and(|m| !m.file_type().is_symlink()) {
                let link_tmp = dir.join(".upstreams.link");
                std::os::unix::fs::symlink("..data/upstreams.toml", &link_tmp).unwrap();
                std::fs::rename(&link_tmp, &file).unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_swaps_under_load_in_three_write_styles() {
    const TUNNELS: usize = 200;
    const SWAPS: usize = 100;
    let mut set_a = Vec::new();
    let mut set_b = Vec::new();
    for _ in 0..2 {
        set_a.push(echo_upstream::start("127.0.0.1:0").await.unwrap().0);
        set_b.push(echo_upstream::start("127.0.0.1:0").await.unwrap().0);
    }
    let config = TestConfig::default().limit("max_connections", 2000);
    let proxy = Proxy::start(&config, &upstreams("backend", &set_a));
    let url = proxy.url("/ws");
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let echoes = Arc::new(AtomicUsize::new(0));
    let handshakes = Arc::new(AtomicUsize::new(0));

    let mut load = Vec::new();
    for i in 0..TUNNELS {
        let (url, stop, errors, echoes) =
            (url.clone(), stop.clone(), errors.clone(), echoes.clone());
        load.push(tokio::spawn(async move {
            let (mut ws, _) = match tokio_tungstenite::connect_async(&url).await {
                Ok(ok) => ok,
                Err(e) => return errors.lock().unwrap().push(format!("tunnel {i}: {e}")),
            };
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let text = format!("{i}:{n}");
                let echo = async {
                    ws.send(Message::text(text.clone())).await?;
                    ws.next().await.transpose()
                };
                match tokio::time::timeout(Duration::from_secs(5), echo).await {
                    Ok(Ok(Some(m))) if m == Message::text(text.clone()) => {
                        echoes.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("tunnel {i} broke: {other:?}"));
                        return;
                    }
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    for _ in 0..2 {
        let (url, stop, errors, handshakes) = (
            url.clone(),
            stop.clone(),
            errors.clone(),
            handshakes.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match probe(&url).await {
                    Ok(_) => handshakes.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.lock().unwrap().push(format!("new connection: {e}"));
                        return;
                    }
                };
            }
        }));
    }

    let dir = proxy.dir.path().to_path_buf();
    let mut slowest = Duration::ZERO;
    for swap in 1..=SWAPS {
        let style = match swap * 3 / (SWAPS + 1) {
            0 => Style::InPlace,
            1 => Style::Rename,
            _ => Style::SymlinkSwap,
        };
        if swap == SWAPS / 2 {
            let refused_before = proxy.log().matches("reload refused").count();
            replace_file(&dir, style, "[backend]\nservers = [\"no-port\"]\n", swap);
            let deadline = Instant::now() + Duration::from_secs(2);
            while proxy.log().matches("reload refused").count() == refused_before {
                assert!(Instant::now() < deadline, "invalid file not reported");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(proxy.log().contains("upstreams.toml:2:"), "{}", proxy.log());
            let current = if swap % 2 == 0 { &set_a } else { &set_b };
            for _ in 0..4 {
                let served = probe(&url).await.unwrap();
                assert!(
                    !current.contains(&served),
                    "the refused file changed the table"
                );
            }
        }
        let next = if swap % 2 == 1 { &set_b } else { &set_a };
        replace_file(&dir, style, &upstreams("backend", next), swap + 1000);
        let written = Instant::now();
        loop {
            let served = probe(&url).await.unwrap();
            if next.contains(&served) {
                break;
            }
            assert!(
                written.elapsed() < Duration::from_secs(1),
                "swap {swap} ({style:?}) not in effect after 1 s:\n{}",
                proxy.log()
            );
        }
        slowest = slowest.max(written.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let errors = errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "{} failures, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert!(handshakes.load(Ordering::Relaxed) > SWAPS);
    eprintln!(
        "{SWAPS} swaps: {} tunnel echoes, {} new connections, 0 failures, slowest swap {slowest:?}",
        echoes.load(Ordering::Relaxed),
        handshakes.load(Ordering::Relaxed)
    );
}

/// An in-place write that pauses half-way is never taken; its completion is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_written_file_never_replaces_the_table() {
    use std::io::Write;
    let (a, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let (b, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(&TestConfig::default(), &upstreams("backend", &[a]));
    let content = upstreams("backend", &[b]);
    let (first, rest) = content.split_at(content.len() / 2);
    let mut file = std::fs::File::create(proxy.upstreams_path()).unwrap();
    file.write_all(first.as_bytes()).unwrap();
    file.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(probe(&proxy.url("/")).await.unwrap(), a);
    file.write_all(rest.as_bytes()).unwrap();
    drop(file);
    let written = Instant::now();
    while probe(&proxy.url("/")).await.unwrap() != b {
        assert!(
            written.elapsed() < Duration::from_secs(1),
            "complete file not taken"
        );
    }
    let change = format!("backend: +{b} -{a}");
    assert!(
        proxy.wait_log(&change, Duration::from_secs(2)).await,
        "{}",
        proxy.log()
    );
    assert!(!proxy.log().contains("reload refused"), "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_over_a_thousand_connections() {
    let (light, seen_light) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let (heavy, seen_heavy) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let file =
        format!("[backend]\nservers = [\"{light}\", {{ addr = \"{heavy}\", weight = 3 }}]\n");
    let proxy = Proxy::start(&TestConfig::default(), &file);
    let url = proxy.url("/ws");
    for _ in 0..10 {
        let batch: Vec<_> = (0..100)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { probe(&url).await.unwrap() })
            })
            .collect();
        for t in batch {
            t.await.unwrap();
        }
    }
    let (l, h) = (
        seen_light.upgrades.load(Ordering::Relaxed),
        seen_heavy.upgrades.load(Ordering::Relaxed),
    );
    assert!(
        l.abs_diff(250) <= 1 && h.abs_diff(750) <= 1,
        "split {l}/{h}"
    );
}

/// nginx `max_fails=1 fail_timeout=1s`: a dead server costs one failed connect, is skipped
/// for the window, and is tried again after it (here it has come back to life by then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_server_is_skipped_for_fail_timeout_then_retried() {
    let dead = common::dead_addr();
    let (live, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let file = format!(
        "[backend]\nservers = [\"{dead}\", \"{live}\"]\nmax_fails = 1\nfail_timeout = \"1s\"\n"
    );
    let proxy = Proxy::start(&TestConfig::default(), &file);
    let url = proxy.url("/ws");
    let marked = Instant::now();
    assert_eq!(probe(&url).await.unwrap(), live);
    assert!(
        proxy
            .wait_log("marked down for 1s", Duration::from_secs(2))
            .await
    );

    let (_, revived) = echo_upstream::start(&dead.to_string()).await.unwrap();
    while marked.elapsed() < Duration::from_millis(800) {
        assert_eq!(
            probe(&url).await.unwrap(),
            live,
            "skipped while marked down"
        );
    }
    assert_eq!(revived.upgrades.load(Ordering::Relaxed), 0);
    assert_eq!(
        proxy.log().matches("connect failed").count(),
        1,
        "{}",
        proxy.log()
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut served = Vec::new();
    for _ in 0..4 {
        served.push(probe(&url).await.unwrap());
    }
    assert!(
        served.contains(&dead),
        "retried after fail_timeout: {served:?}"
    );
}

/// Every server marked down: they are tried anyway rather than refusing without trying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_marked_down_are_still_tried() {
    let dead = common::dead_addr();
    let file = format!("[backend]\nservers = [\"{dead}\"]\nfail_timeout = \"1m\"\n");
    let proxy = Proxy::start(&TestConfig::default(), &file);
    let bytes = common::upgrade_request("/ws").into_bytes();
    assert_eq!(
        common::status_of(&common::raw_exchange(proxy.addr, &bytes).await),
        502
    );
    let (_, revived) = echo_upstream::start(&dead.to_string()).await.unwrap();
    assert!(probe(&proxy.url("/ws")).await.is_ok());
    assert_eq!(revived.upgrades.load(Ordering::Relaxed), 1);
}

/// A second wsplice on the same address takes over while the first drains: a client opening
/// connections in a loop sees no refusal. Needs net.ipv4.tcp_migrate_req = 1 so the kernel
/// hands connections queued on the closing listener to the new one (the test sets it; root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_handoff_refuses_no_connection() {
    const SYSCTL: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
    std::fs::write(SYSCTL, "1").expect("setting net.ipv4.tcp_migrate_req=1 needs root");

    let (up, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let file = upstreams("backend", &[up]);
    let mut old = Proxy::start(&TestConfig::default(), &file);
    let addr = old.addr;
    let url = old.url("/ws");
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (url, stop) = (url.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut ok, mut failures) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match probe(&url).await {
                    Ok(_) => ok += 1,
                    Err(e) => failures.push(e),
                }
            }
            (ok, failures)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new_config = TestConfig::default()
        .toml()
        .replace("127.0.0.1:0", &addr.to_string());
    let new = Proxy::start_raw(&new_config, &file);
    assert_eq!(new.addr, addr);
    tokio::time::sleep(Duration::from_millis(300)).await;
    old.signal("TERM");
    let status = old
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("old process exits");
    assert_eq!(status.code(), Some(0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (ok, failures) = c.await.unwrap();
        assert!(
            failures.is_empty(),
            "{} refused/failed, first: {:?}",
            failures.len(),
            failures[0]
        );
        total += ok;
    }
    assert!(total > 20, "only {total} connections during the handoff");
    let _ = new.log();
}
