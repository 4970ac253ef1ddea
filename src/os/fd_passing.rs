//! Messages with descriptors attached (SCM_RIGHTS) over a Unix SOCK_SEQPACKET socket: how a
//! running wsplice hands its listeners and open tunnels to the process that replaces it.
//! A seqpacket socket keeps each message whole and its descriptors with it, so neither side
//! has to frame a byte stream or match descriptors to the bytes they came with.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Descriptors one message carries at most (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS: usize = 64;
/// Bytes one message carries at most.
pub const MAX_MESSAGE: usize = 192 * 1024;

/// A connected pair of seqpacket sockets (for tests, and a parent handing one to a child).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair(2) writes two descriptors into the array we pass.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and belong to nobody else.
    #[allow(unsafe_code)]
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Room for `MAX_FDS` descriptors in a control message, aligned as cmsghdr needs.
#[repr(C, align(8))]
struct Control([u8; 512]);

const _: () =
    assert!(std::mem::size_of::<libc::cmsghdr>() + MAX_FDS * std::mem::size_of::<RawFd>() <= 512);

/// Sends `bytes` with `fds` attached as one message (blocking).
pub fn send(socket: &impl AsRawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > MAX_FDS || bytes.len() > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "handoff message too large",
        ));
    }
    let mut control = Control([0; 512]);
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
    #[allow(unsafe_code)]
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let data = std::mem::size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE/CMSG_LEN only compute sizes; the first header lies inside
        // `control`, which holds a header and MAX_FDS descriptors (checked above).
        #[allow(unsafe_code)]
        unsafe {
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(data) as usize;
            let header = libc::CMSG_FIRSTHDR(&msg);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(data) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(header),
                data as usize,
            );
        }
    }
    let n = loop {
        // SAFETY: `msg` points at live memory only (see above).
        #[allow(unsafe_code)]
        let n = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        // A signal (SIGHUP, SIGUSR2) does not end a handoff.
        if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break n;
        }
    };
    match n {
        n if n < 0 => Err(io::Error::last_os_error()),
        n if n as usize != bytes.len() => Err(io::ErrorKind::WriteZero.into()),
        _ => Ok(()),
    }
}

/// Receives one message into `bytes` (cleared first) and its descriptors (blocking).
/// `Ok(false)`: the other side closed. A message cut short (larger than `MAX_MESSAGE`, or
/// with more descriptors than `MAX_FDS`) is an error; descriptors that came are closed.
pub fn recv(
    socket: &impl AsRawFd,
    bytes: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
) -> io::Result<bool> {
    // Received into spare capacity: zeroing MAX_MESSAGE bytes per message would cost more
    // than the message (a handoff sends one per tunnel).
    bytes.clear();
    bytes.reserve(MAX_MESSAGE);
    fds.clear();
    let mut control = Control([0; 512]);
    let mut iov = libc::iovec {
        iov_base: bytes.as_mut_ptr().cast(),
        iov_len: MAX_MESSAGE,
    };
    // SAFETY: as in `send`.
    #[allow(unsafe_code)]
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len();
    let n = loop {
        // SAFETY: `msg` points at live, writable memory of the lengths it states.
        #[allow(unsafe_code)]
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break n;
        }
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled the control buffer with well-formed headers up to
    // msg_controllen; each SCM_RIGHTS header's data is an array of descriptors now ours.
    #[allow(unsafe_code)]
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&msg);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = (*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let first = libc::CMSG_DATA(header).cast::<RawFd>();
                for i in 0..data / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(first.add(i).read_unaligned()));
                }
            }
            header = libc::CMSG_NXTHDR(&msg, header);
        }
    }
    // SAFETY: the kernel wrote `n` (at most MAX_MESSAGE, within the capacity) bytes.
    #[allow(unsafe_code)]
    unsafe {
        bytes.set_len(n as usize);
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        fds.clear();
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "handoff message cut short",
        ));
    }
    Ok(n > 0 || !fds.is_empty())
}

/// The user id of the process at the other end of a connected Unix socket (SO_PEERCRED).
pub fn peer_uid(socket: &impl AsRawFd) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn descriptors_and_bytes_arrive_together() {
        let (a, b) = seqpacket_pair().unwrap();
        let (mut left, right) = std::os::unix::net::UnixStream::pair().unwrap();
        send(&a, b"tunnel 1", &[right.as_raw_fd(), left.as_raw_fd()]).unwrap();
        send(&a, b"no descriptors", &[]).unwrap();
        drop(right);
        let (mut bytes, mut fds) = (Vec::new(), Vec::new());
        assert!(recv(&b, &mut bytes, &mut fds).unwrap());
        assert_eq!(bytes, b"tunnel 1");
        assert_eq!(fds.len(), 2);
        // The descriptor that came is the same socket: it reads what `left` writes.
        let mut moved = std::os::unix::net::UnixStream::from(fds.remove(0));
        left.write_all(b"ping").unwrap();
        let mut got = [0; 4];
        moved.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        assert!(recv(&b, &mut bytes, &mut fds).unwrap());
        assert_eq!(bytes, b"no descriptors");
        assert!(fds.is_empty());
        drop(a);
        assert!(!recv(&b, &mut bytes, &mut fds).unwrap(), "closed");
    }

    #[test]
    fn peer_is_this_user() {
        let (a, _b) = seqpacket_pair().unwrap();
        // SAFETY: geteuid cannot fail.
        #[allow(unsafe_code)]
        let me = unsafe { libc::geteuid() };
        assert_eq!(peer_uid(&a).unwrap(), me);
    }

    #[test]
    fn too_many_descriptors_are_refused_before_sending() {
        let (a, _b) = seqpacket_pair().unwrap();
        let fds = vec![a.as_raw_fd(); MAX_FDS + 1];
        assert!(send(&a, b"x", &fds).is_err());
    }
}
