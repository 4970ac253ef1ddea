//! Signals: SIGTERM drains open tunnels, SIGHUP reloads the upstream file.

mod common;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Proxy, TestConfig, echo_upstream, upstreams};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

async fn echo_once<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text.to_string())).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("echo within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(reply, Message::text(text.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_drains_open_tunnels() {
    let (up, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let mut proxy = Proxy::start(&TestConfig::default(), &upstreams("backend", &[up]));
    let (mut ws, _) = tokio_tungstenite::connect_async(proxy.url("/ws"))
        .await
        .unwrap();
    echo_once(&mut ws, "before").await;

    proxy.signal("TERM");
    assert!(
        proxy
            .wait_log("stopped accepting", Duration::from_secs(5))
            .await
    );
    echo_once(&mut ws, "during drain").await;
    assert!(
        tokio_tungstenite::connect_async(proxy.url("/ws"))
            .await
            .is_err(),
        "no new connection after the signal"
    );
    assert!(
        proxy.wait_exit(Duration::from_millis(300)).await.is_none(),
        "waits for the tunnel"
    );

    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    drop(ws);
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("exits once drained");
    assert_eq!(status.code(), Some(0));
    assert!(
        proxy
            .wait_log("1 connections drained, 0 cut", Duration::from_secs(5))
            .await,
        "{}",
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_time_bounds_the_stop() {
    let (up, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let config = TestConfig::default().timeout("drain", "500ms");
    let mut proxy = Proxy::start(&config, &upstreams("backend", &[up]));
    let (mut ws, _) = tokio_tungstenite::connect_async(proxy.url("/ws"))
        .await
        .unwrap();
    echo_once(&mut ws, "hello").await;
    proxy.signal("INT");
    let status = proxy
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("exits after the drain time");
    assert_eq!(status.code(), Some(0));
    assert!(
        proxy
            .wait_log("0 connections drained, 1 cut", Duration::from_secs(5))
            .await,
        "{}",
        proxy.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_upstreams_for_new_connections_only() {
    let (old, seen_old) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let (new, seen_new) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(&TestConfig::default(), &upstreams("backend", &[old]));
    let (mut kept, _) = tokio_tungstenite::connect_async(proxy.url("/ws"))
        .await
        .unwrap();
    echo_once(&mut kept, "on the old table").await;

    // A bad file is refused with its line, and the old table stays.
    std::fs::write(
        proxy.upstreams_path(),
        "[backend]\nservers = [\"nowhere\"]\n",
    )
    .unwrap();
    proxy.signal("HUP");
    assert!(
        proxy
            .wait_log("reload refused", Duration::from_secs(5))
            .await
    );
    assert!(proxy.log().contains("upstreams.toml:2:"), "{}", proxy.log());
    let (mut ws, _) = tokio_tungstenite::connect_async(proxy.url("/ws"))
        .await
        .unwrap();
    echo_once(&mut ws, "still old").await;
    assert_eq!(seen_old.upgrades.load(Ordering::Relaxed), 2);

    std::fs::write(proxy.upstreams_path(), upstreams("backend", &[new])).unwrap();
    proxy.signal("HUP");
    assert!(
        proxy
            .wait_log("upstreams reloaded", Duration::from_secs(5))
            .await
    );
    for _ in 0..3 {
        let (mut ws, _) = tokio_tungstenite::connect_async(proxy.url("/ws"))
            .await
            .unwrap();
        echo_once(&mut ws, "new table").await;
    }
    assert_eq!(seen_new.upgrades.load(Ordering::Relaxed), 3);
    assert_eq!(seen_old.upgrades.load(Ordering::Relaxed), 2);
    echo_once(&mut kept, "the open tunnel keeps its upstream").await;
}

/// Starts wsplice (a debug build) with the fault `name` switched on.
fn command_with_fault(name: &str, dir: &tempfile::TempDir, up: std::net::SocketAddr) -> Command {
    let config = common::write_files(
        dir.path(),
        &TestConfig::default().toml(),
        &upstreams("backend", &[up]),
    );
    let mut command = Command::new(common::BIN);
    command
        .arg("--config")
        .arg(config)
        .env("WSPLICE_FAULT", name);
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_tunnel_loop_ends_the_process() {
    let (up, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut child = command_with_fault("tunnel-loop-error", &dir, up)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::wait_child_exit(&mut child, Duration::from_secs(10))
        .await
        .expect("a worker without its tunnel loop ends the process");
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(log.contains("the tunnel loop stopped"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_tunnel_loop_ends_the_process() {
    let (up, _) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let command = command_with_fault("tunnel-loop-panic", &dir, up);
    let mut proxy = Proxy::spawn(command, dir, " with a fault");
    let (mut ws, _) = tokio_tungstenite::connect_async(proxy.url("/ws"))
        .await
        .unwrap();
    echo_once(&mut ws, "hello").await;
    // The tunnel's end runs the faulty code in the tunnel loop.
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
    drop(ws);
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| {
            panic!(
                "a panic in the tunnel loop ends the process:\n{}",
                proxy.log()
            )
        });
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{}", proxy.log());
    assert!(
        proxy.wait_log("panicked", Duration::from_secs(5)).await,
        "{}",
        proxy.log()
    );
}
