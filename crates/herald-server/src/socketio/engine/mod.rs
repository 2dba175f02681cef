//! The Engine.IO 4 transport under Socket.IO: HTTP long polling, WebSocket,
//! and the upgrade from one to the other. The Socket.IO layer sees one
//! [`EioSocket`] per Engine.IO session and never which transport carries it.
#![allow(dead_code)]

use crate::AppState;
use bytes::Bytes;
use std::time::Duration;

/// The routes at `path` (both `/socket.io/` and `/socket.io`): GET/POST
/// polling, GET WebSocket upgrade.
pub(crate) fn routes(path: &str) -> axum::Router<AppState> {
    let _ = path;
    todo!()
}

/// Handed to the Socket.IO layer for each new Engine.IO session, once the
/// Engine.IO handshake (open packet) has been sent. The engine spawns
/// `crate::socketio::run(start)` on `app.node.tasks()`.
pub(crate) struct EioStart {
    /// The node's state.
    pub(crate) app: AppState,
    /// The Engine.IO session.
    pub(crate) socket: EioSocket,
    /// `Authorization: Bearer` or `?token=` of the handshake request, if any.
    pub(crate) token: Option<String>,
    /// The client's IP address, when known.
    pub(crate) remote_ip: Option<std::net::IpAddr>,
    /// Reserved at the handshake (crate::ops::reserve_socket /
    /// reserve_pending): the handshake is refused with the same HTTP errors
    /// as /ws when they cannot be taken.
    pub(crate) slot: herald_node::SocketSlot,
    /// The place among unauthenticated sockets, reserved at the handshake.
    pub(crate) pending: herald_node::PendingSlot,
}

/// What the client sent, or how the session ended.
#[derive(Debug)]
pub(crate) enum EioEvent {
    /// A message packet (type 4) from the client: its UTF-8 text without
    /// the leading `4`.
    Message(Bytes),
    /// A binary message (binary WebSocket frame, or `b`-prefixed base64 on
    /// polling).
    Binary(Bytes),
    /// The client's pong (`3`) to our ping.
    Pong,
    /// The Engine.IO session ended: close packet, transport error or close,
    /// a polling client that stopped polling (no GET for pingInterval +
    /// pingTimeout), payload over maxPayload. For logs.
    Closed(&'static str),
}

/// One Engine.IO packet to send: `head` then `tail` (e.g. `42[...` +
/// `,"<token>"]`), written without copying `head` on WebSocket (one frame,
/// vectored write).
#[derive(Debug, Clone)]
pub(crate) struct OutPacket {
    /// The packet's first bytes, starting with its type digit.
    pub(crate) head: Bytes,
    /// The rest of the packet, if any.
    pub(crate) tail: Option<Bytes>,
}

/// The Engine.IO session is gone.
#[derive(Debug)]
pub(crate) struct EioClosed;

/// One Engine.IO session, as the Socket.IO layer sees it.
pub(crate) struct EioSocket {
    _private: (),
}

impl EioSocket {
    /// The session id.
    pub(crate) fn sid(&self) -> &str {
        todo!()
    }

    /// `"polling"` or `"websocket"`, as of now.
    pub(crate) fn transport_name(&self) -> &'static str {
        todo!()
    }

    /// The next event from the client. Cancel-safe (used inside `select!`).
    /// Handles pings/upgrade internally.
    pub(crate) async fn recv(&mut self) -> EioEvent {
        todo!()
    }

    /// Sends packets, in order: one WebSocket text frame each, or queued
    /// for the next poll (batched). Returns once written to the socket /
    /// handed to a poll, or buffered within a bound of about
    /// `limits.send_queue_bytes`; waits otherwise. Err once the session is
    /// gone. Not cancel-safe, except that a caller may drop the future and
    /// then abandon the socket.
    pub(crate) async fn send(&mut self, packets: &[OutPacket]) -> Result<(), EioClosed> {
        let _ = packets;
        todo!()
    }

    /// An Engine.IO ping (`2`).
    pub(crate) async fn ping(&mut self) -> Result<(), EioClosed> {
        todo!()
    }

    /// Sends `last`, then ends the session: on WebSocket a close frame and
    /// the TCP close; on polling the packets and a close packet (`1`) to
    /// the next GET, waiting at most `timeout`, then the sid is forgotten
    /// (later requests with it get HTTP 400
    /// `{"code":1,"message":"Session ID unknown"}` as Engine.IO servers
    /// answer).
    pub(crate) async fn close(self, last: &[OutPacket], timeout: Duration) {
        let _ = (last, timeout);
        todo!()
    }
}
