//! The `wsplice-bench` command: run the upstream, one load mode, or the whole comparison.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use wsplice_bench::compare;
use wsplice_bench::load::{Load, bulk, echo, handshake, idle};
use wsplice_bench::report::{NoProbe, Report};
use wsplice_bench::upstream::Upstream;
use wsplice_bench::{runtime, sys};

/// Load tool and fast upstream for WebSocket proxies, and the side-by-side comparison of
/// direct, nginx, HAProxy and wsplice.
///
/// Every mode verifies what it counts: echoes byte for byte, the accept key of each
/// handshake, every bulk byte at the sink. Exit code 1 if any error happened or nothing was
/// counted.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve WebSocket echo (any path) and sink (/sink) until stopped; prints "listening on ADDR".
    Upstream {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        #[command(flatten)]
        threads: Threads,
    },
    /// N connections, one message of --size bytes in flight each (or --rate: open loop).
    Rr {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Send this many messages per second in total on a fixed schedule; latency counts
        /// from when each message was due (no coordinated omission).
        #[arg(long)]
        rate: Option<f64>,
    },
    /// N connections, --depth messages in flight each (throughput).
    Pipe {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 32)]
        depth: usize,
    },
    /// N loops of connect, upgrade, close handshake (handshakes/s).
    Handshake {
        #[command(flatten)]
        load: LoadArgs,
    },
    /// N connections writing raw bytes after the 101 towards the sink (MB/s).
    Bulk {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long, default_value_t = 64 * 1024)]
        chunk: usize,
    },
    /// Hold N upgraded connections for --hold, then check each still echoes.
    Idle {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
        hold: Duration,
    },
    /// Compare direct, nginx, HAProxy and wsplice side by side (see scripts/bench.sh).
    Compare(Box<compare::Options>),
}

#[derive(Args)]
struct Threads {
    /// Runtime threads (1: single-threaded, the cheapest per message).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Pin to these CPUs, e.g. 0 or 0-3.
    #[arg(long)]
    cpus: Option<String>,
}

#[derive(Args)]
struct LoadArgs {
    /// The proxy (or the upstream itself), IP:PORT.
    #[arg(long, short)]
    target: SocketAddr,
    #[arg(long, short, default_value_t = 50)]
    connections: usize,
    /// Measured time, after the warm-up.
    #[arg(long, short, value_parser = humantime::parse_duration, default_value = "5s")]
    duration: Duration,
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    warmup: Duration,
    /// wss: trust the CA certificate(s) in this PEM file and run a TLS handshake (TLS 1.3,
    /// TLS_AES_128_GCM_SHA256, X25519, never resumed) before each upgrade.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// The name to send as SNI and `Host` with --tls-ca.
    #[arg(long, default_value = wsplice_bench::tls::SERVER_NAME)]
    tls_name: String,
    #[command(flatten)]
    threads: Threads,
}

impl LoadArgs {
    fn load(&self) -> Result<Load, String> {
        let tls = match &self.tls_ca {
            Some(ca) => Some(wsplice_bench::tls::Client::new(ca, &self.tls_name)?),
            None => None,
        };
        Ok(Load {
            target: self.target,
            connections: self.connections,
            duration: self.duration,
            warmup: self.warmup,
            tls,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wsplice-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if let Command::Compare(options) = &command {
        let summary = compare::run(options)?;
        let errors: u64 = summary.runs.iter().map(|r| r.errors).sum();
        return Ok(if errors == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    sys::raise_nofile()?;
    let threads = match &command {
        Command::Upstream { threads, .. } => threads,
        Command::Rr { load, .. }
        | Command::Pipe { load, .. }
        | Command::Handshake { load }
        | Command::Bulk { load, .. }
        | Command::Idle { load, .. } => &load.threads,
        Command::Compare(_) => unreachable!("handled above"),
    };
    if let Some(cpus) = &threads.cpus {
        sys::pin_current_thread(&sys::parse_cpus(cpus)?)?;
    }
    let rt = runtime(threads.threads)?;
    let probe = &mut NoProbe;
    let report: Report = match command {
        Command::Upstream { listen, threads } => {
            let upstream = Upstream::start(listen, threads.threads)?;
            println!("listening on {}", upstream.addr);
            rt.block_on(tokio::signal::ctrl_c())?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Rr { load, size, rate } => {
            let pace = match rate {
                Some(per_second) => echo::Pace::Rate { per_second },
                None => echo::Pace::Closed { depth: 1 },
            };
            rt.block_on(echo::run(&load.load()?, size, pace, probe))?
        }
        Command::Pipe { load, size, depth } => {
            let pace = echo::Pace::Closed { depth };
            rt.block_on(echo::run(&load.load()?, size, pace, probe))?
        }
        Command::Handshake { load } => rt.block_on(handshake::run(&load.load()?, probe))?,
        Command::Bulk { load, chunk } => rt.block_on(bulk::run(&load.load()?, chunk, probe))?,
        Command::Idle { load, hold } => rt.block_on(idle::run(&load.load()?, hold, probe))?,
        Command::Compare(_) => unreachable!("handled above"),
    };
    println!("{report}");
    let counted = report.messages + report.bytes;
    Ok(if report.errors == 0 && counted > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
