//! One client connection as the node sees it, whatever its transport.

use crate::filter::EventFilter;
use crate::queue::{Outbound, PushResult, SendQueue};
use crate::transport::Transport;
use bytes::Bytes;
use herald_core::{ConnectionRecord, Identity, RoomName, Tenant};
use herald_protocol::{ClientCodec, CloseCode, Disconnect, ServerFrame};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A connection as listed by the connections API.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionInfo {
    /// Connection id.
    pub connection_id: String,
    /// Node holding it.
    pub node_id: String,
    /// The transport's name (`websocket`, `sse`); a name from another
    /// node's registry record is shown as it is.
    pub transport: Cow<'static, str>,
    /// Joined rooms.
    pub rooms: Vec<String>,
    /// When it connected, ms since the Unix epoch.
    pub connected_at: u64,
}

impl ConnectionInfo {
    /// A connection as another node registered it. The transport is kept
    /// as named: one this node does not know (a newer node's) is not
    /// mistaken for one it does.
    pub fn from_record(record: ConnectionRecord) -> Self {
        Self {
            transport: record.transport.into(),
            connection_id: record.connection_id,
            node_id: record.node_id,
            rooms: record.rooms,
            connected_at: record.connected_at,
        }
    }
}

/// State of one connection shared between its session, its writer, fan-out
/// and housekeeping.
#[derive(Debug)]
pub struct Connection {
    /// Unique id, sent to the client in `authenticated`.
    pub id: Arc<str>,
    /// The token's `sub`.
    pub user_id: Arc<str>,
    /// The token's tenant.
    pub tenant: Tenant,
    /// How the client is connected, and what that transport can do.
    pub transport: &'static Transport,
    /// How its frames are encoded.
    pub codec: &'static dyn ClientCodec,
    /// When it connected, ms since the Unix epoch.
    pub connected_at_ms: u64,
    /// Outbound frames.
    pub queue: SendQueue,
    filter: RwLock<EventFilter>,
    /// True while the filter is the initial `*`: fan-out then skips the
    /// filter's lock and glob match for this connection.
    wants_all: AtomicBool,
    rooms: Mutex<BTreeSet<RoomName>>,
    identity: RwLock<Arc<Identity>>,
    /// Node-clock ms when the client was last heard from.
    last_seen_ms: AtomicU64,
    /// Node-clock ms when the next ping is due.
    next_ping_ms: AtomicU64,
    /// Token expiry in seconds since the Unix epoch, 0 when none.
    expires_at: AtomicU64,
    epoch: Instant,
}

impl Connection {
    pub(crate) fn new(
        id: String,
        identity: Identity,
        transport: &'static Transport,
        codec: &'static dyn ClientCodec,
        queue: SendQueue,
        clock: Instant,
        connected_at_ms: u64,
    ) -> Self {
        let now = clock.elapsed().as_millis() as u64;
        Self {
            id: Arc::from(id),
            user_id: Arc::from(identity.user_id.as_str()),
            tenant: Tenant::from_option(identity.tenant.as_deref()),
            transport,
            codec,
            connected_at_ms,
            queue,
            filter: RwLock::new(EventFilter::default()),
            wants_all: AtomicBool::new(true),
            rooms: Mutex::new(BTreeSet::new()),
            expires_at: AtomicU64::new(identity.expires_at.unwrap_or(0)),
            identity: RwLock::new(Arc::new(identity)),
            last_seen_ms: AtomicU64::new(now),
            next_ping_ms: AtomicU64::new(u64::MAX),
            epoch: clock,
        }
    }

    /// Queues a control frame, written at once when the socket takes it. A
    /// full queue cuts the connection (4011).
    pub fn send(&self, bytes: Bytes) {
        self.send_item(Outbound::control(bytes));
    }

    /// Queues a whole WebSocket frame (a pong), written at once when the
    /// socket takes it. A full queue first sheds what its namespaces let go,
    /// as for [`Self::send`], and otherwise cuts the connection (4011).
    pub fn send_raw(&self, frame: Bytes) {
        self.send_item(Outbound::Raw(frame));
    }

    /// Queues an item as [`Self::send`] does.
    pub(crate) fn send_item(&self, frame: Outbound) {
        // A reply must not cut a client whose queue holds events its
        // namespaces let go (`overflow = "drop"` / `"conflate"`).
        if self.queue.push_shedding(frame, self.codec) == PushResult::Overflow {
            self.close(CloseCode::SlowConsumer);
        }
    }

    /// Encodes `frame` with this connection's codec.
    pub fn encode(&self, frame: &ServerFrame) -> Bytes {
        self.codec.encode(frame)
    }

    /// Queues `frame`, encoded with this connection's codec ([`Self::send`]).
    pub fn reply(&self, frame: &ServerFrame) {
        self.send(self.encode(frame));
    }

    /// The `disconnect` frame sent before closing with `code`.
    pub fn disconnect_frame(&self, code: CloseCode) -> Bytes {
        disconnect_frame(self.codec, code)
    }

    /// Starts closing with `code`; the writer sends `disconnect`, then the
    /// close. Returns false when already closing.
    pub fn close(&self, code: CloseCode) -> bool {
        let first = self.queue.close(code);
        if first && code == CloseCode::SlowConsumer {
            crate::metrics::send_queue_overflow();
        }
        first
    }

    /// Records that the client was heard from (any frame or pong).
    pub fn touch(&self) {
        self.last_seen_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    pub(crate) fn silent_for_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_seen_ms.load(Ordering::Relaxed))
    }

    /// Whether a ping is due: every `interval_ms`, the first after a random
    /// part of it. Clients that connected together (a deploy, a reconnect
    /// storm) would otherwise all be pinged in the same housekeeping tick,
    /// tens of thousands of writes at once, every interval.
    pub(crate) fn ping_due(&self, now_ms: u64, interval_ms: u64) -> bool {
        let interval_ms = interval_ms.max(1);
        let mut next = self.next_ping_ms.load(Ordering::Relaxed);
        if next == u64::MAX {
            next = now_ms + 1 + rand::random::<u64>() % interval_ms;
            self.next_ping_ms.store(next, Ordering::Relaxed);
        }
        if now_ms >= next {
            self.next_ping_ms
                .store(now_ms + interval_ms, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    pub(crate) fn expires_at(&self) -> Option<u64> {
        match self.expires_at.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// The current identity (replaced on token refresh).
    pub fn identity(&self) -> Arc<Identity> {
        self.identity.read().clone()
    }

    pub(crate) fn set_identity(&self, identity: Identity) {
        self.expires_at
            .store(identity.expires_at.unwrap_or(0), Ordering::Relaxed);
        *self.identity.write() = Arc::new(identity);
    }

    /// Whether an event named `event` passes this connection's filter.
    pub fn wants(&self, event: &str) -> bool {
        self.wants_all.load(Ordering::Relaxed) || self.filter.read().matches(event)
    }

    /// Changes the event filter.
    pub(crate) fn update_filter<T>(&self, change: impl FnOnce(&mut EventFilter) -> T) -> T {
        let mut filter = self.filter.write();
        let out = change(&mut filter);
        self.wants_all
            .store(filter.matches_everything(), Ordering::Relaxed);
        out
    }

    pub(crate) fn rooms(&self) -> &Mutex<BTreeSet<RoomName>> {
        &self.rooms
    }

    /// Whether `room` is joined.
    pub fn in_room(&self, room: &RoomName) -> bool {
        self.rooms.lock().contains(room)
    }

    /// A snapshot for the connections API.
    pub fn info(&self, node_id: &str) -> ConnectionInfo {
        ConnectionInfo {
            connection_id: self.id.to_string(),
            node_id: node_id.to_owned(),
            transport: Cow::Borrowed(self.transport.name),
            rooms: self.rooms.lock().iter().map(|r| r.to_string()).collect(),
            connected_at: self.connected_at_ms,
        }
    }
}

/// The `disconnect` frame for `code` in `codec`.
pub fn disconnect_frame(codec: &dyn ClientCodec, code: CloseCode) -> Bytes {
    codec.encode(&ServerFrame::Disconnect(Disconnect {
        code: code.code(),
        reason: code.reason().to_owned(),
        reconnect: code.reconnect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registry_record_keeps_a_transport_this_node_does_not_know() {
        let record = |transport: &str| ConnectionRecord {
            connection_id: "c".into(),
            tenant: Tenant::default_tenant(),
            user_id: "u".into(),
            node_id: "n".into(),
            transport: transport.into(),
            rooms: vec!["r".into()],
            connected_at: 1,
        };
        let info = ConnectionInfo::from_record(record("socketio"));
        let json = serde_json::to_value(&info).expect("json");
        assert_eq!(json["transport"], "socketio", "not turned into websocket");
        let info = ConnectionInfo::from_record(record("sse"));
        assert_eq!(
            serde_json::to_value(&info).expect("json")["transport"],
            "sse"
        );
    }
}
