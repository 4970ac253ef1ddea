//! The `wsplice` command: parse flags, set up logging, load the config, run.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A thread-per-core io_uring WebSocket reverse proxy.
///
/// Runs until stopped, serving the routes of the config file; logs go to stderr.
///
/// Signals:
///   SIGHUP           reload the upstream file and every certificate pair: new connections
///                    use the new table and certificates, open ones keep theirs; a file
///                    with a mistake is refused (logged with file:line or FILE: reason) and
///                    the old one stays
///   SIGUSR2          upgrade in place: start this binary's file again with --takeover
///                    (needs `handoff` in the config); it takes the listeners and open
///                    tunnels, and this process exits once it handed them over
///   SIGTERM, SIGINT  stop accepting, let open connections finish for up to timeouts.drain,
///                    then exit 0; a second signal stops at once
///
/// Environment:
///   RUST_LOG         log filter (default info; debug logs one line per connection)
///   NOTIFY_SOCKET    set by systemd for Type=notify: wsplice sends READY=1 once every worker
///                    listens, and STOPPING=1 when a stop begins
///
/// Exit codes: 0 clean stop or valid config; 1 invalid config, upstream file or certificate
/// pair; 2 cannot start
/// (address in use, io_uring unavailable, open-files limit too low, ...); 3 a worker failed
/// while running. A panic on any thread aborts the process (SIGABRT).
#[derive(Parser)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// The main config file (TOML); its `upstreams` path is relative to it.
    #[arg(long, short, default_value = "config/wsplice.toml")]
    config: PathBuf,
    /// Validate the config, the upstream file and every certificate pair, print a summary,
    /// then exit 0 (valid; an expired certificate is a warning) or 1 (invalid, with
    /// FILE:LINE: field: what is wrong, or FILE: reason). Starts nothing.
    #[arg(long)]
    check: bool,
    /// Take the place of the wsplice serving the config's `handoff` socket: receive its
    /// listening sockets and open tunnels, resume them, and let it exit (a binary upgrade
    /// that cuts no tunnel). Exits 2, leaving that process serving, if it cannot.
    #[arg(long, conflicts_with = "check")]
    takeover: bool,
}

fn main() -> ExitCode {
    wsplice::os::memory::purge_at_once();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();

    let (config, table) = match wsplice::upstream::load(&cli.config) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("wsplice: {e}");
            return ExitCode::from(1);
        }
    };
    let tls = match config.tls.as_ref().map(wsplice::tls::Tls::load).transpose() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("wsplice: {e}");
            return ExitCode::from(1);
        }
    };
    if cli.check {
        if let Some(tls) = &tls {
            println!("wsplice: certificates: {}", tls.summary());
            if !config.listen.iter().any(|l| l.tls) {
                eprintln!(
                    "wsplice: warning: the [tls] section is not used: no listen entry has tls = true"
                );
            }
            for warning in tls.warnings() {
                eprintln!("wsplice: warning: {warning}");
            }
        }
        let servers: usize = table.groups().iter().map(|g| g.servers().len()).sum();
        let certificates = tls.as_ref().map_or(String::new(), |t| {
            format!(", {} certificates", t.pairs().len())
        });
        println!(
            "wsplice: {} is valid ({} routes, {} upstream groups, {} servers{certificates})",
            cli.config.display(),
            config.routes.len(),
            table.groups().len(),
            servers
        );
        return ExitCode::SUCCESS;
    }
    match wsplice::server::run(config, table, tls, cli.takeover) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsplice: cannot start: {e}");
            ExitCode::from(2)
        }
    }
}
