//! An upstream server's address: TCP (`HOST:PORT`, resolved once when the file is read) or a
//! unix stream socket (`unix:/run/chat.sock`, nginx's `server unix:/path;`) for an app server
//! on the same host. One type for both, so balancing, health, cookies and logs treat a socket
//! path as just another server; its text form is its identity (the ring and the cookie hash
//! it), so it must not change between runs.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use socket2::{Domain, SockAddr};

/// The longest socket path: `sun_path` holds 108 bytes, the last one the terminating NUL.
pub const MAX_UNIX_PATH: usize = 107;

/// Where one upstream server listens. Cheap to clone (the path is shared), and no larger
/// than a `SocketAddr` wherever it is kept per connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UpstreamAddr {
    Tcp(SocketAddr),
    Unix(Arc<Path>),
}

impl UpstreamAddr {
    /// A `unix:PATH` server entry; `None` when `entry` is not one (then it is `HOST:PORT`).
    /// The path must be absolute (the server does not run in wsplice's working directory)
    /// and fit `sun_path`.
    pub fn parse_unix(entry: &str) -> Option<Result<UpstreamAddr, String>> {
        let path = entry.strip_prefix("unix:")?;
        let example = "e.g. \"unix:/run/chat.sock\"";
        Some(if path.is_empty() {
            Err(format!("{entry:?} has no path; write {example}"))
        } else if !path.starts_with('/') {
            Err(format!("{entry:?} must be an absolute path, {example}"))
        } else if path.contains('\0') {
            Err(format!("{entry:?}: a socket path cannot hold a NUL byte"))
        } else if path.len() > MAX_UNIX_PATH {
            Err(format!(
                "{entry:?}: the path is {} bytes; a unix socket path holds at most {MAX_UNIX_PATH}",
                path.len()
            ))
        } else {
            Ok(UpstreamAddr::Unix(Arc::from(Path::new(path))))
        })
    }

    pub fn domain(&self) -> Domain {
        match self {
            UpstreamAddr::Tcp(addr) => Domain::for_address(*addr),
            UpstreamAddr::Unix(_) => Domain::UNIX,
        }
    }

    /// The address to pass to connect(2). Cannot fail for a path the parser took.
    pub fn sock_addr(&self) -> std::io::Result<SockAddr> {
        match self {
            UpstreamAddr::Tcp(addr) => Ok(SockAddr::from(*addr)),
            UpstreamAddr::Unix(path) => SockAddr::unix(path),
        }
    }

    pub fn is_tcp(&self) -> bool {
        matches!(self, UpstreamAddr::Tcp(_))
    }
}

impl From<SocketAddr> for UpstreamAddr {
    fn from(addr: SocketAddr) -> Self {
        UpstreamAddr::Tcp(addr)
    }
}

impl fmt::Display for UpstreamAddr {
    /// As the upstream file writes it: `10.0.0.5:3000`, `[::1]:3000`, `unix:/run/chat.sock`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamAddr::Tcp(addr) => addr.fmt(f),
            UpstreamAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(entry: &str) -> Result<UpstreamAddr, String> {
        UpstreamAddr::parse_unix(entry).expect("a unix: entry")
    }

    #[test]
    fn a_unix_entry_is_an_absolute_path_that_fits_sun_path() {
        assert_eq!(
            parse("unix:/run/chat.sock").unwrap().to_string(),
            "unix:/run/chat.sock"
        );
        assert!(UpstreamAddr::parse_unix("127.0.0.1:3000").is_none());
        assert!(
            parse("unix:run/x.sock")
                .unwrap_err()
                .contains("must be an absolute path")
        );
        assert!(parse("unix:").unwrap_err().contains("has no path"));
        assert!(parse("unix:/a\0b").unwrap_err().contains("NUL"));
        let longest = format!("unix:/{}", "a".repeat(MAX_UNIX_PATH - 1));
        assert!(parse(&longest).unwrap().sock_addr().is_ok());
        let too_long = format!("unix:/{}", "a".repeat(MAX_UNIX_PATH));
        assert!(parse(&too_long).unwrap_err().contains("at most 107"));
    }

    #[test]
    fn it_is_no_larger_than_a_socket_addr() {
        // The path's Arc fits beside SocketAddr's tag: a trace holding one is no larger.
        assert!(
            std::mem::size_of::<Option<UpstreamAddr>>()
                <= std::mem::size_of::<Option<SocketAddr>>()
        );
    }
}
