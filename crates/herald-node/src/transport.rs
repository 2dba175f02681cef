//! What a transport can do, declared once per transport and read by the
//! node instead of a `match` on a closed list of kinds.
//!
//! A transport (a module in the server crate) declares one `static`
//! [`Transport`] and passes it to [`crate::Node::open_session`]; the node
//! keeps `&'static Transport` on each connection. The built-in ones are
//! [`Transport::WEBSOCKET`], [`Transport::SSE`] and [`Transport::SOCKETIO`].

/// How frames reach the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// One long-lived stream (a WebSocket, an SSE response): frames are
    /// written as they are queued.
    Streaming,
    /// Requests the client repeats (Engine.IO long polling): queued frames
    /// wait for the next poll.
    Polling,
}

/// A transport's name and capabilities.
#[derive(Debug, PartialEq, Eq)]
pub struct Transport {
    /// Name shown by the connections API and stored in the cluster
    /// registry, e.g. `websocket`.
    pub name: &'static str,
    /// Whether the client can send frames on it (SSE is receive-only).
    /// Only bidirectional connections can answer pings, so only they are
    /// pinged and cut when silent (4014).
    pub bidirectional: bool,
    /// Whether it carries binary frames (needed by binary codecs).
    pub binary: bool,
    /// Streaming or polling.
    pub delivery: Delivery,
}

impl Transport {
    /// WebSocket (PROTOCOL.md 3).
    pub const WEBSOCKET: Transport = Transport {
        name: "websocket",
        bidirectional: true,
        binary: true,
        delivery: Delivery::Streaming,
    };

    /// Server-Sent Events: receive-only, text only.
    pub const SSE: Transport = Transport {
        name: "sse",
        bidirectional: false,
        binary: false,
        delivery: Delivery::Streaming,
    };

    /// Socket.IO v4 (docs/protocol.md 8): Engine.IO long polling or
    /// WebSocket underneath, text frames in the Socket.IO codec. The
    /// Socket.IO layer drains the queue itself (there is no socket to write
    /// to while a polling client is between two requests).
    pub const SOCKETIO: Transport = Transport {
        name: "socketio",
        bidirectional: true,
        binary: false,
        delivery: Delivery::Polling,
    };

    /// Whether the node pings connections of this transport and closes
    /// them when the client stays silent: only a client that can send can
    /// answer. A receive-only transport keeps proxies awake itself (SSE
    /// comments), and a dead reader is found by failing writes or an
    /// overflowing queue.
    pub fn heartbeats(&self) -> bool {
        self.bidirectional
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bidirectional_transports_are_pinged() {
        assert!(Transport::WEBSOCKET.heartbeats());
        assert!(!Transport::SSE.heartbeats());
        assert!(Transport::SOCKETIO.heartbeats());
    }
}
