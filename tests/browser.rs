//! The demo page in a real browser: headless Chromium (Debian's `chromium`) loads `/demo`
//! through the real wsplice, the page opens a WebSocket back through it, and the test reads
//! the page over the DevTools protocol. `WSPLICE_SCREENSHOT=docs/demo.png` also saves a picture;
//! `WSPLICE_DEMO_URL=http://127.0.0.1:8080/demo` drives a running `scripts/demo.sh` instead.
//!
//! The same page over `https://` and `wss://` from a TLS listener: Chromium trusts the test's
//! certificate by its key (`--ignore-certificate-errors-spki-list`, the SHA-256 of the
//! certificate's SubjectPublicKeyInfo; any other certificate still fails), so the browser's own
//! TLS stack does the handshake (SNI `localhost`, ALPN `http/1.1`) and the WebSocket runs in
//! wsplice's TLS tunnel; the page then sends messages of many sizes both ways.

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
    fn launch(extra: &[String]) -> Browser {
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
            .args(extra)
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
    /// Events that arrived while waiting for answers (`Network.*` once it is enabled).
    events: Vec<Value>,
}

impl Devtools {
    async fn connect(endpoint: &str) -> Devtools {
        let (ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(endpoint))
            .await
            .expect("DevTools connect within 10 s")
            .expect("DevTools WebSocket");
        Devtools {
            ws,
            next_id: 1,
            events: Vec::new(),
        }
    }

    /// Sends a command and returns its `result`, or the protocol's error as text. Events that
    /// arrive in between are kept in `events`.
    async fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, String> {
        self.call_within(session, method, params, STEP).await
    }

    async fn call_within(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
        limit: Duration,
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
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| format!("{method}: no answer within {limit:?}"))?;
            let Some(Ok(Message::Text(text))) = next else {
                return Err(format!("{method}: DevTools connection ended: {next:?}"));
            };
            let reply: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            if reply["id"] != json!(id) {
                if reply.get("method").is_some() {
                    self.events.push(reply);
                }
                continue;
            }
            if let Some(error) = reply.get("error") {
                return Err(format!("{method}: {error}"));
            }
            return Ok(reply["result"].clone());
        }
    }
}

/// Messages of many sizes both ways over a new WebSocket from the loaded page, to the page's
/// own host: `ws://` or `wss://` as the page came. Each size goes as binary and as text (with
/// 2-, 3- and 4-byte UTF-8 characters) and must come back the same, one at a time; then every
/// binary size is sent back to back and must come back in order. Sizes pass the 16 KiB of a
/// TLS record and of a receive buffer, so a message spans records and reads. Returns JSON:
/// `{ url, checks: [{ what, ok }] }`, or `{ url, error }`.
const SIZES_BOTH_WAYS: &str = r##"(async () => {
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/websocket";
  const sizes = [0, 1, 125, 126, 16383, 16384, 16385, 65535, 65536, 100000, 1048576];
  const chars = ["a", "b", "c", "x", "y", "z", "0", "9", " ", "\u00e9", "\u20ac", "\u{1F600}"];
  const bytes = (size, seed) => {
    const out = new Uint8Array(size);
    let x = seed >>> 0;
    for (let i = 0; i < size; i++) { x = (Math.imul(x, 1103515245) + 12345) >>> 0; out[i] = x >>> 24; }
    return out;
  };
  const same = (a, b) => {
    if (!(b instanceof ArrayBuffer) || a.length !== b.byteLength) return false;
    const v = new Uint8Array(b);
    for (let i = 0; i < a.length; i++) if (a[i] !== v[i]) return false;
    return true;
  };
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  const queue = [];
  let waiting = null, closed = null;
  ws.onmessage = (event) => { if (waiting) { const w = waiting; waiting = null; w.ok(event.data); } else queue.push(event.data); };
  ws.onclose = (event) => { closed = "closed (code " + event.code + ")"; if (waiting) waiting.bad(new Error(closed)); };
  const next = () => {
    if (queue.length) return Promise.resolve(queue.shift());
    if (closed) return Promise.reject(new Error(closed));
    return new Promise((ok, bad) => {
      waiting = { ok, bad };
      setTimeout(() => bad(new Error("no echo within 20 s")), 20000);
    });
  };
  try {
    await new Promise((ok, bad) => {
      ws.onopen = ok;
      ws.onerror = () => bad(new Error("WebSocket error opening " + url));
      setTimeout(() => bad(new Error("not open within 20 s")), 20000);
    });
    const checks = [];
    for (const size of sizes) {
      const data = bytes(size, size + 1);
      ws.send(data);
      checks.push({ what: "binary " + size, ok: same(data, await next()) });
      const text = Array.from(data, (b) => chars[b % chars.length]).join("");
      ws.send(text);
      const echo = await next();
      checks.push({ what: "text " + size + " chars", ok: echo === text });
    }
    const burst = sizes.map((size) => bytes(size, size + 7));
    for (const data of burst) ws.send(data);
    for (const data of burst) checks.push({ what: "back to back " + data.length, ok: same(data, await next()) });
    ws.close(1000);
    return JSON.stringify({ url, checks });
  } catch (e) {
    return JSON.stringify({ url, error: String(e) });
  }
})()"##;

/// Opens `url` in a new tab with the Network domain on (its events land in `cdp.events`) and
/// returns the tab's session id.
async fn open_page(cdp: &mut Devtools, url: &str) -> String {
    let target = cdp
        .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
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
    cdp.call(Some(&session), "Network.enable", json!({}))
        .await
        .unwrap();
    let navigated = cdp
        .call(Some(&session), "Page.navigate", json!({ "url": url }))
        .await
        .unwrap();
    assert!(navigated.get("errorText").is_none(), "{url}: {navigated}");
    session
}

/// Evaluates `expression` in the page and returns its value.
async fn evaluate(cdp: &mut Devtools, session: &str, expression: &str, limit: Duration) -> Value {
    let result = cdp
        .call_within(
            Some(session),
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            limit,
        )
        .await
        .unwrap();
    assert!(result.get("exceptionDetails").is_none(), "{result:#}");
    result["result"]["value"].clone()
}

/// Polls the demo page (bounded: 30 s) until its status says it is done, and checks its five
/// echoes.
async fn demo_page_done(cdp: &mut Devtools, session: &str, proxy: &Proxy, browser: &Browser) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let page = loop {
        let read = cdp
            .call(
                Some(session),
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
}

/// Runs [`SIZES_BOTH_WAYS`] in the page and checks every echo; returns the URL it used.
async fn sizes_both_ways(cdp: &mut Devtools, session: &str, proxy: &Proxy) -> String {
    let value = evaluate(cdp, session, SIZES_BOTH_WAYS, Duration::from_secs(120)).await;
    let report: Value = serde_json::from_str(value.as_str().unwrap()).unwrap();
    assert!(
        report.get("error").is_none(),
        "{report:#}\nwsplice:\n{}",
        proxy.log()
    );
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 11 * 3, "{report:#}");
    let failed: Vec<&Value> = checks.iter().filter(|c| c["ok"] != true).collect();
    assert!(failed.is_empty(), "echoes that differ: {failed:?}");
    report["url"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_shows_its_echoes_in_chromium() {
    let (up, seen) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(
        &TestConfig::default().route("/websocket", "backend"),
        &upstreams("backend", &[up]),
    );
    let browser = Browser::launch(&[]);
    let mut cdp = Devtools::connect(&browser.endpoint).await;
    let demo_url = std::env::var("WSPLICE_DEMO_URL").ok();
    let page_url = demo_url
        .clone()
        .unwrap_or_else(|| format!("http://{}/demo", proxy.addr));
    let session = open_page(&mut cdp, &page_url).await;
    demo_page_done(&mut cdp, &session, &proxy, &browser).await;
    let url = sizes_both_ways(&mut cdp, &session, &proxy).await;
    let scheme = if page_url.starts_with("https:") {
        "wss://"
    } else {
        "ws://"
    };
    assert!(url.starts_with(scheme), "{url} from {page_url}");
    if demo_url.is_none() {
        let requests = seen.requests.load(Ordering::Relaxed);
        let upgrades = seen.upgrades.load(Ordering::Relaxed);
        assert!(requests >= 1, "the page did not come from the upstream");
        assert!(upgrades >= 2, "the WebSockets did not reach the upstream");
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

/// A CA and, for each name, a certificate it signed for that name, written as `NAME.pem` (leaf,
/// then CA) and `NAME.key` in `dir`; returns for each what Chromium's
/// `--ignore-certificate-errors-spki-list` takes for its key: base64(SHA-256(SubjectPublicKeyInfo
/// DER)).
fn make_certificates(dir: &std::path::Path, names: &[&str]) -> Vec<String> {
    use rcgen::PublicKeyData;
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wsplice browser test CA");
    let ca = ca_params.clone().self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    names
        .iter()
        .map(|name| {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
            let leaf = params.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), leaf.pem() + &ca.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
            let spki = key.subject_public_key_info();
            let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki);
            data_encoding::BASE64.encode(hash.as_ref())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_over_https_and_wss_in_chromium() {
    let certs = tempfile::tempdir().unwrap();
    // Two certificates from one CA; the browser trusts the key of the first only. Chromium
    // resolves `*.localhost` to loopback itself, so both names reach the listener.
    let spki = make_certificates(certs.path(), &["localhost", "other.localhost"]);
    let (up, seen) = echo_upstream::start("127.0.0.1:0").await.unwrap();
    let dir = certs.path().display();
    let config = format!(
        r#"listen = [{{ addr = "127.0.0.1:0", tls = true }}]
workers = 2
upstreams = "upstreams.toml"
admin = "127.0.0.1:0"

[tls]
certificates = [
  {{ cert = "{dir}/localhost.pem", key = "{dir}/localhost.key" }},
  {{ cert = "{dir}/other.localhost.pem", key = "{dir}/other.localhost.key" }},
]

[[route]]
path = "/"
upstream = "backend"
"#
    );
    let proxy = Proxy::start_raw(&config, &upstreams("backend", &[up]));
    let browser = Browser::launch(&[format!("--ignore-certificate-errors-spki-list={}", spki[0])]);
    let mut cdp = Devtools::connect(&browser.endpoint).await;
    // `localhost`, not the address: the browser sends it as SNI and the certificate names it.
    let origin = format!("localhost:{}", proxy.addr.port());
    let session = open_page(&mut cdp, &format!("https://{origin}/demo")).await;
    demo_page_done(&mut cdp, &session, &proxy, &browser).await;

    // The page came over https and its WebSocket went to wss:// on the same listener.
    let shown = evaluate(
        &mut cdp,
        &session,
        r#"JSON.stringify([location.href, document.getElementById("url").textContent,
            performance.getEntriesByType("navigation")[0].nextHopProtocol])"#,
        STEP,
    )
    .await;
    let shown: Vec<String> = serde_json::from_str(shown.as_str().unwrap()).unwrap();
    assert_eq!(
        shown,
        [
            format!("https://{origin}/demo"),
            format!("wss://{origin}/websocket"),
            "http/1.1".to_string()
        ]
    );
    // What the browser's TLS stack saw: the test certificate for localhost, TLS 1.3, and
    // http/1.1 (ALPN) for the page; a 101 for the wss handshake.
    let page_response = cdp
        .events
        .iter()
        .filter(|e| e["method"] == "Network.responseReceived")
        .map(|e| &e["params"]["response"])
        .find(|r| r["url"] == format!("https://{origin}/demo"))
        .unwrap_or_else(|| panic!("no response event for the page: {:#?}", cdp.events))
        .clone();
    assert_eq!(page_response["status"], 200, "{page_response:#}");
    assert_eq!(page_response["protocol"], "http/1.1", "{page_response:#}");
    let tls = &page_response["securityDetails"];
    assert_eq!(tls["protocol"], "TLS 1.3", "{tls:#}");
    assert_eq!(tls["sanList"], json!(["localhost"]), "{tls:#}");
    assert_eq!(tls["issuer"], "wsplice browser test CA", "{tls:#}");
    let upgraded = cdp.events.iter().any(|e| {
        e["method"] == "Network.webSocketHandshakeResponseReceived"
            && e["params"]["response"]["status"] == 101
    });
    assert!(
        upgraded,
        "no 101 for the page's wss:// in {:#?}",
        cdp.events
    );

    let url = sizes_both_ways(&mut cdp, &session, &proxy).await;
    assert_eq!(url, format!("wss://{origin}/websocket"));

    assert!(seen.requests.load(Ordering::Relaxed) >= 1);
    assert!(seen.upgrades.load(Ordering::Relaxed) >= 2);
    // A handshake each for the page's connection and the two WebSockets (Chromium gives each
    // WebSocket a connection of its own), every one with an SNI the certificates name. (Not
    // "none failed": a browser may open a spare connection and drop it unused.)
    let admin = proxy.admin_addr();
    let ok = "wsplice_tls_handshakes_total{result=\"ok\"}";
    let handshakes = common::wait_metric(admin, ok, |n| n >= 3.0, STEP).await;
    assert!(handshakes >= 3.0, "{ok} = {handshakes}");
    let defaulted = "wsplice_tls_unknown_sni_total{action=\"default\"}";
    let metrics = common::scrape(admin).await;
    assert_eq!(metrics.get(defaulted), Some(&0.0), "{metrics:?}");

    // The other name gets its own certificate (SNI), from the same CA but with a key the
    // browser was not told to trust: refused, so the trust above was that key's, not "any".
    let other = format!("https://other.localhost:{}/demo", proxy.addr.port());
    let target = cdp
        .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
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
    let refused = cdp
        .call(
            attached["sessionId"].as_str(),
            "Page.navigate",
            json!({ "url": other }),
        )
        .await
        .unwrap();
    assert_eq!(
        refused["errorText"], "net::ERR_CERT_AUTHORITY_INVALID",
        "{other}: {refused}"
    );
    let _ = cdp.call(None, "Browser.close", json!({})).await;
}
