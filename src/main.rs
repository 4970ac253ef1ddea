//! The `wsplice` command: parse flags, set up logging, load the config, run.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use wsplice::config::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A thread-per-core io_uring WebSocket reverse proxy.
///
/// Signals: SIGHUP reloads the upstream file (a bad file is refused and the old table kept);
/// SIGTERM or SIGINT stops.
///
/// Exit codes: 0 clean stop or valid config; 1 invalid config or upstream file; 2 cannot start.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// The main config file (TOML).
    #[arg(long, short, default_value = "config/wsplice.toml")]
    config: PathBuf,
    /// Validate the config and the upstream file, then exit 0 (valid) or 1 (invalid).
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();

    let (config, table) = match Config::load(&cli.config) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("wsplice: {e}");
            return ExitCode::from(1);
        }
    };
    if cli.check {
        let servers: usize = table.groups().iter().map(|g| g.servers().len()).sum();
        println!(
            "wsplice: {} is valid ({} routes, {} upstream groups, {} servers)",
            cli.config.display(),
            config.routes.len(),
            table.groups().len(),
            servers
        );
        return ExitCode::SUCCESS;
    }
    match wsplice::server::run(config, table) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsplice: cannot start: {e}");
            ExitCode::from(2)
        }
    }
}
