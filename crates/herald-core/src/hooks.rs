//! Webhook events and the outbox they wait in (the hooks seam).
//!
//! Herald tells the backend what happens through webhook events: nine
//! [`HookKind`]s, each a flat JSON object `{"id", "type", "time_ms",
//! ...fields}` ([`HookEvent`]). Events are appended to an [`Outbox`] (the
//! engine's: in memory for one node, on the cluster engine's storage for a
//! cluster, so a dead node's events survive it); one dispatcher per
//! node takes batches from it and POSTs them. Only the node holding the
//! cluster-wide dispatch lease gets batches, so events leave in outbox
//! order, one batch at a time.
//!
//! # Fields per kind
//!
//! Every event has `id` (unique; the receiver dedups by it), `type` (the
//! kind's name) and `time_ms` (when it happened, ms since the Unix epoch).
//! `tenant` is the tenant's name, or `null` for the default tenant; `room`
//! is the room's name without the tenant.
//!
//! | type | fields |
//! |---|---|
//! | `connection.opened` | `tenant`, `user_id`, `connection_id`, `node_id`, `transport` |
//! | `connection.closed` | the same, plus `code` (close code) and `reason` |
//! | `user.online` | `tenant`, `user_id` (first connection of the user) |
//! | `user.offline` | `tenant`, `user_id` (its last connection went away) |
//! | `room.occupied` | `tenant`, `room` (first member) |
//! | `room.vacated` | `tenant`, `room` (last member left) |
//! | `member.joined` | `tenant`, `room`, `user_id`, `connection_id`, `node_id` |
//! | `member.left` | the same as `member.joined` |
//! | `message.sent` | `tenant`, `room`, `event`, `user_id`, `connection_id`, `epoch`, `offset`, `data` |
//!
//! Ids are 128 random bits in hex, except `connection.opened`
//! (`<connection_id>.opened`) and `connection.closed`
//! (`<connection_id>.closed`): a cluster engine reaping a dead node's
//! connection emits the same `connection.closed` id the node would have, so
//! the receiver sees one event even if both were appended.
//!
//! # Who emits what
//!
//! Without a cluster engine the node emits all nine kinds from its own
//! registry. On a cluster the node emits `connection.*`, `member.*` and
//! `message.sent` (appending `connection.closed` before it removes the
//! record), and the cluster engine emits `user.*` and `room.*` atomically
//! with its registry writes, plus, when it reaps a dead node,
//! `connection.closed` (code 1006, reason `node_lost`), `member.left`,
//! `user.offline` and `room.vacated` for what it reaps. Emitters append only
//! kinds in the configured [`HookSet`].

use crate::{BrokerError, ConnectionRecord, RoomKey, Tenant};
use async_trait::async_trait;
use serde::ser::SerializeMap;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The close code of a connection lost with its node (reaped by the
/// cluster engine): 1006, abnormal closure.
pub const NODE_LOST_CODE: u16 = 1006;

/// The close reason of a connection lost with its node.
pub const NODE_LOST_REASON: &str = "node_lost";

/// One kind of webhook event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HookKind {
    /// `connection.opened`: a connection was admitted.
    ConnectionOpened,
    /// `connection.closed`: a connection went away.
    ConnectionClosed,
    /// `user.online`: a user's first connection (cluster-wide on a cluster).
    UserOnline,
    /// `user.offline`: a user's last connection went away.
    UserOffline,
    /// `room.occupied`: a room's first member joined.
    RoomOccupied,
    /// `room.vacated`: a room's last member left.
    RoomVacated,
    /// `member.joined`: a connection joined a room.
    MemberJoined,
    /// `member.left`: a connection left a room (or closed while in it).
    MemberLeft,
    /// `message.sent`: a client's `send_message` was published.
    MessageSent,
}

impl HookKind {
    /// Every kind, in the documented order.
    pub const ALL: [HookKind; 9] = [
        HookKind::ConnectionOpened,
        HookKind::ConnectionClosed,
        HookKind::UserOnline,
        HookKind::UserOffline,
        HookKind::RoomOccupied,
        HookKind::RoomVacated,
        HookKind::MemberJoined,
        HookKind::MemberLeft,
        HookKind::MessageSent,
    ];

    /// The kind's name on the wire and in `webhooks.events`.
    pub fn as_str(self) -> &'static str {
        match self {
            HookKind::ConnectionOpened => "connection.opened",
            HookKind::ConnectionClosed => "connection.closed",
            HookKind::UserOnline => "user.online",
            HookKind::UserOffline => "user.offline",
            HookKind::RoomOccupied => "room.occupied",
            HookKind::RoomVacated => "room.vacated",
            HookKind::MemberJoined => "member.joined",
            HookKind::MemberLeft => "member.left",
            HookKind::MessageSent => "message.sent",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of the nine kinds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a webhook event type (expected one of: connection.opened, connection.closed, user.online, user.offline, room.occupied, room.vacated, member.joined, member.left, message.sent)")]
pub struct UnknownHookKind(pub String);

impl FromStr for HookKind {
    type Err = UnknownHookKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HookKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownHookKind(s.to_string()))
    }
}

/// A set of kinds: what `webhooks.events` enables. Empty means webhooks are
/// off, and emitters check it first so that costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HookSet(u16);

impl HookSet {
    /// No kind (webhooks off).
    pub const fn empty() -> Self {
        Self(0)
    }

    /// All nine kinds.
    pub fn all() -> Self {
        HookKind::ALL.into_iter().collect()
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: HookKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// Whether no kind is.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Adds `kind`.
    pub fn insert(&mut self, kind: HookKind) {
        self.0 |= kind.bit();
    }

    /// The kinds in the set, in the documented order.
    pub fn iter(self) -> impl Iterator<Item = HookKind> {
        HookKind::ALL.into_iter().filter(move |k| self.contains(*k))
    }
}

impl FromIterator<HookKind> for HookSet {
    fn from_iter<I: IntoIterator<Item = HookKind>>(iter: I) -> Self {
        let mut set = HookSet::empty();
        for kind in iter {
            set.insert(kind);
        }
        set
    }
}

/// One webhook event; serialized flat as `{"id", "type", "time_ms",
/// ...fields}` (see the module docs for each kind's fields).
#[derive(Debug, Clone, PartialEq)]
pub struct HookEvent {
    /// Unique id, for the receiver's dedup.
    pub id: String,
    /// Its kind (`type` on the wire).
    pub kind: HookKind,
    /// When it happened, ms since the Unix epoch.
    pub time_ms: u64,
    /// The kind's fields.
    pub fields: Map<String, Value>,
}

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh random event id: 128 bits in hex.
pub fn random_event_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn tenant_value(tenant: &Tenant) -> Value {
    if tenant.is_default() {
        Value::Null
    } else {
        Value::String(tenant.as_str().to_string())
    }
}

fn connection_fields(record: &ConnectionRecord) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("tenant".into(), tenant_value(&record.tenant));
    f.insert("user_id".into(), record.user_id.clone().into());
    f.insert("connection_id".into(), record.connection_id.clone().into());
    f.insert("node_id".into(), record.node_id.clone().into());
    f.insert("transport".into(), record.transport.clone().into());
    f
}

fn user_fields(tenant: &Tenant, user_id: &str) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("tenant".into(), tenant_value(tenant));
    f.insert("user_id".into(), user_id.into());
    f
}

fn room_fields(room: &RoomKey) -> Map<String, Value> {
    let mut f = Map::new();
    f.insert("tenant".into(), tenant_value(&room.tenant));
    f.insert("room".into(), room.name.as_str().into());
    f
}

fn member_fields(room: &RoomKey, record: &ConnectionRecord) -> Map<String, Value> {
    let mut f = room_fields(room);
    f.insert("user_id".into(), record.user_id.clone().into());
    f.insert("connection_id".into(), record.connection_id.clone().into());
    f.insert("node_id".into(), record.node_id.clone().into());
    f
}

/// What `message.sent` reports about one client message.
#[derive(Debug, Clone, Copy)]
pub struct SentMessage<'a> {
    /// The room it went to.
    pub room: &'a RoomKey,
    /// Its event name.
    pub event: &'a str,
    /// The sender's user.
    pub user_id: &'a str,
    /// The sender's connection.
    pub connection_id: &'a str,
    /// The room stream's epoch it was published in.
    pub epoch: &'a str,
    /// Its offset in the room's stream.
    pub offset: u64,
    /// Its payload, verbatim.
    pub data: &'a RawValue,
}

impl HookEvent {
    /// An event of `kind` with a random id, happening now.
    pub fn new(kind: HookKind, fields: Map<String, Value>) -> Self {
        Self {
            id: random_event_id(),
            kind,
            time_ms: now_ms(),
            fields,
        }
    }

    /// `connection.opened` for `record`; id `<connection_id>.opened`.
    pub fn connection_opened(record: &ConnectionRecord) -> Self {
        Self {
            id: format!("{}.opened", record.connection_id),
            kind: HookKind::ConnectionOpened,
            time_ms: now_ms(),
            fields: connection_fields(record),
        }
    }

    /// `connection.closed` for `record` with its close `code` and `reason`;
    /// id `<connection_id>.closed` (the same whoever emits it).
    pub fn connection_closed(record: &ConnectionRecord, code: u16, reason: &str) -> Self {
        let mut fields = connection_fields(record);
        fields.insert("code".into(), code.into());
        fields.insert("reason".into(), reason.into());
        Self {
            id: format!("{}.closed", record.connection_id),
            kind: HookKind::ConnectionClosed,
            time_ms: now_ms(),
            fields,
        }
    }

    /// `user.online` for a user's first connection.
    pub fn user_online(tenant: &Tenant, user_id: &str) -> Self {
        Self::new(HookKind::UserOnline, user_fields(tenant, user_id))
    }

    /// `user.offline` when a user's last connection went away.
    pub fn user_offline(tenant: &Tenant, user_id: &str) -> Self {
        Self::new(HookKind::UserOffline, user_fields(tenant, user_id))
    }

    /// `room.occupied` when `room` got its first member.
    pub fn room_occupied(room: &RoomKey) -> Self {
        Self::new(HookKind::RoomOccupied, room_fields(room))
    }

    /// `room.vacated` when `room` lost its last member.
    pub fn room_vacated(room: &RoomKey) -> Self {
        Self::new(HookKind::RoomVacated, room_fields(room))
    }

    /// `member.joined`: `record` joined `room`.
    pub fn member_joined(room: &RoomKey, record: &ConnectionRecord) -> Self {
        Self::new(HookKind::MemberJoined, member_fields(room, record))
    }

    /// `member.left`: `record` left `room` (or closed while in it).
    pub fn member_left(room: &RoomKey, record: &ConnectionRecord) -> Self {
        Self::new(HookKind::MemberLeft, member_fields(room, record))
    }

    /// `message.sent` for a client's `send_message`.
    pub fn message_sent(m: SentMessage<'_>) -> Self {
        let mut f = room_fields(m.room);
        f.insert("event".into(), m.event.into());
        f.insert("user_id".into(), m.user_id.into());
        f.insert("connection_id".into(), m.connection_id.into());
        f.insert("epoch".into(), m.epoch.into());
        f.insert("offset".into(), m.offset.into());
        // The payload is the client's JSON, already validated by the frame
        // decoder; a value that does not parse back is reported as null
        // rather than dropping the event.
        let data = serde_json::from_str(m.data.get()).unwrap_or(Value::Null);
        f.insert("data".into(), data);
        Self::new(HookKind::MessageSent, f)
    }

    /// The event's JSON, as stored in an outbox and sent in a batch.
    pub fn to_bytes(&self) -> bytes::Bytes {
        // Serializing a map of JSON values cannot fail.
        bytes::Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// A field as a string, if present (for emitters and tests).
    pub fn field_str(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }
}

impl serde::Serialize for HookEvent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3 + self.fields.len()))?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("type", self.kind.as_str())?;
        map.serialize_entry("time_ms", &self.time_ms)?;
        for (k, v) in &self.fields {
            // The envelope's keys win; a field cannot shadow them.
            if !matches!(k.as_str(), "id" | "type" | "time_ms") {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

impl<'de> serde::Deserialize<'de> for HookEvent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut fields = Map::<String, Value>::deserialize(deserializer)?;
        let id = match fields.remove("id") {
            Some(Value::String(s)) => s,
            _ => return Err(D::Error::custom("a webhook event needs a string `id`")),
        };
        let kind = match fields.remove("type") {
            Some(Value::String(s)) => s.parse::<HookKind>().map_err(D::Error::custom)?,
            _ => return Err(D::Error::custom("a webhook event needs a string `type`")),
        };
        let time_ms = match fields.remove("time_ms") {
            Some(v) => v
                .as_u64()
                .ok_or_else(|| D::Error::custom("`time_ms` must be an unsigned integer"))?,
            None => return Err(D::Error::custom("a webhook event needs `time_ms`")),
        };
        Ok(Self {
            id,
            kind,
            time_ms,
            fields,
        })
    }
}

/// One event waiting in an outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Where it sits in the outbox (engine-defined: a stream id, a
    /// sequence number); what [`Outbox::ack`] takes back.
    pub cursor: String,
    /// The event's `time_ms`, for the `max_age` check.
    pub time_ms: u64,
    /// The event's JSON ([`HookEvent::to_bytes`]).
    pub body: bytes::Bytes,
}

/// Where webhook events wait until the dispatcher delivered them.
///
/// Contract:
/// - [`Outbox::append`] keeps the events in the order given, after
///   everything appended before by the same caller; on a cluster engine it
///   returns only once they are durable on the engine's storage.
/// - [`Outbox::next_batch`] gives up to `max` entries, oldest first, to the
///   one node holding the cluster-wide dispatch lease (the engine's
///   business: taken, renewed and lost inside the engine); every other node
///   gets an empty `Vec` after at most `wait`. Entries handed out and not
///   acked are handed out again (to this or the next lease holder), so
///   delivery is at least once.
/// - [`Outbox::ack`] removes entries (delivered or dropped): no node sends
///   them again.
/// - Nothing blocks the caller beyond a bounded wait; a bounded outbox drops
///   its oldest entries (and counts them) rather than blocking `append`.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Appends `events` in order (see the trait docs).
    async fn append(&self, events: &[HookEvent]) -> Result<(), BrokerError>;

    /// Up to `max` of the oldest entries, waiting at most `wait` for one
    /// (see the trait docs).
    async fn next_batch(&self, max: usize, wait: Duration)
        -> Result<Vec<OutboxEntry>, BrokerError>;

    /// Removes delivered (or dropped) entries.
    async fn ack(&self, entries: &[OutboxEntry]) -> Result<(), BrokerError>;

    /// How many entries wait, if the outbox can tell cheaply (for the
    /// `herald_webhook_backlog` gauge); `None` otherwise.
    fn backlog(&self) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RoomName;

    fn record() -> ConnectionRecord {
        ConnectionRecord {
            connection_id: "c1".into(),
            tenant: Tenant::default_tenant(),
            user_id: "42".into(),
            node_id: "n1".into(),
            transport: "websocket".into(),
            rooms: vec![],
            connected_at: 0,
        }
    }

    #[test]
    fn kinds_round_trip_by_name_and_unknown_names_are_refused() {
        for kind in HookKind::ALL {
            assert_eq!(kind.as_str().parse::<HookKind>(), Ok(kind));
        }
        let err = "user.away".parse::<HookKind>().expect_err("refused");
        assert!(err.to_string().contains("`user.away`"), "{err}");
    }

    #[test]
    fn sets_hold_what_was_inserted() {
        let mut set = HookSet::empty();
        assert!(set.is_empty());
        set.insert(HookKind::UserOffline);
        assert!(set.contains(HookKind::UserOffline));
        assert!(!set.contains(HookKind::UserOnline));
        assert_eq!(HookSet::all().iter().count(), 9);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![HookKind::UserOffline]);
    }

    #[test]
    fn events_serialize_flat_and_parse_back() {
        let e = HookEvent::connection_closed(&record(), 1000, "normal");
        let v: Value = serde_json::from_slice(&e.to_bytes()).expect("json");
        assert_eq!(v["id"], "c1.closed");
        assert_eq!(v["type"], "connection.closed");
        assert_eq!(v["tenant"], Value::Null);
        assert_eq!(v["user_id"], "42");
        assert_eq!(v["code"], 1000);
        assert_eq!(v["reason"], "normal");
        let back: HookEvent = serde_json::from_value(v).expect("parses");
        assert_eq!(back, e);
    }

    #[test]
    fn message_sent_carries_the_room_without_tenant_and_the_data() {
        let room = RoomKey::new(
            Tenant::from_option(Some("acme")),
            RoomName::parse("chat:9").expect("room"),
        );
        let data = RawValue::from_string(r#"{"text":"hi"}"#.into()).expect("raw");
        let e = HookEvent::message_sent(SentMessage {
            room: &room,
            event: "msg",
            user_id: "42",
            connection_id: "c1",
            epoch: "e1",
            offset: 7,
            data: &data,
        });
        let v: Value = serde_json::from_slice(&e.to_bytes()).expect("json");
        assert_eq!(v["tenant"], "acme");
        assert_eq!(v["room"], "chat:9");
        assert_eq!(v["offset"], 7);
        assert_eq!(v["data"]["text"], "hi");
        assert_eq!(e.id.len(), 32);
    }
}
