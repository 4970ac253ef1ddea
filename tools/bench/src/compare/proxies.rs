//! The contenders: "direct" (no proxy, the ceiling), nginx with the usual WebSocket recipe,
//! HAProxy in tunnel mode, and wsplice, each started from a generated config in its own
//! directory, confined to the proxy CPUs, and stopped (with its children) when dropped.
//! With [`Setup::tls`], each listens with TLS instead: the same certificate, TLS 1.3 only and
//! TLS_AES_128_GCM_SHA256 on all three.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::CompareError;
use super::procfs::ProcTree;
use crate::sys;
use crate::tls::CertFiles;

const READY_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Which program sits between the client and the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Direct,
    Nginx,
    Haproxy,
    Wsplice,
    /// A second wsplice binary (`--baseline-bin`), for before/after figures in one run.
    Baseline,
}

impl Kind {
    pub fn parse(name: &str) -> Result<Kind, String> {
        match name {
            "direct" => Ok(Kind::Direct),
            "nginx" => Ok(Kind::Nginx),
            "haproxy" => Ok(Kind::Haproxy),
            "wsplice" => Ok(Kind::Wsplice),
            "baseline" => Ok(Kind::Baseline),
            other => Err(format!(
                "unknown target {other:?}: choose from direct, nginx, haproxy, wsplice, baseline"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
            Kind::Wsplice => "wsplice",
            Kind::Baseline => "baseline",
        }
    }
}

/// How to start the proxies.
#[derive(Debug, Clone)]
pub struct Setup {
    pub upstream: SocketAddr,
    pub cpus: Vec<usize>,
    pub workers: usize,
    /// The open-files limit every proxy may use.
    pub nofile: u64,
    pub nginx: PathBuf,
    pub haproxy: PathBuf,
    pub wsplice: PathBuf,
    pub baseline: PathBuf,
    /// Extra `[limits]` lines of the `wsplice` and the `baseline` target.
    pub wsplice_limits: Vec<String>,
    pub baseline_limits: Vec<String>,
    /// Listen with TLS (and only with TLS), with this certificate.
    pub tls: Option<CertFiles>,
}

/// A started contender: where the client connects, and the process to measure.
#[derive(Debug)]
pub struct Target {
    pub kind: Kind,
    pub addr: SocketAddr,
    pub version: String,
    pub process: Option<Process>,
}

/// A running proxy; dropping it stops the whole tree.
#[derive(Debug)]
pub struct Process {
    child: Child,
    pub tree: ProcTree,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Target {
    pub fn start(kind: Kind, setup: &Setup) -> Result<Target, CompareError> {
        if kind == Kind::Direct {
            return Ok(Target {
                kind,
                addr: setup.upstream,
                version: String::new(),
                process: None,
            });
        }
        let dir = tempfile::Builder::new()
            .prefix(&format!("wsplice-bench-{}-", kind.name()))
            .tempdir()
            .map_err(|e| CompareError::Setup(format!("temp dir: {e}")))?;
        // nginx workers drop root privileges; let them reach their own prefix.
        let _ = fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755));
        let addr = free_port()?;
        let d = dir.path();
        let (program, args, version) = match kind {
            Kind::Nginx => {
                let conf = write(d, "nginx.conf", &nginx_conf(setup, addr, d))?;
                let args = vec![
                    "-p".into(),
                    path_arg(d),
                    "-c".into(),
                    path_arg(&conf),
                    "-e".into(),
                    path_arg(&d.join("error.log")),
                ];
                (&setup.nginx, args, version_of(&setup.nginx, "-v"))
            }
            Kind::Haproxy => {
                let conf = write(d, "haproxy.cfg", &haproxy_conf(setup, addr))?;
                let args = vec!["-db".into(), "-f".into(), path_arg(&conf)];
                (&setup.haproxy, args, version_of(&setup.haproxy, "-v"))
            }
            Kind::Wsplice | Kind::Baseline => {
                write(
                    d,
                    "upstreams.toml",
                    &format!("[backend]\nservers = [\"{}\"]\n", setup.upstream),
                )?;
                let limits = if kind == Kind::Wsplice {
                    &setup.wsplice_limits
                } else {
                    &setup.baseline_limits
                };
                let conf = write(d, "wsplice.toml", &wsplice_conf(setup, addr, limits))?;
                let args = vec!["--config".into(), path_arg(&conf)];
                let bin = if kind == Kind::Wsplice {
                    &setup.wsplice
                } else {
                    &setup.baseline
                };
                (bin, args, version_of(bin, "--version"))
            }
            Kind::Direct => unreachable!("handled above"),
        };
        let log = d.join("output.log");
        let out = File::create(&log).map_err(|e| CompareError::Setup(format!("log file: {e}")))?;
        let err = out
            .try_clone()
            .map_err(|e| CompareError::Setup(format!("log file: {e}")))?;
        let mut command = Command::new(resolve(program));
        command
            .args(&args)
            .current_dir(d)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        sys::confine(&mut command, &setup.cpus);
        let child = command.spawn().map_err(|e| {
            CompareError::Setup(format!(
                "cannot run {} ({e}); install it (scripts/bench.sh does) or leave {} out of --targets",
                program.display(),
                kind.name()
            ))
        })?;
        let tree = ProcTree { root: child.id() };
        let mut process = Process {
            child,
            tree,
            log,
            _dir: dir,
        };
        process.wait_ready(kind, addr)?;
        Ok(Target {
            kind,
            addr,
            version,
            process: Some(process),
        })
    }
}

impl Process {
    fn wait_ready(&mut self, kind: Kind, addr: SocketAddr) -> Result<(), CompareError> {
        let until = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(CompareError::Setup(format!(
                    "{} exited at start ({status}):\n{}",
                    kind.name(),
                    self.log_tail()
                )));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(CompareError::Setup(format!(
                    "{} does not accept on {addr} after {READY_TIMEOUT:?}:\n{}",
                    kind.name(),
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines the proxy wrote (its stdout and stderr).
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let pids = self.tree.pids();
        let _ = sys::signal(self.tree.root, libc::SIGTERM);
        let until = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever is still alive (a stuck master, an orphaned worker) is killed outright.
        for pid in pids.into_iter().rev() {
            if fs::metadata(format!("/proc/{pid}")).is_ok() {
                let _ = sys::signal(pid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on right now.
fn free_port() -> Result<SocketAddr, CompareError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| CompareError::Setup(format!("no free loopback port: {e}")))
}

/// A program path with a directory part made absolute (the proxy starts in its own
/// directory); a bare name is left for the PATH lookup.
fn resolve(program: &Path) -> PathBuf {
    if program.components().count() > 1 {
        fs::canonicalize(program).unwrap_or_else(|_| program.to_path_buf())
    } else {
        program.to_path_buf()
    }
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf, CompareError> {
    let path = dir.join(name);
    fs::write(&path, text).map_err(|e| CompareError::Setup(format!("{}: {e}", path.display())))?;
    Ok(path)
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

/// The first line a program prints for its version flag (nginx prints it on stderr).
fn version_of(program: &Path, flag: &str) -> String {
    let output = match Command::new(program).arg(flag).output() {
        Ok(output) => output,
        Err(_) => return "not installed".into(),
    };
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    text.lines().next().unwrap_or("").trim().to_string()
}

/// Connections each proxy must be able to hold: two descriptors each, plus spare.
pub fn max_connections(nofile: u64) -> u64 {
    (nofile.saturating_sub(200) / 2).min(9000)
}

/// The usual nginx WebSocket recipe, with `proxy_read_timeout` raised so idle tunnels stay,
/// enough `worker_connections` (two per proxied connection), and every path in `dir`.
pub fn nginx_conf(setup: &Setup, addr: SocketAddr, dir: &Path) -> String {
    let d = dir.display();
    let mut c = String::new();
    let _ = write!(
        c,
        "daemon off;\nmaster_process on;\nworker_processes {};\nworker_rlimit_nofile {};\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\n",
        setup.workers, setup.nofile
    );
    let _ = write!(
        c,
        "events {{\n    worker_connections {};\n}}\n\n",
        setup.nofile.saturating_sub(100)
    );
    let _ = write!(
        c,
        "http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;

    upstream backend {{
        server {up};
    }}
    map $http_upgrade $connection_upgrade {{
        default upgrade; '' close;
    }}
    server {{
        listen {addr}{ssl};{tls}
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 3600s;
        }}
    }}
}}
",
        up = setup.upstream,
        ssl = if setup.tls.is_some() { " ssl" } else { "" },
        tls = setup.tls.as_ref().map_or(String::new(), |t| format!(
            "
        ssl_certificate {};
        ssl_certificate_key {};
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;",
            t.chain.display(),
            t.key.display()
        ))
    );
    c
}

/// HAProxy in HTTP mode: a `101` turns the connection into a tunnel, kept by `timeout tunnel`.
pub fn haproxy_conf(setup: &Setup, addr: SocketAddr) -> String {
    let maxconn = max_connections(setup.nofile);
    format!(
        "global
    maxconn {maxconn}
    nbthread {workers}

defaults
    mode http
    maxconn {maxconn}
    timeout connect 5s
    timeout client 3600s
    timeout server 3600s
    timeout tunnel 3600s

frontend bench
    bind {addr}{tls}
    default_backend upstream

backend upstream
    server up {up}
",
        workers = setup.workers,
        up = setup.upstream,
        tls = setup.tls.as_ref().map_or(String::new(), |t| format!(
            " ssl crt {} ssl-min-ver TLSv1.3 ciphersuites TLS_AES_128_GCM_SHA256",
            t.combined.display()
        ))
    )
}

pub fn wsplice_conf(setup: &Setup, addr: SocketAddr, limits: &[String]) -> String {
    let (listen, tls) = match &setup.tls {
        None => (format!("\"{addr}\""), String::new()),
        Some(t) => (
            format!("{{ addr = \"{addr}\", tls = true }}"),
            format!(
                "\n[tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\nmin_version = \"1.3\"\n",
                t.chain.display(),
                t.key.display()
            ),
        ),
    };
    format!(
        "listen = [{listen}]
workers = {workers}
upstreams = \"upstreams.toml\"

[timeouts]
idle = \"1h\"

[limits]
max_connections = {max}
{limits}{tls}
[[route]]
path = \"/\"
upstream = \"backend\"
",
        workers = setup.workers,
        max = max_connections(setup.nofile),
        limits = limits.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> Setup {
        Setup {
            upstream: "127.0.0.1:9000".parse().unwrap(),
            cpus: vec![1],
            workers: 1,
            nofile: 20000,
            nginx: "nginx".into(),
            haproxy: "haproxy".into(),
            wsplice: "wsplice".into(),
            baseline: "wsplice".into(),
            wsplice_limits: vec!["multishot_receive = true".into()],
            baseline_limits: Vec::new(),
            tls: None,
        }
    }

    #[test]
    fn configs_carry_the_recipe_and_the_limits() {
        let addr = "127.0.0.1:8080".parse().unwrap();
        let nginx = nginx_conf(&setup(), addr, Path::new("/tmp/x"));
        for line in [
            "worker_processes 1;",
            "worker_connections 19900;",
            "worker_rlimit_nofile 20000;",
            "proxy_http_version 1.1;",
            "proxy_set_header Upgrade $http_upgrade;",
            "proxy_set_header Connection $connection_upgrade;",
            "proxy_read_timeout 3600s;",
            "server 127.0.0.1:9000;",
            "listen 127.0.0.1:8080;",
        ] {
            assert!(nginx.contains(line), "nginx config lacks {line}");
        }
        let haproxy = haproxy_conf(&setup(), addr);
        assert!(haproxy.contains("timeout tunnel 3600s"));
        assert!(haproxy.contains("nbthread 1"));
        assert!(haproxy.contains("maxconn 9000"));
        let wsplice = wsplice_conf(&setup(), addr, &setup().wsplice_limits);
        assert!(wsplice.contains("max_connections = 9000\nmultishot_receive = true\n"));
        assert!(wsplice.contains("workers = 1"));
        assert!(wsplice.contains("max_connections = 9000"));
        assert!(!nginx.contains("ssl") && !haproxy.contains("ssl") && !wsplice.contains("tls"));
    }

    #[test]
    fn tls_configs_name_the_same_certificate_version_and_cipher() {
        let addr = "127.0.0.1:8443".parse().unwrap();
        let setup = Setup {
            tls: Some(CertFiles {
                chain: "/r/cert.pem".into(),
                key: "/r/key.pem".into(),
                combined: "/r/cert+key.pem".into(),
                ca: "/r/ca.pem".into(),
            }),
            ..setup()
        };
        let nginx = nginx_conf(&setup, addr, Path::new("/tmp/x"));
        for line in [
            "listen 127.0.0.1:8443 ssl;",
            "ssl_certificate /r/cert.pem;",
            "ssl_certificate_key /r/key.pem;",
            "ssl_protocols TLSv1.3;",
            "ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;",
        ] {
            assert!(nginx.contains(line), "nginx config lacks {line}");
        }
        let haproxy = haproxy_conf(&setup, addr);
        assert!(haproxy.contains(
            "bind 127.0.0.1:8443 ssl crt /r/cert+key.pem ssl-min-ver TLSv1.3 ciphersuites TLS_AES_128_GCM_SHA256\n"
        ), "{haproxy}");
        let wsplice = wsplice_conf(&setup, addr, &[]);
        for line in [
            "listen = [{ addr = \"127.0.0.1:8443\", tls = true }]",
            "certificates = [{ cert = \"/r/cert.pem\", key = \"/r/key.pem\" }]",
            "min_version = \"1.3\"",
        ] {
            assert!(
                wsplice.contains(line),
                "wsplice config lacks {line}:\n{wsplice}"
            );
        }
    }
}
