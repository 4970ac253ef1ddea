//! /metrics, /healthz and the access log, read back after a known mix of traffic.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Proxy, TestConfig, raw_upstream, status_of, upstreams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Plain GET: 200 with a fixed body. Upgrade to /refuse: 426. Other upgrades: raw echo.
async fn mixed_upstream() -> SocketAddr {
    raw_upstream::start(|mut s, head, rest| async move {
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        if !head.contains("upgrade: websocket") {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await;
        } else if head.starts_with("get /refuse") {
            let _ = s
                .write_all(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
                .await;
        } else {
            raw_upstream::raw_echo(s, rest).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_mix_exactly() {
    let up = mixed_upstream().await;
    let dead = common::dead_addr();
    let config = TestConfig::default().route("/dead", "dead").toml();
    let config = config.replacen(
        "upstreams = \"upstreams.toml\"",
        "upstreams = \"upstreams.toml\"\nadmin = \"127.0.0.1:0\"\naccess_log = \"access.log\"",
        1,
    );
    let files = format!(
        "{}{}",
        upstreams("backend", &[up]),
        upstreams("dead", &[dead])
    );
    let proxy = Proxy::start_raw(&config, &files);
    assert!(
        proxy
            .wait_log("admin endpoint on", Duration::from_secs(5))
            .await
    );
    let admin = proxy.admin_addr();

    // 3 tunnels, 1000 bytes each way.
    for i in 0..3u8 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(common::upgrade_request("/tunnel").as_bytes())
            .await
            .unwrap();
        let payload = vec![i; 1000];
        s.write_all(&payload).await.unwrap();
        s.shutdown().await.unwrap();
        let got = common::read_to_close(&mut s, Duration::from_secs(5)).await;
        assert!(got.starts_with(b"HTTP/1.1 101") && got.ends_with(&payload));
    }
    // 2 refused upgrades, 4 plain requests, 1 upgrade to a dead group.
    for _ in 0..2 {
        let r =
            common::raw_exchange(proxy.addr, common::upgrade_request("/refuse").as_bytes()).await;
        assert_eq!(status_of(&r), 426);
    }
    for _ in 0..4 {
        let r = common::raw_exchange(proxy.addr, b"GET /plain HTTP/1.1\r\nHost: t\r\n\r\n").await;
        assert_eq!(status_of(&r), 200);
    }
    let r = common::raw_exchange(proxy.addr, common::upgrade_request("/dead").as_bytes()).await;
    assert_eq!(status_of(&r), 502);
    // A refused reload.
    std::fs::write(proxy.upstreams_path(), "[backend]\nservers = []\n").unwrap();
    assert!(
        proxy
            .wait_log("reload refused", Duration::from_secs(5))
            .await
    );

    let expected: &[(&str, f64)] = &[
        ("wsplice_connections_accepted_total", 10.0),
        ("wsplice_connections_active", 0.0),
        ("wsplice_upgrades_total{outcome=\"tunnelled\"}", 3.0),
        ("wsplice_upgrades_total{outcome=\"refused\"}", 2.0),
        ("wsplice_upgrades_total{outcome=\"rejected\"}", 0.0),
        ("wsplice_upgrades_total{outcome=\"upstream_failed\"}", 1.0),
        ("wsplice_responses_total{status=\"101\"}", 3.0),
        ("wsplice_responses_total{status=\"426\"}", 2.0),
        ("wsplice_responses_total{status=\"200\"}", 4.0),
        ("wsplice_responses_total{status=\"502\"}", 1.0),
        (
            "wsplice_relayed_bytes_total{direction=\"client->upstream\"}",
            3000.0,
        ),
        // 3 tunnels echo 1000 bytes each; 4 plain responses carry a 2-byte body.
        (
            "wsplice_relayed_bytes_total{direction=\"upstream->client\"}",
            3008.0,
        ),
        ("wsplice_tunnel_duration_seconds", 3.0),
        ("wsplice_upstream_reloads_total{result=\"success\"}", 0.0),
        ("wsplice_upstream_reloads_total{result=\"failure\"}", 1.0),
        ("wsplice_upstream_table_version", 1.0),
        ("wsplice_draining", 0.0),
    ];
    // Connections close asynchronously; give the counters a moment to settle.
    let mut samples = common::scrape(admin).await;
    for _ in 0..500 {
        if expected.iter().all(|(k, v)| samples.get(*k) == Some(v)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        samples = common::scrape(admin).await;
    }
    for (key, value) in expected {
        assert_eq!(samples.get(*key), Some(value), "{key} in {samples:#?}");
    }
    let failures = format!("wsplice_upstream_connect_failures_total{{upstream=\"{dead}\"}}");
    assert_eq!(samples.get(&failures), Some(&1.0), "{samples:#?}");
    assert_eq!(
        samples
            .get("wsplice_tunnels_active{worker=\"0\"}")
            .copied()
            .unwrap_or(0.0)
            + samples
                .get("wsplice_tunnels_active{worker=\"1\"}")
                .copied()
                .unwrap_or(0.0),
        0.0
    );
    assert!(samples.get("wsplice_upstream_last_reload_success_timestamp_seconds") > Some(&1.6e9));

    // The access log: one line per connection, written off the workers.
    let log_path = proxy.dir.path().join("access.log");
    #[allow(clippy::disallowed_methods)] // the test's own runtime, not a worker
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let mut lines = Vec::new();
    for _ in 0..500 {
        lines = read_log().lines().map(String::from).collect();
        if lines.len() >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lines.len(), 10, "{lines:#?}");
    let tunnels: Vec<&String> = lines.iter().filter(|l| l.contains("status=101")).collect();
    assert_eq!(tunnels.len(), 3);
    for line in tunnels {
        assert!(line.contains("route=\"/\""), "{line}");
        assert!(line.contains(&format!("upstream={up}")), "{line}");
        assert!(
            line.contains("client_to_upstream=1000 upstream_to_client=1000"),
            "{line}"
        );
        assert!(line.contains("end=\"closed\""), "{line}");
    }
    assert_eq!(lines.iter().filter(|l| l.contains("status=502")).count(), 1);
    assert_eq!(lines.iter().filter(|l| l.contains("status=426")).count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_turns_503_while_draining() {
    let up = mixed_upstream().await;
    let config = TestConfig::default().toml().replacen(
        "upstreams = \"upstreams.toml\"",
        "upstreams = \"upstreams.toml\"\nadmin = \"127.0.0.1:0\"",
        1,
    );
    let proxy = Proxy::start_raw(&config, &upstreams("backend", &[up]));
    assert!(
        proxy
            .wait_log("admin endpoint on", Duration::from_secs(5))
            .await
    );
    let admin = proxy.admin_addr();
    assert_eq!(
        common::admin_get(admin, "/healthz").await,
        (200, "ok\n".to_string())
    );
    assert_eq!(common::admin_get(admin, "/nope").await.0, 404);

    let mut tunnel = TcpStream::connect(proxy.addr).await.unwrap();
    tunnel
        .write_all(common::upgrade_request("/t").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 101");

    proxy.signal("TERM");
    assert!(
        proxy
            .wait_log("stopped accepting", Duration::from_secs(5))
            .await
    );
    assert_eq!(
        common::admin_get(admin, "/healthz").await,
        (503, "draining\n".to_string())
    );
    assert_eq!(
        common::scrape(admin).await.get("wsplice_draining"),
        Some(&1.0)
    );
}
