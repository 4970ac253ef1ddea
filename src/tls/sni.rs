//! Which certificate a handshake gets: the set of loaded pairs indexed by the names they
//! serve, and the rustls resolver that reads the current set through arc-swap, so a renewal
//! swaps the set without a lock and without touching the long-lived `ServerConfig` (sozu's
//! model).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certificates::Pair;
use crate::config::UnknownSni;
use crate::http::host::HostPattern;

/// The longest DNS name (RFC 1035), so a lookup can lower-case it on the stack.
const MAX_NAME: usize = 253;

/// The pairs in config order, and an index from each name they serve to the first pair that
/// serves it.
#[derive(Debug)]
pub struct CertificateSet {
    pub pairs: Vec<Arc<Pair>>,
    /// Lower-case name -> pair.
    exact: HashMap<String, usize>,
    /// Lower-case suffix of a wildcard (`example.net` for `*.example.net`) -> pair.
    wildcard: HashMap<String, usize>,
}

impl CertificateSet {
    pub fn new(pairs: Vec<Arc<Pair>>) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, pair) in pairs.iter().enumerate() {
            for name in &pair.names {
                match name {
                    HostPattern::Exact(n) => exact.entry(n.clone()).or_insert(i),
                    HostPattern::Wildcard(suffix) => {
                        wildcard.entry(suffix[1..].to_string()).or_insert(i)
                    }
                };
            }
        }
        CertificateSet {
            pairs,
            exact,
            wildcard,
        }
    }

    /// The pair serving `name`: one naming it exactly, else one whose wildcard covers it.
    pub fn find(&self, name: &str) -> Option<usize> {
        let name = name.strip_suffix('.').unwrap_or(name);
        let mut buf = [0u8; MAX_NAME];
        let lower = buf.get_mut(..name.len())?;
        lower.copy_from_slice(name.as_bytes());
        lower.make_ascii_lowercase();
        let lower = std::str::from_utf8(lower).ok()?;
        if let Some(&i) = self.exact.get(lower) {
            return Some(i);
        }
        let (label, parent) = lower.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(parent).copied()
    }

    /// The pair a handshake with server name `sni` gets; `None`: no certificate, the
    /// handshake fails with an alert.
    pub fn choose(&self, sni: Option<&str>, unknown: UnknownSni) -> Option<usize> {
        sni.and_then(|name| self.find(name))
            .or(match unknown {
                UnknownSni::Default => Some(0),
                UnknownSni::Reject => None,
            })
            .filter(|&i| i < self.pairs.len())
    }
}

/// The certificate resolver rustls calls once per handshake.
#[derive(Debug)]
pub struct Resolver {
    pub current: ArcSwap<CertificateSet>,
    pub unknown_sni: UnknownSni,
    /// Handshakes without SNI or with a name no certificate covers, by what they got: the
    /// default certificate, or none (a refusal, so it is counted like every other). One
    /// shared atomic add per such handshake, next to a handshake's cost.
    pub defaulted: AtomicU64,
    pub rejected: AtomicU64,
}

impl Resolver {
    pub fn new(set: CertificateSet, unknown_sni: UnknownSni) -> Self {
        Resolver {
            current: ArcSwap::from_pointee(set),
            unknown_sni,
            defaulted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// The pair a handshake with server name `sni` gets now.
    pub fn pick(&self, sni: Option<&str>) -> Option<Arc<Pair>> {
        let set = self.current.load();
        set.choose(sni, self.unknown_sni)
            .map(|i| set.pairs[i].clone())
    }
}

thread_local! {
    /// The server name of the last ClientHello this thread's resolver saw (lower case).
    static SEEN: std::cell::RefCell<Option<Box<str>>> = const { std::cell::RefCell::new(None) };
}

/// The server name the resolver saw in the ClientHello it last chose for, on this thread;
/// taken once. rustls calls the resolver synchronously inside `process_tls_records`, on the
/// worker thread that drives that handshake, so the caller reads its own client's name
/// right after that call (rustls's unbuffered connection exposes no SNI of its own).
pub fn take_seen_name() -> Option<Box<str>> {
    SEEN.with(|seen| seen.borrow_mut().take())
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello
            .server_name()
            .map(|n| n.to_ascii_lowercase().into_boxed_str());
        SEEN.with(|seen| *seen.borrow_mut() = name);
        let set = self.current.load();
        if let Some(i) = hello.server_name().and_then(|name| set.find(name)) {
            return Some(set.pairs[i].key.clone());
        }
        let counter = match self.unknown_sni {
            UnknownSni::Default => &self.defaulted,
            UnknownSni::Reject => &self.rejected,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        set.choose(None, self.unknown_sni)
            .map(|i| set.pairs[i].key.clone())
    }
}
