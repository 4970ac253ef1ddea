//! Sans-IO HTTP/1.1: everything wsplice reads or writes of HTTP, with no I/O, so it is
//! unit-tested and fuzzed directly.

pub mod head;
pub mod path;
mod strict;
pub mod websocket;

pub use head::{
    Body, ClientInfo, HandshakeError, MAX_HEADERS, Parsed, RequestHead, ResponseHead,
    parse_request, parse_response,
};
