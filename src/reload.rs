//! Upstream table reload: read, validate against the routes, swap whole. A file that fails
//! keeps the old table in place; connections already open are never touched either way.

use tracing::{error, info};

use crate::upstream::UpstreamTable;
use crate::worker::Shared;

/// Reloads the upstream file into `shared`. Returns whether the new table was taken.
pub fn reload(shared: &Shared) -> bool {
    let config = &shared.config;
    match UpstreamTable::load(&config.upstreams_path, config) {
        Ok(table) => {
            let summary = summarize(&table);
            shared.table.store(std::sync::Arc::new(table));
            info!(
                "upstreams reloaded from {}: {summary}",
                config.upstreams_path.display()
            );
            true
        }
        Err(e) => {
            error!("upstream reload refused, keeping the current table: {e}");
            false
        }
    }
}

/// "backend=[127.0.0.1:3000, 127.0.0.1:3001]; chat=[...]".
pub fn summarize(table: &UpstreamTable) -> String {
    table
        .groups()
        .iter()
        .map(|g| {
            let servers: Vec<String> = g.servers.iter().map(ToString::to_string).collect();
            format!("{}=[{}]", g.name, servers.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}
