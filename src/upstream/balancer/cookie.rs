//! `sticky_cookie`: a client that has the cookie goes back to the server it names while that
//! server is up (HAProxy `cookie NAME insert`, nginx's `sticky cookie`); one without a valid
//! cookie is balanced and told which server it got.
//!
//! A server's id is the stable hash of the group name and the server's address
//! (`chat/10.0.0.5:3000`), as 16 hex digits: the same in every process and after every
//! reload or restart while the server stays in the group, without a secret to keep or share
//! between instances, and not the address itself. It hides the address from casual reading,
//! not from a search over every address and port (a keyed hash would, at the cost of a key
//! to manage). The `Set-Cookie` lines are built when the table is, so a response copies one
//! ready line.

use std::sync::Arc;

use super::stable_hash::StableHasher;
use crate::http::lookup::cookie;
use crate::upstream::addr::UpstreamAddr;

/// A group's sticky cookie: its name, each server's id, and each server's `Set-Cookie`.
#[derive(Debug)]
pub struct Sticky {
    name: String,
    ids: Vec<u64>,
    /// `Set-Cookie: NAME=ID; Path=/; HttpOnly` and CRLF, by server: [plain, with `; Secure`
    /// for clients on a TLS listener, whose browsers then send it over https only].
    lines: Vec<[Arc<[u8]>; 2]>,
}

impl Sticky {
    pub fn new(name: &str, group: &str, servers: &[UpstreamAddr]) -> Self {
        let ids: Vec<u64> = servers.iter().map(|a| server_id(group, a)).collect();
        let lines = ids
            .iter()
            .map(|id| {
                let line = format!("Set-Cookie: {name}={id:016x}; Path=/; HttpOnly");
                [
                    Arc::from(format!("{line}\r\n").as_bytes()),
                    Arc::from(format!("{line}; Secure\r\n").as_bytes()),
                ]
            })
            .collect();
        Sticky {
            name: name.to_string(),
            ids,
            lines,
        }
    }

    /// The server id the request's cookie carries, if it is well formed (whether it names a
    /// server of this group is decided at pick time, against the table then in use).
    pub fn requested(&self, headers: &[httparse::Header<'_>]) -> Option<u64> {
        let value = cookie(headers, self.name.as_bytes())?;
        if value.len() != 16 || !value.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        std::str::from_utf8(value)
            .ok()
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
    }

    /// The server with id `id`.
    pub fn server(&self, id: u64) -> Option<usize> {
        self.ids.iter().position(|&s| s == id)
    }

    /// The `Set-Cookie` line (CRLF included) naming server `index`.
    /// Server `index`'s `Set-Cookie` line; `secure` for a client that came over https.
    pub fn line(&self, index: usize, secure: bool) -> &Arc<[u8]> {
        &self.lines[index][usize::from(secure)]
    }
}

/// The id of server `addr` in group `group`.
/// A unix socket's text is `unix:PATH`, which no `HOST:PORT` can be.
pub fn server_id(group: &str, addr: &UpstreamAddr) -> u64 {
    StableHasher::default()
        .write(group.as_bytes())
        .write(b"/")
        .write(addr.to_string().as_bytes())
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> UpstreamAddr {
        std::net::SocketAddr::from(([10, 0, 0, 5], port)).into()
    }

    #[test]
    fn ids_are_stable_opaque_and_per_group() {
        let id = server_id("chat", &addr(3000));
        assert_eq!(id, server_id("chat", &addr(3000)));
        assert_ne!(id, server_id("chat", &addr(3001)));
        assert_ne!(id, server_id("other", &addr(3000)));
        let unix = UpstreamAddr::parse_unix("unix:/run/chat.sock")
            .unwrap()
            .unwrap();
        assert_eq!(server_id("chat", &unix), server_id("chat", &unix.clone()));
        assert_ne!(server_id("chat", &unix), id);
        // Reordering the servers or adding one does not change an id.
        let a = Sticky::new("srv", "chat", &[addr(1), addr(2)]);
        let b = Sticky::new("srv", "chat", &[addr(3), addr(2), addr(1)]);
        assert_eq!(a.ids[0], b.ids[2]);
        assert_eq!(a.ids[1], b.ids[1]);
        let line = String::from_utf8(a.line(0, false).to_vec()).unwrap();
        assert_eq!(
            line,
            format!("Set-Cookie: srv={:016x}; Path=/; HttpOnly\r\n", a.ids[0])
        );
        assert!(!line.contains("10.0.0.5") && !line.contains(":1"), "{line}");
    }

    #[test]
    fn only_a_well_formed_cookie_names_a_server() {
        let sticky = Sticky::new("srv", "chat", &[addr(1), addr(2)]);
        let value = format!("{:016x}", sticky.ids[1]);
        let header = |v: &str| {
            let cookie = format!("a=b; srv={v}");
            let fields = [httparse::Header {
                name: "Cookie",
                value: cookie.as_bytes(),
            }];
            sticky.requested(&fields)
        };
        assert_eq!(header(&value), Some(sticky.ids[1]));
        assert_eq!(sticky.server(sticky.ids[1]), Some(1));
        assert_eq!(header(&value.to_uppercase()), None);
        assert_eq!(header(&value[1..]), None);
        assert_eq!(header("zzzzzzzzzzzzzzzz"), None);
        assert_eq!(sticky.server(0), None);
    }
}
