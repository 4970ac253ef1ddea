//! Certificate hot swap: on a change to any certificate or key file (or SIGHUP), read every
//! pair again; a pair that fails is refused with `FILE: reason` and its old version stays,
//! the others go on. New handshakes see the new set at once; open connections keep the
//! `CertifiedKey` they were given.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{error, info, warn};

use super::certificates::{PemFiles, format_time, unix_now};
use super::sni::CertificateSet;
use super::{Pair, Tls};
use crate::os::watch::Trigger;

/// Pair reloads by result, read by the metrics endpoint and tests. A pair whose files did
/// not change is not counted, unless an operator's SIGHUP asked for it.
#[derive(Debug, Default)]
pub struct CertificateReloads {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

impl Tls {
    /// Reads every pair again and swaps in those that changed and load. Returns how many
    /// pairs were replaced.
    pub fn reload(&self, trigger: Trigger) -> usize {
        let mut last_read = self.last_read.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.resolver.current.load();
        let mut pairs = current.pairs.clone();
        let mut replaced = 0;
        let now = unix_now();
        for (i, paths) in self.settings.certificates.iter().enumerate() {
            let files = match PemFiles::read(paths) {
                Ok(files) => files,
                Err(e) => {
                    // A file being replaced may be missing for an instant: the rename that
                    // brings it back is another event.
                    self.reloads.failed.fetch_add(1, Ordering::Relaxed);
                    error!("certificate reload refused, keeping the current pair: {e}");
                    continue;
                }
            };
            if trigger == Trigger::Watch && last_read[i].as_ref() == Some(&files) {
                continue;
            }
            let outcome = Pair::parse(paths, &files, &self.provider);
            last_read[i] = Some(files);
            match outcome {
                Ok(pair) => {
                    self.reloads.ok.fetch_add(1, Ordering::Relaxed);
                    info!(
                        "certificate {} reloaded from {} (valid until {})",
                        pair.label(),
                        paths.cert.display(),
                        format_time(pair.not_after)
                    );
                    for warning in pair.warnings(now) {
                        warn!("{warning}");
                    }
                    pairs[i] = Arc::new(pair);
                    replaced += 1;
                }
                Err(e) => {
                    self.reloads.failed.fetch_add(1, Ordering::Relaxed);
                    error!("certificate reload refused, keeping the current pair: {e}");
                }
            }
        }
        if replaced > 0 {
            self.resolver
                .current
                .store(Arc::new(CertificateSet::new(pairs)));
        }
        replaced
    }

    /// Each pair in use: its label and its expiry (Unix seconds), for `/metrics`.
    pub fn expiry(&self) -> Vec<(String, String, i64)> {
        self.pairs()
            .iter()
            .map(|p| (p.label(), p.paths.cert.display().to_string(), p.not_after))
            .collect()
    }
}
