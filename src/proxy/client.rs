//! The client's side of a connection before it becomes a tunnel: a plain socket, or a TLS
//! one. A TLS connection runs its handshake with rustls's unbuffered server connection, then
//! takes the traffic secrets and reads and writes through the tunnel's own record layer
//! ([`crate::tls::record`]) from the first request on, so the request phase and the tunnel
//! speak the same records and the tunnel takes over the exact state.
//!
//! Reads and writes may run at once (a request body flows up while the response flows down),
//! so the TLS state is borrowed only between awaits, never across one.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::Shutdown;
use std::ops::{Deref, Range};
use std::sync::Arc;

use rustls::server::{ServerConfig, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError};
use tokio_uring::buf::{BoundedBuf, BoundedBufMut};

use crate::tls::record::{MAX_OVERHEAD, MAX_PLAIN, MAX_RECORD, RecordError, TunnelTls};
use crate::tls::sni;
use crate::uring::stream::Stream;

/// Ciphertext read ahead: room for the largest record and the start of the next.
const INCOMING: usize = MAX_RECORD + 1024;
/// Output kept between writes; a larger one (a big head or body chunk) is freed after use.
const OUTGOING_KEEP: usize = 2 * (MAX_PLAIN + 64);

/// What the request phase reads from and writes to: a client or an upstream.
pub(crate) trait Io {
    async fn read<T: BoundedBufMut>(&self, buf: T) -> (io::Result<usize>, T);
    async fn write_all<T: BoundedBuf + Deref<Target = [u8]>>(&self, buf: T) -> (io::Result<()>, T);
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
    /// Ends the write side: FIN, after `close_notify` on TLS.
    async fn close_write(&self);
}

impl Io for Stream {
    async fn read<T: BoundedBufMut>(&self, buf: T) -> (io::Result<usize>, T) {
        Stream::read(self, buf).await
    }

    async fn write_all<T: BoundedBuf + Deref<Target = [u8]>>(&self, buf: T) -> (io::Result<()>, T) {
        Stream::write_all(self, buf).await
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        Stream::shutdown(self, how)
    }

    async fn close_write(&self) {
        let _ = Stream::shutdown(self, Shutdown::Write);
    }
}

impl Io for Client {
    async fn read<T: BoundedBufMut>(&self, buf: T) -> (io::Result<usize>, T) {
        Client::read(self, buf).await
    }

    async fn write_all<T: BoundedBuf + Deref<Target = [u8]>>(&self, buf: T) -> (io::Result<()>, T) {
        Client::write_all(self, buf).await
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        Client::shutdown(self, how)
    }

    async fn close_write(&self) {
        Client::close_write(self).await;
    }
}

/// A client connection in its request phase.
#[derive(Debug)]
pub struct Client {
    stream: Stream,
    tls: Option<Box<Tls>>,
}

/// The TLS side of a client connection.
struct Tls {
    records: RefCell<TunnelTls>,
    incoming: RefCell<Incoming>,
    outgoing: Cell<Vec<u8>>,
    /// The server name the client asked for (lower case), if any.
    sni: Option<Box<str>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("sni", &self.sni).finish()
    }
}

/// Received ciphertext and what was opened of it: `buf[plain]` is application data not yet
/// read, `buf[tail]` the start of records not yet opened (`tail.end == buf.len()`).
struct Incoming {
    buf: Vec<u8>,
    plain: Range<usize>,
    tail: Range<usize>,
    closed: bool,
}

/// A finished TLS handshake, for [`Client::tls`].
#[derive(Debug)]
pub struct Handshaken(Box<Tls>);

/// What a TLS client connection hands to its tunnel.
pub struct Handover {
    pub records: TunnelTls,
    /// Application data already opened but not yet read (it goes up before the tunnel opens).
    pub plain: Vec<u8>,
    /// The start of a record still arriving.
    pub tail: Vec<u8>,
}

/// Why a TLS handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeFailure {
    /// The first bytes are a plain HTTP request, not a TLS record.
    #[error("a plain HTTP request on a TLS port")]
    PlainHttp,
    #[error("the client closed during the TLS handshake")]
    Closed,
    #[error("TLS handshake failed: {0}")]
    Tls(rustls::Error),
    #[error("TLS handshake: {0}")]
    Io(io::Error),
    #[error("TLS handshake: {0}")]
    Records(RecordError),
}

impl Client {
    pub fn plain(stream: Stream) -> Self {
        Client { stream, tls: None }
    }

    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The server name a TLS client asked for.
    pub fn sni(&self) -> Option<&str> {
        self.tls.as_ref().and_then(|t| t.sni.as_deref())
    }

    /// Runs a TLS handshake on `stream`. On failure the caller answers (a plain HTTP
    /// request gets a plain `400`) and closes; a TLS alert, if rustls had one, has been sent.
    /// `early`: bytes already read from the connection (after a PROXY header), the start
    /// of the handshake.
    pub async fn accept_tls(
        stream: &Stream,
        config: Arc<ServerConfig>,
        early: &[u8],
    ) -> Result<Handshaken, HandshakeFailure> {
        let tls = handshake(stream, config, early).await?;
        Ok(Handshaken(Box::new(tls)))
    }

    /// A TLS client connection whose handshake is done.
    pub fn tls(stream: Stream, done: Handshaken) -> Self {
        Client {
            stream,
            tls: Some(done.0),
        }
    }

    /// Reads some application data into `buf` at its start, like [`Stream::read`].
    /// `Ok(0)`: end of stream (FIN or `close_notify`).
    pub async fn read<T: BoundedBufMut>(&self, buf: T) -> (io::Result<usize>, T) {
        match &self.tls {
            None => self.stream.read(buf).await,
            Some(tls) => tls.read(&self.stream, buf).await,
        }
    }

    /// Writes all of `buf`'s initialized bytes, like [`Stream::write_all`].
    pub async fn write_all<T: BoundedBuf + Deref<Target = [u8]>>(
        &self,
        buf: T,
    ) -> (io::Result<()>, T) {
        match &self.tls {
            None => self.stream.write_all(buf).await,
            Some(tls) => {
                let res = tls.write_all(&self.stream, &buf).await;
                (res, buf)
            }
        }
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.stream.shutdown(how)
    }

    /// Ends the write side: `close_notify` first on TLS, then FIN.
    pub async fn close_write(&self) {
        if let Some(tls) = &self.tls {
            let mut out = tls.outgoing.take();
            out.clear();
            out.resize(MAX_OVERHEAD + 2, 0);
            let sealed = tls.records.borrow_mut().seal_close_notify(&mut out);
            if let Ok(n) = sealed {
                out.truncate(n);
                let (_, out) = self.stream.write_all(out).await;
                tls.outgoing.set(out);
            }
        }
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// The socket and, for TLS, the record state the tunnel goes on with.
    pub fn into_parts(self) -> (Stream, Option<Handover>) {
        let Some(tls) = self.tls else {
            return (self.stream, None);
        };
        let Tls {
            records, incoming, ..
        } = *tls;
        let incoming = incoming.into_inner();
        let handover = Handover {
            records: records.into_inner(),
            plain: incoming.buf[incoming.plain].to_vec(),
            tail: incoming.buf[incoming.tail].to_vec(),
        };
        (self.stream, Some(handover))
    }
}

impl Tls {
    async fn read<T: BoundedBufMut>(&self, stream: &Stream, mut dst: T) -> (io::Result<usize>, T) {
        loop {
            let want_more = {
                let mut inc = self.incoming.borrow_mut();
                if !inc.plain.is_empty() {
                    let n = inc.plain.len().min(dst.bytes_total());
                    let start = inc.plain.start;
                    dst.put_slice(&inc.buf[start..start + n]);
                    inc.plain.start += n;
                    return (Ok(n), dst);
                }
                if inc.closed {
                    return (Ok(0), dst);
                }
                if !inc.tail.is_empty() {
                    let tail = inc.tail.clone();
                    let opened = self.records.borrow_mut().open(&mut inc.buf[tail.clone()]);
                    match opened {
                        Ok(o) => {
                            inc.plain = tail.start..tail.start + o.plain;
                            inc.tail = tail.start + o.consumed..tail.end;
                            inc.closed = o.closed;
                        }
                        Err(e) => {
                            return (Err(io::Error::new(io::ErrorKind::InvalidData, e)), dst);
                        }
                    }
                }
                inc.plain.is_empty() && !inc.closed
            };
            if !want_more {
                continue;
            }
            // Only the start of a record is left: move it to the front and read on.
            let mut buf = {
                let mut inc = self.incoming.borrow_mut();
                let tail = inc.tail.clone();
                inc.buf.copy_within(tail.clone(), 0);
                inc.buf.truncate(tail.len());
                inc.tail = 0..tail.len();
                inc.plain = 0..0;
                std::mem::take(&mut inc.buf)
            };
            let filled = buf.len();
            let (res, slice) = stream.read(buf.slice(filled..INCOMING)).await;
            buf = slice.into_inner();
            let mut inc = self.incoming.borrow_mut();
            inc.tail = 0..buf.len();
            inc.buf = buf;
            match res {
                // A FIN without close_notify ends the stream too (as browsers and nginx treat it).
                Ok(0) => return (Ok(0), dst),
                Ok(_) => {}
                Err(e) => return (Err(e), dst),
            }
        }
    }

    async fn write_all(&self, stream: &Stream, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut out = self.outgoing.take();
        out.clear();
        {
            let mut records = self.records.borrow_mut();
            for chunk in data.chunks(MAX_PLAIN) {
                let at = out.len();
                let prefix = records.prefix();
                out.resize(at + prefix + chunk.len() + MAX_OVERHEAD, 0);
                out[at + prefix..at + prefix + chunk.len()].copy_from_slice(chunk);
                match records.seal(&mut out[at..], chunk.len()) {
                    Ok(n) => out.truncate(at + n),
                    Err(e) => {
                        self.outgoing.set(out);
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                }
            }
        }
        let (res, mut out) = stream.write_all(out).await;
        if out.capacity() > OUTGOING_KEEP {
            out = Vec::new();
        }
        self.outgoing.set(out);
        res
    }
}

/// Drives rustls through the handshake, then takes the secrets for the record layer.
async fn handshake(
    stream: &Stream,
    config: Arc<ServerConfig>,
    early_bytes: &[u8],
) -> Result<Tls, HandshakeFailure> {
    let mut conn = UnbufferedServerConnection::new(config).map_err(HandshakeFailure::Tls)?;
    let mut incoming: Vec<u8> = Vec::with_capacity(INCOMING);
    if early_bytes.len() > INCOMING {
        return Err(HandshakeFailure::Records(RecordError::Oversized));
    }
    incoming.extend_from_slice(early_bytes);
    let mut outgoing: Vec<u8> = Vec::with_capacity(4096);
    let mut early: Vec<u8> = Vec::new();
    // A name left over from a handshake this thread drove before is not this one's.
    let _ = sni::take_seen_name();
    let mut sni: Option<Box<str>> = None;
    let mut checked = false;
    let mut failed: Option<rustls::Error> = None;
    loop {
        // Before rustls takes the bytes in: an HTTP method starts with a letter, a TLS
        // connection with a handshake record (22).
        if !incoming.is_empty() && !checked {
            checked = true;
            if incoming[0].is_ascii_uppercase() {
                return Err(HandshakeFailure::PlainHttp);
            }
        }
        let status = conn.process_tls_records(&mut incoming);
        if sni.is_none() {
            sni = sni::take_seen_name();
        }
        let discard = status.discard;
        let mut read_more = false;
        let mut transmit = false;
        let mut done = false;
        match status.state {
            Err(e) => {
                // rustls queued an alert: the next round encodes it, then this fails.
                if failed.is_some() {
                    return Err(HandshakeFailure::Tls(e));
                }
                failed = Some(e);
                // The bytes that failed are not offered again: rustls would fail on them a
                // second time, and a second fatal alert is a panic in rustls
                // (`assert!(!self.sent_fatal_alert)`), which aborts the process. On no
                // input, the next round encodes the alert already queued.
                incoming.clear();
                continue;
            }
            Ok(ConnectionState::EncodeTlsData(mut state)) => loop {
                let at = outgoing.len();
                outgoing.resize(outgoing.capacity().max(at + 1024), 0);
                match state.encode(&mut outgoing[at..]) {
                    Ok(n) => {
                        outgoing.truncate(at + n);
                        break;
                    }
                    Err(EncodeError::InsufficientSize(s)) => {
                        outgoing.truncate(at);
                        outgoing.reserve(s.required_size);
                    }
                    Err(EncodeError::AlreadyEncoded) => {
                        outgoing.truncate(at);
                        break;
                    }
                }
            },
            Ok(ConnectionState::TransmitTlsData(state)) => {
                state.done();
                transmit = true;
            }
            Ok(ConnectionState::BlockedHandshake) => read_more = true,
            Ok(ConnectionState::ReadTraffic(mut state)) => {
                // The client's first request came with its Finished.
                while let Some(record) = state.next_record() {
                    let record = record.map_err(HandshakeFailure::Tls)?;
                    early.extend_from_slice(record.payload);
                }
            }
            Ok(ConnectionState::WriteTraffic(_)) => done = true,
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                return Err(HandshakeFailure::Closed);
            }
            Ok(_) => return Err(HandshakeFailure::Closed),
        }
        incoming.drain(..discard);
        if transmit && !outgoing.is_empty() {
            let (res, out) = stream.write_all(std::mem::take(&mut outgoing)).await;
            outgoing = out;
            outgoing.clear();
            res.map_err(HandshakeFailure::Io)?;
            if let Some(e) = failed.take() {
                return Err(HandshakeFailure::Tls(e));
            }
        }
        if done {
            break;
        }
        if read_more {
            if let Some(e) = failed.take() {
                return Err(HandshakeFailure::Tls(e));
            }
            let filled = incoming.len();
            if filled == INCOMING {
                return Err(HandshakeFailure::Tls(rustls::Error::General(
                    "ClientHello too large".into(),
                )));
            }
            let (res, slice) = stream.read(incoming.slice(filled..INCOMING)).await;
            incoming = slice.into_inner();
            match res {
                Ok(0) => return Err(HandshakeFailure::Closed),
                Ok(_) => {}
                Err(e) => return Err(HandshakeFailure::Io(e)),
            }
        }
    }
    let (secrets, kernel) = conn
        .dangerous_into_kernel_connection()
        .map_err(HandshakeFailure::Tls)?;
    let records = TunnelTls::new(secrets, kernel).map_err(HandshakeFailure::Records)?;
    // Records after the handshake's were not opened by rustls: they go to the record layer,
    // after the application data rustls already opened.
    let tail_len = incoming.len();
    let mut buf = Vec::with_capacity(INCOMING.max(early.len() + tail_len));
    buf.extend_from_slice(&early);
    buf.extend_from_slice(&incoming);
    let plain = 0..early.len();
    Ok(Tls {
        records: RefCell::new(records),
        incoming: RefCell::new(Incoming {
            tail: plain.end..plain.end + tail_len,
            plain,
            buf,
            closed: false,
        }),
        outgoing: Cell::new(Vec::new()),
        sni,
    })
}
