//! The handoff's messages, one per seqpacket message (see `os::fd_passing`). The new process
//! speaks first with its format version, so an old process that reads another version
//! refuses before it gives anything away.
//!
//! ```text
//! new -> old  Hello { version, pid }
//! old -> new  Refuse { reason }                      (and closes), or
//! old -> new  Listener { addr } + its socket          (one per listening socket)
//! old -> new  Listeners { pid }                       (that was all of them)
//! new -> old  Ready                                   (it serves; the old stops accepting)
//! old -> new  Held { direction, bytes } ...           (held bytes that do not fit the next
//!                                                     tunnel's message, in parts)
//! old -> new  Tunnel + its descriptors                (one per plain tunnel)
//! old -> new  Done { tunnels }
//! ```

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use crate::os::fd_passing;
use crate::tunnel::Detached;
use crate::tunnel::fields::{Malformed, Reader, Writer};

/// The format this build speaks. Bump it whenever a message or the tunnel entry changes.
pub const VERSION: u32 = 2;
const MAGIC: &[u8] = b"wsplice-handoff";

pub enum Message {
    Hello { version: u32, pid: u32 },
    Refuse { reason: String },
    Listener { addr: SocketAddr, socket: OwnedFd },
    Listeners { pid: u32 },
    Ready,
    Tunnel(Detached<Vec<u8>>),
    Done { tunnels: u64 },
}

const HELLO: u8 = 1;
const REFUSE: u8 = 2;
const LISTENER: u8 = 3;
const LISTENERS: u8 = 4;
const READY: u8 = 5;
const TUNNEL: u8 = 6;
const DONE: u8 = 7;
const HELD: u8 = 8;

/// Sends `message` on `socket` (blocking): a tunnel's held bytes that do not fit its own
/// message go in `Held` parts first.
pub fn send(socket: &impl AsRawFd, message: &Message) -> io::Result<()> {
    if let Message::Tunnel(tunnel) = message {
        for (d, part) in tunnel.held_parts() {
            let mut bytes = Vec::with_capacity(part.len() + 8);
            Writer(&mut bytes).u8(HELD).u8(d as u8).bytes(part);
            fd_passing::send(socket, &bytes, &[])?;
        }
    }
    let mut bytes = Vec::new();
    let mut fds = Vec::new();
    let mut w = Writer(&mut bytes);
    match message {
        Message::Hello { version, pid } => {
            w.u8(HELLO).bytes(MAGIC).u32(*version).u32(*pid);
        }
        Message::Refuse { reason } => {
            w.u8(REFUSE).str(reason);
        }
        Message::Listener { addr, socket } => {
            w.u8(LISTENER).str(&addr.to_string());
            fds.push(socket.as_raw_fd());
        }
        Message::Listeners { pid } => {
            w.u8(LISTENERS).u32(*pid);
        }
        Message::Ready => {
            w.u8(READY);
        }
        Message::Tunnel(tunnel) => {
            w.u8(TUNNEL);
            fds = tunnel.encode(&mut bytes);
        }
        Message::Done { tunnels } => {
            w.u8(DONE).u64(*tunnels);
        }
    }
    fd_passing::send(socket, &bytes, &fds)
}

/// Receives the next message (blocking) into `bytes`, a buffer kept across calls; `None`
/// once the other side closed. A tunnel comes with the held parts sent before it.
pub fn recv(socket: &impl AsRawFd, bytes: &mut Vec<u8>) -> io::Result<Option<Message>> {
    let mut earlier = [Vec::new(), Vec::new()];
    loop {
        let mut fds = Vec::new();
        if !fd_passing::recv(socket, bytes, &mut fds)? {
            return Ok(None);
        }
        match decode(bytes, fds, &mut earlier) {
            Ok(Some(message)) => return Ok(Some(message)),
            Ok(None) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

/// One message; `None` for a held part, added to `earlier`.
fn decode(
    bytes: &[u8],
    mut fds: Vec<OwnedFd>,
    earlier: &mut [Vec<u8>; 2],
) -> Result<Option<Message>, Malformed> {
    let mut r = Reader(bytes);
    let kind = r.u8()?;
    if kind == HELD {
        let d = usize::from(r.u8()?);
        let part = r.bytes()?;
        r.end()?;
        let held = earlier.get_mut(d).ok_or(Malformed("direction"))?;
        if !fds.is_empty() {
            return Err(Malformed("descriptors with held bytes"));
        }
        held.extend_from_slice(part);
        return Ok(None);
    }
    if kind != TUNNEL && earlier.iter().any(|h| !h.is_empty()) {
        return Err(Malformed("held bytes without their tunnel"));
    }
    let message = match kind {
        HELLO => {
            if r.bytes()? != MAGIC {
                return Err(Malformed("not a wsplice handoff"));
            }
            Message::Hello {
                version: r.u32()?,
                pid: r.u32()?,
            }
        }
        REFUSE => Message::Refuse {
            reason: r.str()?.to_string(),
        },
        LISTENER => Message::Listener {
            addr: r.str()?.parse().map_err(|_| Malformed("listen address"))?,
            socket: fds.pop().ok_or(Malformed("listening socket missing"))?,
        },
        LISTENERS => Message::Listeners { pid: r.u32()? },
        READY => Message::Ready,
        TUNNEL => {
            return Detached::decode(r.0, fds, earlier).map(|t| Some(Message::Tunnel(t)));
        }
        DONE => Message::Done { tunnels: r.u64()? },
        _ => return Err(Malformed("unknown message")),
    };
    r.end()?;
    if !fds.is_empty() {
        return Err(Malformed("descriptors left over"));
    }
    Ok(Some(message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::fd_passing::seqpacket_pair;

    #[test]
    fn messages_arrive_as_sent() {
        let (a, b) = seqpacket_pair().unwrap();
        let mut buf = Vec::new();
        let pid = std::process::id();
        send(
            &a,
            &Message::Hello {
                version: VERSION,
                pid,
            },
        )
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let socket = OwnedFd::from(listener);
        send(&a, &Message::Listener { addr, socket }).unwrap();
        send(&a, &Message::Done { tunnels: 1000 }).unwrap();
        drop(a);
        match recv(&b, &mut buf).unwrap() {
            Some(Message::Hello { version, pid: p }) => assert_eq!((version, p), (VERSION, pid)),
            _ => panic!("not the hello"),
        }
        match recv(&b, &mut buf).unwrap() {
            Some(Message::Listener { addr: got, socket }) => {
                assert_eq!(got, addr);
                // The same listening socket, open here.
                let listener = std::net::TcpListener::from(socket);
                assert_eq!(listener.local_addr().unwrap(), addr);
            }
            _ => panic!("not the listener"),
        }
        assert!(matches!(
            recv(&b, &mut buf).unwrap(),
            Some(Message::Done { tunnels: 1000 })
        ));
        assert!(recv(&b, &mut buf).unwrap().is_none());
    }

    #[test]
    fn held_bytes_larger_than_a_message_come_whole_and_in_order() {
        use crate::tunnel::DetachedDirection;
        let (a, b) = seqpacket_pair().unwrap();
        let (x, y) = seqpacket_pair().unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let small = b"just this".to_vec();
        let tunnel = Detached {
            fds: [x, y],
            dirs: [
                DetachedDirection {
                    bytes: 1,
                    held: big.clone(),
                    ..DetachedDirection::default()
                },
                DetachedDirection {
                    bytes: 2,
                    held: small.clone(),
                    ..DetachedDirection::default()
                },
            ],
            quiet: 3,
            payload: b"route".to_vec(),
        };
        assert_eq!(tunnel.held_parts().count(), 4, "236 KiB before the message");
        // More than the socket buffers hold: sent while the other end reads.
        let sender = std::thread::spawn(move || {
            send(&a, &Message::Tunnel(tunnel)).unwrap();
            send(&a, &Message::Done { tunnels: 1 }).unwrap();
            a
        });
        let mut buf = Vec::new();
        match recv(&b, &mut buf).unwrap() {
            Some(Message::Tunnel(t)) => {
                assert!(t.dirs[0].held == big, "the big held bytes differ");
                assert_eq!(t.dirs[1].held, small);
                assert_eq!((t.dirs[0].bytes, t.dirs[1].bytes, t.quiet), (1, 2, 3));
                assert_eq!(t.payload, b"route");
            }
            _ => panic!("not the tunnel"),
        }
        assert!(matches!(
            recv(&b, &mut buf).unwrap(),
            Some(Message::Done { tunnels: 1 })
        ));
        let a = sender.join().unwrap();
        // A part with no tunnel after it is refused.
        let mut part = Vec::new();
        Writer(&mut part).u8(HELD).u8(0).bytes(b"orphan");
        fd_passing::send(&a, &part, &[]).unwrap();
        send(&a, &Message::Ready).unwrap();
        assert!(recv(&b, &mut buf).is_err());
    }

    #[test]
    fn anything_but_a_handoff_is_malformed() {
        let (a, b) = seqpacket_pair().unwrap();
        let mut buf = Vec::new();
        fd_passing::send(&a, b"\x01GET / HTTP/1.1", &[]).unwrap();
        fd_passing::send(&a, b"\x09", &[]).unwrap();
        fd_passing::send(&a, b"\x05extra", &[]).unwrap();
        for _ in 0..3 {
            let err = recv(&b, &mut buf).err().expect("refused");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        }
    }
}
