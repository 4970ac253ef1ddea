//! The upstream servers: the file read into an immutable table, each group's balancer, and
//! the hot reload that swaps the table whole.

pub mod addr;
pub mod balancer;
pub mod reload;
pub mod table;

use std::path::Path;

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
