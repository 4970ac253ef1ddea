//! Sans-IO HTTP/1.1: everything wsplice reads or writes of HTTP, with no I/O, so it is
//! unit-tested and fuzzed directly.

pub mod chunked;
pub mod forwarded;
pub mod framing;
pub mod head;
pub mod host;
pub mod lookup;
pub mod origin;
pub mod path;
pub mod proxy_protocol;
pub mod scan;
mod strict;
pub mod websocket;

pub use framing::Framing;
pub use head::{
    Body, ClientInfo, HandshakeError, MAX_HEADERS, Parsed, RequestHead, ResponseHead,
    parse_request, parse_response,
};
pub use scan::HeadScan;
