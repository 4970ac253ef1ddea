//! TLS termination: the ClientHello's server name, and the record layer an open `wss://`
//! tunnel runs in place in the relay's buffers once rustls has done the handshake.

pub mod hello;
pub mod record;
