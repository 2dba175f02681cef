//! Socket.IO v4 wire formats, without any I/O: Engine.IO protocol 4
//! packets and long-polling payloads ([`engineio`]), Socket.IO protocol 5
//! packets ([`packet`]), the CONNECT packet's auth payload ([`connect`]) and
//! the [`herald_protocol::ClientCodec`] that maps Herald's protocol onto
//! Socket.IO events and acknowledgements ([`codec`]).
//!
//! The server crate carries these over HTTP long polling and WebSocket
//! (`herald-server`'s `socketio` module); everything here is pure and
//! unit-tested on bytes.

pub mod codec;
pub mod connect;
pub mod engineio;
pub mod packet;
