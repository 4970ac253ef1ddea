//! Binary upgrade with tunnel handoff: `wsplice --takeover` (or SIGUSR2 to the running
//! process) starts a process that takes the listening sockets and every open plain tunnel,
//! bytes in flight included, from the process serving the config's `handoff` socket, which
//! then exits. Real clients stream seeded bytes through the real binary while it is
//! upgraded, again and again: no tunnel may lose, reorder or repeat a byte, none may be
//! reset or ended early, new handshakes go on throughout, and each old process is gone
//! within 2 s of its successor listening. A takeover that is refused, or finds nobody to
//! take over from, exits 2 and leaves whatever runs serving as before.

mod common;

use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Proxy, TestConfig, raw_tunnel, raw_upstream, upstreams};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Tunnels a process took over from its predecessor.
const HANDED: &str = "wsplice_handoff_tunnels_total";
/// Tunnel directions switched to splice(2).
const SPLICED: &str = "wsplice_spliced_directions_total";
/// How long an old process may outlive its successor's "listening on".
const GONE_WITHIN: Duration = Duration::from_secs(2);
/// Every load loop stops after this long, whatever becomes of the test.
const LOAD_FOR_AT_MOST: Duration = Duration::from_secs(120);
/// And after this many rounds.
const MOST_ROUNDS: u64 = 100_000;

/// Held by each test that upgrades a process under load: the bound on the old process's exit
/// is measured on a 2-core host, where two such tests at once would measure each other.
static UPGRADES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// 1,000 tunnels stream both ways while the proxy is upgraded three times in a row, and 8
/// clients keep opening short tunnels: each upgrade takes every tunnel over, the old process
/// leaves in time, and in the end every tunnel echoed exactly what it was sent. With
/// multishot receives, so bytes queued behind a send move with their tunnel too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_tunnels_three_upgrades() {
    const TUNNELS: usize = 1000;
    let _alone = UPGRADES.lock().await;
    let limit = wsplice::os::fdlimit::raise().unwrap();
    assert!(
        limit >= 2 * TUNNELS as u64 + 200,
        "the test needs {} open files, the limit is {limit}",
        2 * TUNNELS + 200
    );
    let up = raw_upstream::start(|s, _, rest| raw_upstream::raw_echo(s, rest)).await;
    let site = Site::with(TestConfig::default().workers(2).multishot(), up);
    let mut proxy = site.start();
    let shape = Shape {
        tunnels: TUNNELS,
        loops: 8,
        every: Duration::from_millis(100),
        most: 2048,
        block: 4096,
        at_least: 0,
    };
    let load = Load::start(proxy.addr, shape).await;
    load.moves_on("before the first upgrade", &proxy, 1).await;
    for upgrade in 1..=3 {
        let (new, after) = site.upgrade(&mut proxy).await;
        load.note(&format!(
            "upgrade {upgrade}: the old process exited {after:.2?} after the successor listened"
        ));
        let at_least = |v: f64| v >= TUNNELS as f64;
        let limit = Duration::from_secs(10);
        let handed = common::wait_metric(new.admin_addr(), HANDED, at_least, limit).await;
        assert!(
            at_least(handed),
            "upgrade {upgrade}: {handed} tunnels came over\n{}",
            new.log()
        );
        proxy = new;
        load.moves_on(&format!("after upgrade {upgrade}"), &proxy, 1)
            .await;
    }
    load.finish(&proxy).await;
}

/// Tunnels moving tens of MiB both ways, switched to splice(2), are taken over mid-stream:
/// what sits in their pipes and socket buffers comes along, and every byte arrives in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_spliced_tunnels_move_whole() {
    const TUNNELS: usize = 3;
    let _alone = UPGRADES.lock().await;
    let up = raw_upstream::start(|s, _, rest| raw_upstream::raw_echo(s, rest)).await;
    let site = Site::new(2, up);
    let mut old = site.start();
    let shape = Shape {
        tunnels: TUNNELS,
        loops: 0,
        every: Duration::from_millis(10),
        most: 256 * 1024,
        block: 64 * 1024,
        at_least: 24 << 20,
    };
    let load = Load::start(old.addr, shape).await;
    let both_ways = |v: f64| v >= 2.0 * TUNNELS as f64;
    let limit = Duration::from_secs(20);
    let spliced = common::wait_metric(old.admin_addr(), SPLICED, both_ways, limit).await;
    assert!(
        both_ways(spliced),
        "{spliced} directions spliced before the upgrade\n{}",
        old.log()
    );
    load.moves_on("before the upgrade", &old, 1 << 20).await;
    let (new, after) = site.upgrade(&mut old).await;
    load.note(&format!(
        "the old process exited {after:.2?} after the successor listened"
    ));
    let every_one = |v: f64| v >= TUNNELS as f64;
    let handed = common::wait_metric(new.admin_addr(), HANDED, every_one, limit).await;
    assert!(
        every_one(handed),
        "{handed} tunnels came over\n{}",
        new.log()
    );
    load.moves_on("after the upgrade", &new, 4 << 20).await;
    load.finish(&new).await;
}

/// A successor that speaks another handoff format is refused before the old process gives
/// anything away: it exits 2, and the old one goes on relaying its tunnels, accepting new
/// ones, and can still be taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_takeover_leaves_the_old_serving() {
    const TUNNELS: usize = 8;
    let _alone = UPGRADES.lock().await;
    let up = raw_upstream::start(|s, _, rest| raw_upstream::raw_echo(s, rest)).await;
    let site = Site::new(2, up);
    let mut old = site.start();
    let shape = Shape {
        tunnels: TUNNELS,
        loops: 2,
        every: Duration::from_millis(20),
        most: 2048,
        block: 4096,
        at_least: 0,
    };
    let load = Load::start(old.addr, shape).await;
    load.moves_on("before the takeover", &old, 1).await;

    let (code, stderr) = site
        .take_over_fails(&[("WSPLICE_FAULT", "handoff-version")])
        .await;
    load.note("the refused successor exited");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
    assert!(
        old.wait_log("handoff: refused", Duration::from_secs(5))
            .await,
        "{}",
        old.log()
    );
    assert!(!old.log().contains("handoff: handed over"), "{}", old.log());
    assert!(
        old.wait_exit(Duration::from_millis(500)).await.is_none(),
        "the old process exited after refusing\n{}",
        old.log()
    );
    load.moves_on("after the refused takeover", &old, 1).await;
    if let Err(e) = echo_once(old.addr, 7).await {
        panic!("a new tunnel after the refusal: {e}\n{}", old.log());
    }

    let (new, after) = site.upgrade(&mut old).await;
    load.note(&format!(
        "the old process exited {after:.2?} after the successor listened"
    ));
    let every_one = |v: f64| v >= TUNNELS as f64;
    let limit = Duration::from_secs(10);
    let handed = common::wait_metric(new.admin_addr(), HANDED, every_one, limit).await;
    assert!(
        every_one(handed),
        "{handed} tunnels came over\n{}",
        new.log()
    );
    load.moves_on("after the takeover", &new, 1).await;
    load.finish(&new).await;
}

/// Nobody to take over from: no socket at the `handoff` path, or a socket file that a gone
/// process left behind. The successor starts nothing and exits 2.
#[test]
fn takeover_without_a_running_process_exits_2() {
    let file = upstreams("backend", &[common::dead_addr()]);
    let config = |path: &str| format!("handoff = \"{path}\"\n{}", TestConfig::default().toml());
    let absent = common::run_wsplice(&config("handoff.sock"), &file, &["--takeover"]);
    cannot_take_over("no socket", &absent);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("left.sock");
    let socket =
        socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None).unwrap();
    socket
        .bind(&socket2::SockAddr::unix(&path).unwrap())
        .unwrap();
    socket.listen(1).unwrap();
    drop(socket);
    assert!(path.exists());
    let left = config(path.to_str().unwrap());
    let stale = common::run_wsplice(&left, &file, &["--takeover"]);
    cannot_take_over("a socket nobody listens on", &stale);
}

fn cannot_take_over(case: &str, output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{case}: {stderr}");
    assert!(stderr.contains("cannot take over"), "{case}: {stderr}");
    assert!(!stderr.contains("listening on"), "{case}: {stderr}");
}

#[test]
fn takeover_needs_handoff_in_the_config() {
    let file = upstreams("backend", &[common::dead_addr()]);
    let output = common::run_wsplice(&TestConfig::default().toml(), &file, &["--takeover"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("handoff"), "{stderr}");
}

/// SIGUSR2 makes the running process start its own successor (`--takeover`, same config),
/// which takes its tunnels and its address over: the old exits 0, the tunnels go on, and a
/// new connection to the same address is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_upgrades_in_place() {
    let _alone = UPGRADES.lock().await;
    let up = raw_upstream::start(|s, _, rest| raw_upstream::raw_echo(s, rest)).await;
    let site = Site::new(2, up);
    let mut old = site.start();
    let shape = Shape {
        tunnels: 4,
        loops: 1,
        every: Duration::from_millis(20),
        most: 2048,
        block: 4096,
        at_least: 0,
    };
    let load = Load::start(old.addr, shape).await;
    load.moves_on("before the signal", &old, 1).await;

    old.signal("USR2");
    let started = "SIGUSR2: started ";
    assert!(
        old.wait_log(started, Duration::from_secs(10)).await,
        "{}",
        old.log()
    );
    // The successor is a grandchild (its parent exits at once); the old process learns its
    // pid from its hello.
    let taking = "is taking over";
    assert!(
        old.wait_log(taking, Duration::from_secs(10)).await,
        "{}",
        old.log()
    );
    let log = old.log();
    let pid = log.split("handoff: pid ").nth(1).and_then(|rest| {
        let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
        digits.parse::<u32>().ok()
    });
    let pid = pid.unwrap_or_else(|| panic!("no pid before {taking:?}:\n{log}"));
    assert!(
        site.successors().contains(&pid),
        "pid {pid} is not a `wsplice --takeover` on this config\n{log}"
    );
    let status = old.wait_exit(Duration::from_secs(10)).await;
    load.note("the old process exited");
    let status = status.unwrap_or_else(|| {
        panic!(
            "the old process still runs 10 s after starting its successor\n{}",
            old.log()
        )
    });
    assert_eq!(status.code(), Some(0), "{}", old.log());
    // The successor inherited the old process's stderr: both sides log here.
    for line in ["handoff: handed over", "handoff: took over"] {
        assert!(
            old.wait_log(line, Duration::from_secs(5)).await,
            "{line}\n{}",
            old.log()
        );
    }
    load.moves_on("after the upgrade", &old, 1).await;
    if let Err(e) = echo_once(old.addr, 7).await {
        panic!("a new tunnel to the same address: {e}\n{}", old.log());
    }
    load.finish(&old).await;
}

/// A plain request whose response streams on (server-sent events, a long poll) keeps the
/// old process busy past what a handshake may take: the handoff does not wait for it longer
/// than `timeouts.handshake` + `timeouts.response`. The tunnels move; the stream stays in
/// the old process, which exits once it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_response_does_not_hold_the_handoff_up() {
    let _alone = UPGRADES.lock().await;
    let up = raw_upstream::start(|mut s, head, rest| async move {
        if !head.starts_with(b"GET /events") {
            return raw_upstream::raw_echo(s, rest).await;
        }
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
        if s.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..600 {
            if s.write_all(b"7\r\ndata:x\n\r\n").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let config = format!(
        "handoff = \"handoff.sock\"\nadmin = \"127.0.0.1:0\"\n{}",
        TestConfig::default()
            .timeout("handshake", "1s")
            .timeout("response", "1s")
            .toml()
    );
    let mut old = Proxy::start_raw(&config, &upstreams("backend", &[up]));
    let mut tunnel = raw_tunnel::open(old.addr).await;
    let mut events = TcpStream::connect(old.addr).await.unwrap();
    events
        .write_all(b"GET /events HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), events.read(&mut first))
        .await
        .expect("the stream starts within 10 s")
        .unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &first[..n]);

    let mut takeover = Command::new(common::BIN);
    takeover
        .arg("--config")
        .arg(old.dir.path().join("wsplice.toml"))
        .arg("--takeover");
    let started = Instant::now();
    let new = tokio::task::spawn_blocking(move || {
        Proxy::spawn(takeover, tempfile::tempdir().unwrap(), " (takeover)")
    })
    .await
    .unwrap();
    let one = |v: f64| v >= 1.0;
    let limit = Duration::from_secs(10);
    let handed = common::wait_metric(new.admin_addr(), HANDED, one, limit).await;
    assert!(
        old.wait_log("handoff: handed over", limit).await,
        "{}",
        old.log()
    );
    let took = started.elapsed();
    assert!(
        one(handed),
        "the tunnel did not come over\n{}\n{}",
        old.log(),
        new.log()
    );
    assert!(
        took < Duration::from_secs(6),
        "the handoff took {took:?}\n{}",
        old.log()
    );
    assert!(
        old.log()
            .contains("still in their handshake or a plain request"),
        "{}",
        old.log()
    );
    // The tunnel relays through the new process; the stream goes on from the old one.
    tunnel.write_all(b"moved").await.unwrap();
    let mut echo = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), tunnel.read_exact(&mut echo))
        .await
        .expect("echo within 10 s")
        .unwrap();
    assert_eq!(&echo, b"moved");
    assert!(old.wait_exit(Duration::from_millis(300)).await.is_none());
    let n = tokio::time::timeout(Duration::from_secs(10), events.read(&mut first))
        .await
        .expect("the stream goes on")
        .unwrap();
    assert!(n > 0);
    drop(events);
    let status = old.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", old.log());
    drop(new);
}

/// A config folder shared by every process of one test: each successor reads the same config,
/// whose `handoff` socket (`handoff.sock` there) belongs to the process serving it.
struct Site {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Site {
    fn new(workers: usize, upstream: SocketAddr) -> Site {
        Site::with(TestConfig::default().workers(workers), upstream)
    }

    fn with(config: TestConfig, upstream: SocketAddr) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "handoff = \"handoff.sock\"\nadmin = \"127.0.0.1:0\"\n{}",
            config.toml()
        );
        let file = upstreams("backend", &[upstream]);
        let config = common::write_files(dir.path(), &config, &file);
        Site { dir, config }
    }

    fn command(&self, extra: &[&str]) -> Command {
        let mut command = Command::new(common::BIN);
        command.arg("--config").arg(&self.config).args(extra);
        command
    }

    /// The first process, started the ordinary way.
    fn start(&self) -> Proxy {
        Proxy::spawn(self.command(&[]), tempfile::tempdir().unwrap(), "")
    }

    /// Puts `wsplice --takeover` in `old`'s place: it listens on the same address, `old` exits
    /// 0 within [`GONE_WITHIN`] of that, each logs its side of the handoff, and the successor
    /// then serves the handoff socket in turn (a new socket at its path). The successor, and
    /// how long `old` outlived its "listening on".
    async fn upgrade(&self, old: &mut Proxy) -> (Proxy, Duration) {
        let socket = self.dir.path().join("handoff.sock");
        let inode = |socket: &Path| std::fs::metadata(socket).ok().map(|m| m.ino());
        let before = inode(&socket);
        let command = self.command(&["--takeover"]);
        let new = tokio::task::spawn_blocking(move || {
            Proxy::spawn(command, tempfile::tempdir().unwrap(), " (takeover)")
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let listening = Instant::now();
        assert_eq!(new.addr, old.addr);
        let after = old_leaves(old, &new, listening).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while inode(&socket).is_none() || inode(&socket) == before {
            assert!(
                Instant::now() < deadline,
                "the successor does not serve the handoff socket 10 s after it took over\n{}",
                new.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (new, after)
    }

    /// Runs `wsplice --takeover` with `env`, expecting it to end by itself within 20 s; its
    /// exit code and stderr.
    async fn take_over_fails(&self, env: &[(&str, &str)]) -> (Option<i32>, String) {
        let mut command = tokio::process::Command::new(common::BIN);
        command
            .arg("--config")
            .arg(&self.config)
            .arg("--takeover")
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(20), command.output())
            .await
            .expect("the successor ends within 20 s")
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), stderr)
    }

    /// The pids of the running `wsplice --takeover` processes on this config (found in
    /// /proc by the folder's name on their command line).
    fn successors(&self) -> Vec<u32> {
        let name = self.dir.path().file_name().unwrap().as_bytes().to_vec();
        let mut pids = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse().ok()) else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let mut args = cmdline.split(|&b| b == 0);
            let ours = args
                .clone()
                .any(|a| a.windows(name.len()).any(|w| w == name));
            if ours && args.any(|a| a == b"--takeover") {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Site {
    /// A successor started by SIGUSR2 is nobody's child here, so no `Proxy` ends it.
    fn drop(&mut self) {
        for pid in self.successors() {
            let _ = Command::new("kill")
                .args(["-s", "KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Checks that `old` exits with status 0 within [`GONE_WITHIN`] of `new` listening (at
/// `listening`), and that each logged its side of the handoff; how long it took.
async fn old_leaves(old: &mut Proxy, new: &Proxy, listening: Instant) -> Duration {
    let status = old.wait_exit(Duration::from_secs(10)).await;
    let after = listening.elapsed();
    let logs = |old: &Proxy| format!("old:\n{}\nnew:\n{}", old.log(), new.log());
    let Some(status) = status else {
        panic!(
            "the old process still runs 10 s after its successor listened\n{}",
            logs(old)
        );
    };
    assert_eq!(status.code(), Some(0), "{}", logs(old));
    assert!(
        after <= GONE_WITHIN,
        "the old process exited {after:?} after its successor listened\n{}",
        logs(old)
    );
    let wait = Duration::from_secs(5);
    assert!(
        old.wait_log("handoff: handed over", wait).await,
        "{}",
        logs(old)
    );
    assert!(
        new.wait_log("handoff: took over", wait).await,
        "{}",
        logs(old)
    );
    after
}

/// What [`Load`] puts on a proxy.
struct Shape {
    /// Long tunnels, each streaming its own seeded bytes both ways.
    tunnels: usize,
    /// Loops of short tunnels: open, echo a few KB, close, again.
    loops: usize,
    /// Each long tunnel writes a chunk this often...
    every: Duration,
    /// ...of 1 to `most` bytes.
    most: usize,
    /// The pattern's block, which is also each reader's buffer.
    block: usize,
    /// Bytes each long tunnel writes at least before it half-closes.
    at_least: u64,
}

/// Long tunnels through the raw echo upstream, each writing a seeded [`Pattern`] and checking
/// every byte that comes back against its own copy, and loops of short tunnels. Failures are
/// collected, with when they happened, rather than panicked on in a task.
struct Load {
    shared: Arc<Shared>,
    flows: Vec<Arc<Flow>>,
    rounds: Vec<Arc<AtomicU64>>,
    tasks: Vec<JoinHandle<()>>,
    at_least: u64,
}

struct Shared {
    stop: AtomicBool,
    errors: Mutex<Vec<String>>,
    started: Instant,
}

impl Shared {
    fn fail(&self, what: String) {
        let at = self.started.elapsed();
        self.errors
            .lock()
            .unwrap()
            .push(format!("at {at:.2?}: {what}"));
    }

    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && self.started.elapsed() < LOAD_FOR_AT_MOST
    }
}

#[derive(Default)]
struct Flow {
    sent: AtomicU64,
    received: AtomicU64,
}

impl Load {
    async fn start(addr: SocketAddr, shape: Shape) -> Load {
        let streams: Vec<TcpStream> = futures_util::stream::iter(0..shape.tunnels)
            .map(|_| raw_tunnel::open(addr))
            .buffered(32)
            .collect()
            .await;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            errors: Mutex::new(Vec::new()),
            started: Instant::now(),
        });
        let shape = Arc::new(shape);
        let (mut flows, mut rounds, mut tasks) = (Vec::new(), Vec::new(), Vec::new());
        for (i, stream) in streams.into_iter().enumerate() {
            let flow = Arc::new(Flow::default());
            let (r, w) = stream.into_split();
            let (s, f, sh) = (shared.clone(), flow.clone(), shape.clone());
            tasks.push(tokio::spawn(send(w, i, sh, s, f)));
            let (s, f) = (shared.clone(), flow.clone());
            tasks.push(tokio::spawn(receive(r, i, shape.block, s, f)));
            flows.push(flow);
        }
        for k in 0..shape.loops {
            let done = Arc::new(AtomicU64::new(0));
            let (s, d) = (shared.clone(), done.clone());
            tasks.push(tokio::spawn(handshakes(addr, k, s, d)));
            rounds.push(done);
        }
        Load {
            shared,
            flows,
            rounds,
            tasks,
            at_least: shape.at_least,
        }
    }

    /// Prints `what` with the time into the load, to line the test's steps up with failures.
    fn note(&self, what: &str) {
        eprintln!("at {:.2?}: {what}", self.shared.started.elapsed());
    }

    fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().unwrap().clone()
    }

    /// Waits (up to 20 s) until every long tunnel has had `by` more bytes echoed and every
    /// loop has done two more rounds; fails at once on any error so far.
    async fn moves_on(&self, when: &str, proxy: &Proxy, by: u64) {
        let echoed = |i: usize| self.flows[i].received.load(Ordering::Relaxed);
        let rounds = |k: usize| self.rounds[k].load(Ordering::Relaxed);
        let echoed_from: Vec<u64> = (0..self.flows.len()).map(echoed).collect();
        let rounds_from: Vec<u64> = (0..self.rounds.len()).map(rounds).collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            self.assert_no_errors(when, proxy);
            let stalled: Vec<usize> = (0..self.flows.len())
                .filter(|&i| echoed(i) < echoed_from[i] + by)
                .collect();
            let idle: Vec<usize> = (0..self.rounds.len())
                .filter(|&k| rounds(k) < rounds_from[k] + 2)
                .collect();
            if stalled.is_empty() && idle.is_empty() {
                self.note(&format!("{when}: every tunnel and loop moves"));
                return;
            }
            if Instant::now() >= deadline {
                let first: Vec<String> = stalled
                    .iter()
                    .take(10)
                    .map(|&i| format!("{i} ({} -> {})", echoed_from[i], echoed(i)))
                    .collect();
                panic!(
                    "{when}: in 20 s, {} of {} tunnels got fewer than {by} more bytes back \
                     (first: {}); loops without two more rounds: {idle:?}\n{}",
                    stalled.len(),
                    self.flows.len(),
                    first.join(", "),
                    proxy.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn assert_no_errors(&self, when: &str, proxy: &Proxy) {
        let errors = self.errors();
        assert!(
            errors.is_empty(),
            "{when}: {} errors, the first:\n{}\n{}",
            errors.len(),
            errors[..errors.len().min(20)].join("\n"),
            proxy.log()
        );
    }

    /// Stops writing: each long tunnel half-closes (once it wrote `at_least`) and must get
    /// back exactly what it sent, then end of stream; the loops stop after their round.
    async fn finish(mut self, proxy: &Proxy) {
        self.note("stop");
        self.shared.stop.store(true, Ordering::Relaxed);
        let all = futures_util::future::join_all(std::mem::take(&mut self.tasks));
        let ended = tokio::time::timeout(Duration::from_secs(60), all).await;
        self.note("load ended");
        self.assert_no_errors("at the end", proxy);
        let flows: Vec<(u64, u64)> = self
            .flows
            .iter()
            .map(|f| {
                let sent = f.sent.load(Ordering::Relaxed);
                (sent, f.received.load(Ordering::Relaxed))
            })
            .collect();
        let short: Vec<String> = flows
            .iter()
            .enumerate()
            .filter(|(_, (sent, got))| sent != got || *sent < self.at_least.max(1))
            .map(|(i, (sent, got))| format!("{i}: sent {sent}, got {got}"))
            .collect();
        assert!(
            short.is_empty(),
            "{} of {} tunnels did not echo all they sent (first: {})\n{}",
            short.len(),
            flows.len(),
            short[..short.len().min(10)].join("; "),
            proxy.log()
        );
        for (task, result) in ended
            .expect("every tunnel ends within 60 s of its half-close")
            .into_iter()
            .enumerate()
        {
            assert!(result.is_ok(), "load task {task}: {result:?}");
        }
        let sent: u64 = flows.iter().map(|(sent, _)| sent).sum();
        let rounds: Vec<u64> = self
            .rounds
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .collect();
        self.note(&format!(
            "{sent} bytes echoed whole; handshake rounds {rounds:?}"
        ));
    }
}

/// A long tunnel's writer: a chunk of its pattern every `shape.every` until told to stop
/// (and `shape.at_least` is written), then a half-close.
async fn send(
    mut w: OwnedWriteHalf,
    i: usize,
    shape: Arc<Shape>,
    shared: Arc<Shared>,
    flow: Arc<Flow>,
) {
    let mut pattern = Pattern::new(i as u64, shape.block);
    // Spread over the period, as independent clients would be.
    let phase = shape.every * i as u32 / shape.tunnels as u32;
    let mut tick = tokio::time::interval_at(Instant::now() + phase, shape.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0u64;
    for round in 0..MOST_ROUNDS {
        let more = sent < shape.at_least && shared.started.elapsed() < LOAD_FOR_AT_MOST;
        if !shared.running() && !more {
            break;
        }
        tick.tick().await;
        let mut left = 1 + (round as usize * 7919 + i * 31) % shape.most;
        while left > 0 {
            let bytes = pattern.take(left);
            let n = bytes.len();
            if let Err(e) = w.write_all(bytes).await {
                shared.fail(format!("tunnel {i}: write after {sent} bytes: {e}"));
                return;
            }
            sent += n as u64;
            left -= n;
            flow.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    if let Err(e) = w.shutdown().await {
        shared.fail(format!("tunnel {i}: half-close after {sent} bytes: {e}"));
    }
}

/// A long tunnel's reader: checks each byte against the pattern until end of stream, which
/// must come only after the writer was told to stop.
async fn receive(
    mut r: OwnedReadHalf,
    i: usize,
    block: usize,
    shared: Arc<Shared>,
    flow: Arc<Flow>,
) {
    let mut pattern = Pattern::new(i as u64, block);
    let mut buf = vec![0u8; block];
    let mut got = 0u64;
    loop {
        match r.read(&mut buf).await {
            Ok(0) => {
                if !shared.stop.load(Ordering::Relaxed) {
                    shared.fail(format!("tunnel {i}: end of stream after {got} bytes"));
                }
                return;
            }
            Ok(n) => {
                if !pattern.continues_with(&buf[..n]) {
                    let end = got + n as u64;
                    shared.fail(format!(
                        "tunnel {i}: bytes {got}..{end} are not what was sent"
                    ));
                    return;
                }
                got += n as u64;
                flow.received.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                shared.fail(format!("tunnel {i}: read after {got} bytes: {e}"));
                return;
            }
        }
    }
}

/// Short tunnels one after another, each counted in `done` once its echo came back whole.
async fn handshakes(addr: SocketAddr, k: usize, shared: Arc<Shared>, done: Arc<AtomicU64>) {
    for round in 0..MOST_ROUNDS {
        if !shared.running() {
            return;
        }
        match echo_once(addr, ((k as u64) << 32) | round).await {
            Ok(()) => {
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => shared.fail(format!("handshake loop {k}, round {round}: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Opens a tunnel, echoes a few KB through it, half-closes and reads to its end; what went
/// wrong, if anything (within 10 s, naming the step it was stuck in and what had come back).
async fn echo_once(addr: SocketAddr, seed: u64) -> Result<(), String> {
    let data = common::pseudo_random(1024 + (seed % 4096) as usize, seed + 1);
    let step = std::sync::Mutex::new(("connect", 0usize));
    let at = |name: &'static str, got: usize| *step.lock().unwrap() = (name, got);
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        at("the 101", 0);
        let request = common::upgrade_request("/tunnel");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send the upgrade: {e}"))?;
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                Ok(_) => return Err(format!("closed in the head: {:?}", text(&head))),
                Err(e) => return Err(format!("read the head: {e} after {:?}", text(&head))),
            }
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            return Err(format!("not a 101: {:?}", text(&head)));
        }
        at("sending", 0);
        stream
            .write_all(&data)
            .await
            .map_err(|e| format!("send: {e}"))?;
        stream
            .shutdown()
            .await
            .map_err(|e| format!("half-close: {e}"))?;
        at("the echo", 0);
        let mut back = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    back.extend_from_slice(&buf[..n]);
                    at("the echo", back.len());
                }
                Err(e) => {
                    return Err(format!(
                        "echo: {e} after {} of {} bytes",
                        back.len(),
                        data.len()
                    ));
                }
            }
        }
        if back != data {
            return Err(format!(
                "echo of {} bytes differs ({} back)",
                data.len(),
                back.len()
            ));
        }
        Ok(())
    };
    let result = tokio::time::timeout(Duration::from_secs(10), exchange).await;
    result.map_err(|_| {
        let (name, got) = *step.lock().unwrap();
        format!(
            "no whole echo within 10 s: stuck at {name} ({got} of {} bytes back)",
            data.len()
        )
    })?
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An endless seeded byte stream (xorshift, like `common::pseudo_random`), made a block at a
/// time: the writer takes it in chunks and the reader checks what arrives against its own
/// copy, so a stream of any length costs one block on each side.
struct Pattern {
    state: u64,
    block: Vec<u8>,
    at: usize,
}

impl Pattern {
    fn new(seed: u64, block: usize) -> Pattern {
        assert!(block > 0 && block.is_multiple_of(8));
        Pattern {
            state: (seed + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            block: vec![0; block],
            at: block,
        }
    }

    /// The next bytes: `n`, or fewer where a block ends.
    fn take(&mut self, n: usize) -> &[u8] {
        if self.at == self.block.len() {
            for word in self.block.chunks_exact_mut(8) {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                word.copy_from_slice(&self.state.to_le_bytes());
            }
            self.at = 0;
        }
        let start = self.at;
        self.at = (start + n).min(self.block.len());
        &self.block[start..self.at]
    }

    /// Whether `got` is what comes next.
    fn continues_with(&mut self, mut got: &[u8]) -> bool {
        while !got.is_empty() {
            let want = self.take(got.len());
            let n = want.len();
            if want != &got[..n] {
                return false;
            }
            got = &got[n..];
        }
        true
    }
}
