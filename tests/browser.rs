//! The demo page in a real browser: headless Chromium (Debian's `chromium`) loads `/demo`
//! through the real wsplice, the page opens a WebSocket back through it, and the test reads
//! the page over the DevTools protocol. `WSPLICE_SCREENSHOT=docs/demo.png` also saves a picture;
//! `WSPLICE_DEMO_URL=http://127.0.0.1:8080/demo` drives a running `scripts/demo.sh` instead.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use common::{Proxy, TestConfig, echo_upstream, upstreams};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const STEP: Duration = Duration::from_secs(10);

/// Reads the page's status line and echo table as JSON (null before the page exists).
const READ_PAGE: &str = r##"(() => {
  const status = document.getElementById("status");
  if (!status) return null;
  return JSON.stringify({
    status: status.textContent,
    class: status.className,
    rows: Array.from(document.querySelectorAll("#echoes tr"),
      (row) => ({ class: row.className, cells: Array.from(row.cells, (c) => c.textContent) })),
  });
})()"##;

/// A headless Chromium with a fresh profile and a DevTools endpoint on a free loopback port.
struct Browser {
    child: Child,
    endpoint: String,
    log: Arc<Mutex<String>>,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch() -> Browser {
        let program = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let profile = tempfile::tempdir().unwrap();
        let spawned = Command::new(&program)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                "--window-size=900,640",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "headless Chromium is needed for this test and `{program}` was not found: \
                 apt-get install chromium (scripts/test.sh installs it), or set CHROMIUM"
            ),
            Err(e) => panic!("cannot start {program}: {e}"),
        };
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(endpoint) => Browser {
                child,
                endpoint,
                log,
                _profile: profile,
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{program} did not open its DevTools endpoint within 30 s:\n{}",
                    log.lock().unwrap()
                );
            }
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One DevTools protocol connection to the browser; page commands go with a `sessionId`.
struct Devtools {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Devtools {
    async fn connect(endpoint: &str) -> Devtools {
        let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(endpoint))
            .await
            .expect("DevTools connect within 10 s")
            .expect("DevTools WebSocket");
        Devtools { ws, next_id: 1 }
    }

    /// Sends a command and returns its `result`, or the protocol's error as text. Events that
    /// arrive in between are skipped.
    async fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        self.ws
            .send(Message::text(command.to_string()))
            .await
            .map_err(|e| format!("{method}: {e}"))?;
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| format!("{method}: no answer within 10 s"))?;
            let Some(Ok(Message::Text(text))) = next else {
                return Err(format!("{method}: DevTools connection ended: {next:?}"));
            };
            let reply: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            if reply["id"] != json!(id) {
                continue;
            }
            if let Some(error) = reply.get("error") {
                return Err(format!("{method}: {error}"));
            }
            return Ok(reply["result"].clone());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_shows_its_echoes_in_chromium() {
    let (up, seen) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(
        &TestConfig::default().route("/websocket", "backend"),
        &upstreams("backend", &[up]),
    );
    let browser = Browser::launch();
    let mut cdp = Devtools::connect(&browser.endpoint).await;
    let demo_url = std::env::var("WSPLICE_DEMO_URL").ok();
    let page_url = demo_url
        .clone()
        .unwrap_or_else(|| format!("http://{}/demo", proxy.addr));
    let target = cdp
        .call(None, "Target.createTarget", json!({ "url": page_url }))
        .await
        .unwrap();
    let attached = cdp
        .call(
            None,
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        )
        .await
        .unwrap();
    let session = attached["sessionId"].as_str().unwrap().to_string();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let page = loop {
        let read = cdp
            .call(
                Some(&session),
                "Runtime.evaluate",
                json!({ "expression": READ_PAGE, "returnByValue": true }),
            )
            .await;
        // Before the page has loaded there is no document to read, or no page context yet.
        let state = read
            .ok()
            .and_then(|r| r["result"]["value"].as_str().map(str::to_string))
            .and_then(|s| serde_json::from_str::<Value>(&s).ok());
        if let Some(state) = state.filter(|s| s["class"] == "ok" || s["class"] == "bad") {
            break state;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page did not finish within 30 s\nwsplice:\n{}\nchromium:\n{}",
            proxy.log(),
            browser.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let status = page["status"].as_str().unwrap();
    assert_eq!(page["class"], "ok", "{page:#}\nwsplice:\n{}", proxy.log());
    assert!(
        status.starts_with("5/5 echoes, median round trip "),
        "{status}"
    );
    let rows = page["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "{page:#}");
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<&str> = row["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(row["class"], "ok", "{row}");
        assert_eq!(cells[0], (i + 1).to_string());
        assert_eq!(
            cells[1],
            format!("message {} of 5 from the demo page", i + 1)
        );
        assert_eq!(cells[2], cells[1], "the echo is the message sent");
        let rtt: f64 = cells[3]
            .strip_suffix(" ms")
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("round trip {:?}", cells[3]));
        assert!((0.0..10_000.0).contains(&rtt), "round trip {rtt} ms");
    }
    if demo_url.is_none() {
        let requests = seen.requests.load(Ordering::Relaxed);
        let upgrades = seen.upgrades.load(Ordering::Relaxed);
        assert!(requests >= 1, "the page did not come from the upstream");
        assert!(upgrades >= 1, "the WebSocket did not reach the upstream");
    }

    if let Ok(path) = std::env::var("WSPLICE_SCREENSHOT") {
        let shot = cdp
            .call(
                Some(&session),
                "Page.captureScreenshot",
                json!({ "format": "png" }),
            )
            .await
            .unwrap();
        let png = data_encoding::BASE64
            .decode(shot["data"].as_str().unwrap().as_bytes())
            .unwrap();
        std::fs::write(&path, png).unwrap();
    }
    let _ = cdp.call(None, "Browser.close", json!({})).await;
}
