//! The upstream servers: the file read into an immutable table, each group's balancer, the
//! hot reload that swaps the table whole, and the background thread that health-checks
//! servers and looks host names up again.

pub mod addr;
pub mod balancer;
pub mod health;
pub mod reload;
pub mod resolve;
pub mod table;

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError, read_file};
pub use addr::UpstreamAddr;
pub use table::{Group, UpstreamTable};

#[cfg(test)]
mod tests;

/// Loads the main config and the upstream file it names, and checks them against each other.
/// Start-up and `--check` both come through here.
pub fn load(path: &Path) -> Result<(Config, UpstreamTable), ConfigError> {
    let text = read_file(path)?;
    let config = Config::parse(path, &text)?;
    let table = UpstreamTable::load(&config.upstreams_path, &config)?;
    Ok((config, table))
}

/// Starts the one thread, with a small tokio runtime of its own, that runs every group's
/// active health checks and looks host names up again, for the table in `tables`. One
/// place for all workers: each server gets one check per interval, however many workers.
pub fn spawn_background<T>(tables: T, resolver: Option<SocketAddr>) -> std::io::Result<()>
where
    T: Deref<Target = ArcSwap<UpstreamTable>> + Send + Sync + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tables = Arc::new(tables);
    std::thread::Builder::new()
        .name("wsplice-upstreams".into())
        .spawn(move || {
            runtime.block_on(async {
                tokio::join!(health::run(tables.clone()), resolve::run(tables, resolver))
            });
        })?;
    Ok(())
}
