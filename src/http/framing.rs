//! Where a message body ends, so that a plain exchange relays exactly one request body up
//! and one response body down: bytes after a request's body are never sent upstream, and a
//! response ends at its length even if the upstream keeps the connection open.

use super::chunked::Chunked;
use super::head::Body;

/// How much more of a body is to come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes (`Content-Length`; 0: no body).
    Length(u64),
    Chunked(Chunked),
    /// Until the sender closes (a response without a length).
    UntilClose,
}

impl Framing {
    /// Whether the whole body has gone by.
    pub fn is_done(&self) -> bool {
        match self {
            Framing::Length(left) => *left == 0,
            Framing::Chunked(c) => c.is_done(),
            Framing::UntilClose => false,
        }
    }

    /// The most bytes worth reading for this body now.
    pub fn read_limit(&self, capacity: usize) -> usize {
        match self {
            Framing::Length(left) => usize::try_from(*left).map_or(capacity, |l| l.min(capacity)),
            Framing::Chunked(_) | Framing::UntilClose => capacity,
        }
    }

    /// Takes the body's bytes from the start of `buf`: returns how many belong to it.
    /// Err: a malformed chunked body.
    pub fn take(&mut self, buf: &[u8]) -> Result<usize, &'static str> {
        match self {
            Framing::Length(left) => {
                let n = usize::try_from(*left).map_or(buf.len(), |l| l.min(buf.len()));
                *left -= n as u64;
                Ok(n)
            }
            Framing::Chunked(c) => c.feed(buf),
            Framing::UntilClose => Ok(buf.len()),
        }
    }
}

impl From<Body> for Framing {
    fn from(body: Body) -> Self {
        match body {
            Body::None => Framing::Length(0),
            Body::Length(n) => Framing::Length(n),
            Body::Chunked => Framing::Chunked(Chunked::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_takes_that_many_bytes() {
        let mut f = Framing::Length(5);
        assert_eq!(f.read_limit(16384), 5);
        assert_eq!(f.take(b"abc"), Ok(3));
        assert!(!f.is_done());
        assert_eq!(f.take(b"defgh"), Ok(2));
        assert!(f.is_done());
        assert_eq!(f.read_limit(16384), 0);
    }

    #[test]
    fn chunked_stops_at_its_end_and_until_close_never_does() {
        let mut f = Framing::from(Body::Chunked);
        assert_eq!(f.take(b"1\r\na\r\n0\r\n\r\nGET"), Ok(11));
        assert!(f.is_done());
        let mut f = Framing::UntilClose;
        assert_eq!(f.take(b"anything"), Ok(8));
        assert!(!f.is_done());
        assert_eq!(Framing::from(Body::None), Framing::Length(0));
    }
}
