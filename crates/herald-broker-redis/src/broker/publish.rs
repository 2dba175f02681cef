//! Publishing: one script assigns the offset, stores the entry, sets the
//! keys' expiries and announces the message (SPUBLISH, see
//! [`super::RedisBroker`]), so that offset order is channel order and
//! nothing is half-done.
//!
//! The node serializes the publication without its position
//! (`{"t":..,"r":..,...}`); the script splices `p{"o":<offset>,"e":"<epoch>",`
//! in front of the rest. The payload is never decoded by Lua, so it stays
//! byte for byte what the publisher sent, and the stored entry and the
//! channel message are the same bytes.
//!
//! History: an entry is stored only when `history.size` and `history.ttl`
//! are both above zero (as in the memory engine), with id `0-<offset>` and
//! its own expiry time (publish time + ttl, by the publishing node's
//! clock), so reads skip expired entries without knowing the room's policy
//! and each publish trims expired entries off the head (XTRIM MINID) and
//! the stream to `history.size` and `history.max_bytes` (oldest first; the
//! meta hash's `bytes` field counts the stream's message bytes).
//!
//! Expiries: the stream lives `history.ttl` after the last publish (every
//! entry in it has expired by then); the meta hash (epoch, offset) lives
//! `max(history.ttl, 1 hour)` after the last publish, mirroring the memory
//! engine's sweep of idle streams: a room quiet for that long starts a new
//! epoch, which clients see as a fresh stream.

use super::error::{from_redis, not_connected, unexpected};
use super::RedisBroker;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::{Expiration, SetOptions, Value};
use herald_core::HistoryTrims;
use herald_core::{BrokerError, PublishOutcome, PublishRequest, RoomKey};
use herald_protocol::{Sender, StreamPosition};
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// History entries this node's publishes trimmed, by reason (the script
/// reports them); the node-wide byte budget does not apply to Redis.
#[derive(Default)]
pub(super) struct Trimmed {
    size: AtomicU64,
    room_bytes: AtomicU64,
    ttl: AtomicU64,
}

impl Trimmed {
    fn add(&self, size: u64, room_bytes: u64, ttl: u64) {
        self.size.fetch_add(size, Ordering::Relaxed);
        self.room_bytes.fetch_add(room_bytes, Ordering::Relaxed);
        self.ttl.fetch_add(ttl, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> HistoryTrims {
        HistoryTrims {
            size: self.size.load(Ordering::Relaxed),
            ttl: self.ttl.load(Ordering::Relaxed),
            room_bytes: self.room_bytes.load(Ordering::Relaxed),
            total_bytes: 0,
        }
    }
}

/// How long an idempotency key is remembered at least (longer in rooms
/// whose history lives longer), as in the memory engine.
pub(super) const IDEMPOTENCY_TTL: Duration = Duration::from_secs(300);

/// How long a room's epoch outlives its last publish at least.
pub(super) const META_IDLE: Duration = Duration::from_secs(3600);

/// The publication without its position: [`crate::wire::PublicationWire`]
/// minus `o` and `e`, which the script adds.
#[derive(Serialize)]
struct Body<'a> {
    t: &'a str,
    r: &'a str,
    n: &'a str,
    d: &'a RawValue,
    ts: u64,
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    f: Option<&'a Sender>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<&'a str>,
    nd: &'a str,
    tu: u64,
    /// The `broker.publish` span's `traceparent` (traced publishes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    tp: Option<String>,
    /// Critical (only written when true).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    cr: bool,
    /// Conflation key.
    #[serde(skip_serializing_if = "Option::is_none")]
    ck: Option<&'a str>,
}

/// The JSON the script splices its position in front of: the body without
/// its opening brace.
pub(super) fn encode_body(
    request: &PublishRequest,
    ts: u64,
    event_id: &str,
    node_id: &str,
) -> Result<bytes::Bytes, BrokerError> {
    let body = Body {
        t: request.room.tenant.as_str(),
        r: request.room.name.as_str(),
        n: &request.event,
        d: &request.data,
        ts,
        id: event_id,
        f: request.from.as_ref(),
        x: request.exclude_connection.as_deref(),
        nd: node_id,
        tu: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        tp: request
            .trace
            .as_ref()
            .map(herald_core::TraceContext::to_traceparent),
        cr: request.critical,
        ck: request.conflation_key.as_deref(),
    };
    let json = serde_json::to_vec(&body).map_err(|e| BrokerError::Internal(e.to_string()))?;
    Ok(bytes::Bytes::from(json).slice(1..))
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A fresh random epoch, as the memory engine makes them.
pub(super) fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn new_event_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl RedisBroker {
    pub(super) async fn publish_once(
        &self,
        request: PublishRequest,
    ) -> Result<PublishOutcome, BrokerError> {
        // Waiting for a reconnect would hold the publisher for the whole
        // command timeout; answer at once instead.
        if !self.clients.commands.is_connected() {
            self.forget_engine_epoch();
            self.publish_script.refused();
            return Err(not_connected());
        }
        let room = &request.room;
        let ttl = request.history.ttl;
        let idempotency_ttl = IDEMPOTENCY_TTL.max(ttl);
        if let Some(key) = &request.idempotency_key {
            self.claim_idempotency_key(room, key, idempotency_ttl)
                .await?;
        }
        let ts = now_ms();
        let body = encode_body(&request, ts, &new_event_id(), &self.node_id)?;
        let mut keys = vec![
            self.keys.room_meta(room),
            self.keys.room_stream(room),
            self.keys.room_channel(room),
        ];
        if let Some(key) = &request.idempotency_key {
            keys.push(self.keys.room_idempotency(room, key));
        }
        let size = i64::try_from(request.history.size).unwrap_or(i64::MAX);
        let args = vec![
            Value::from(self.engine_epoch().await?),
            Value::Bytes(body),
            Value::Integer(size),
            Value::Integer(millis(ttl)),
            Value::Integer(i64::try_from(ts).unwrap_or(i64::MAX)),
            Value::Integer(millis(META_IDLE.max(ttl))),
            Value::Integer(millis(idempotency_ttl)),
            Value::Integer(i64::try_from(request.history.max_bytes).unwrap_or(i64::MAX)),
            Value::from(new_epoch()),
        ];
        let reply = self
            .publish_script
            .run(&self.clients.commands, keys, args)
            .await
            .map_err(from_redis)?;
        let mut reply = reply.into_array().into_iter();
        let (Some(epoch), Some(offset), Some(duplicate)) = (
            reply.next().and_then(|v| v.as_string()),
            reply.next().and_then(|v| v.as_u64()),
            reply.next().and_then(|v| v.as_u64()),
        ) else {
            return Err(unexpected("publish script"));
        };
        let mut count = || reply.next().and_then(|v| v.as_u64()).unwrap_or(0);
        let (size, room_bytes, ttl) = (count(), count(), count());
        self.trimmed.add(size, room_bytes, ttl);
        Ok(PublishOutcome {
            position: StreamPosition::new(epoch, offset),
            duplicate: duplicate == 1,
        })
    }

    /// Records which room a tenant's idempotency key is for, or finds it
    /// was used for another room. The key lives in the tenant's slot, so it
    /// is claimed apart from the room's script; the room's own record (in
    /// the script) decides whether this is a duplicate.
    async fn claim_idempotency_key(
        &self,
        room: &RoomKey,
        key: &str,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        let owner = self.keys.idempotency_owner(&room.tenant, key);
        let first: Option<String> = self
            .clients
            .commands
            .set(
                owner,
                room.name.as_str(),
                Some(Expiration::PX(millis(ttl))),
                Some(SetOptions::NX),
                true,
            )
            .await
            .map_err(from_redis)?;
        match first {
            Some(first) if first != room.name.as_str() => {
                Err(BrokerError::IdempotencyConflict { room: first })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode_room_message, RoomMessage};
    use herald_core::{HistoryPolicy, RoomName, Tenant};

    #[test]
    fn spliced_body_decodes_with_payload_verbatim() {
        let request = PublishRequest {
            room: RoomKey::new(
                Tenant::from_option(Some("acme")),
                RoomName::parse("project:7").expect("room"),
            ),
            event: "updated".into(),
            data: RawValue::from_string(r#"{"x": 1.50, "y":"é"}"#.into()).expect("raw"),
            from: Some(Sender {
                user_id: "u".into(),
                connection_id: "c".into(),
            }),
            exclude_connection: Some("c2".into()),
            idempotency_key: None,
            history: HistoryPolicy::default(),
            trace: herald_core::TraceContext::parse_traceparent(TRACEPARENT),
            critical: true,
            conflation_key: Some("run-1".into()),
        };
        let body = encode_body(&request, 42, "ev1", "n1").expect("encodes");
        assert!(body.starts_with(br#""t":"acme","r":"project:7""#));
        let mut message = br#"p{"o":3,"e":"00ff","#.to_vec();
        message.extend_from_slice(&body);
        let RoomMessage::Publication(p, node) = decode_room_message(&message).expect("decodes")
        else {
            panic!("not a publication");
        };
        assert_eq!(node, "n1");
        assert_eq!(p.position, StreamPosition::new("00ff", 3));
        assert_eq!(p.data.get(), r#"{"x": 1.50, "y":"é"}"#);
        assert_eq!(p.ts, 42);
        assert_eq!(p.exclude_connection.as_deref(), Some("c2"));
        assert_eq!(p.from.as_ref().map(|f| f.user_id.as_str()), Some("u"));
        assert_eq!(p.trace, request.trace, "the trace context travels along");
        assert!(p.critical, "critical travels along");
        assert_eq!(p.conflation_key.as_deref(), Some("run-1"));
    }

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
}
