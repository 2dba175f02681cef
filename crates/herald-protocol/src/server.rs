//! Frames the server sends.
//!
//! Room events are the hot path: [`encode_publication`] writes the frame
//! straight from borrowed parts (the payload stays the publisher's raw JSON),
//! once per event, and every recipient shares the resulting bytes.

use crate::{ErrorCode, RequestId, StreamPosition};
use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

/// Who sent a `message` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Sender {
    /// The sending user.
    pub user_id: String,
    /// The sending connection.
    pub connection_id: String,
}

/// A room in the `authenticated` frame.
#[derive(Debug, Clone, Serialize)]
pub struct JoinedRoom {
    /// Room name.
    pub room: String,
    /// Stream epoch.
    pub epoch: String,
    /// Offset of the room's last event.
    pub offset: u64,
}

/// A member listed in `room_joined` and the presence API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MemberSummary {
    /// The member's user id.
    pub user_id: String,
    /// The member's connection id.
    pub connection_id: String,
    /// The node holding that connection.
    pub node_id: String,
}

/// The `disconnect` frame sent just before the server closes a connection.
#[derive(Debug, Clone, Serialize)]
pub struct Disconnect {
    /// The close code that follows.
    pub code: u16,
    /// Short reason, e.g. `slow_consumer`.
    pub reason: String,
    /// Whether the client should reconnect.
    pub reconnect: bool,
}

/// Every server frame except room events (see [`PublicationFrame`]).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The connection is authenticated.
    Authenticated {
        /// Request id when answering an `authenticate` frame.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// This connection's id.
        connection_id: String,
        /// The token's `sub`.
        user_id: String,
        /// The node serving this connection.
        node_id: String,
        /// Rooms joined automatically.
        rooms: Vec<JoinedRoom>,
        /// How often the server pings.
        heartbeat_interval_ms: u64,
    },
    /// A join succeeded.
    RoomJoined {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Room name.
        room: String,
        /// Stream epoch.
        epoch: String,
        /// Offset of the room's last event before live delivery starts.
        offset: u64,
        /// Whether `since` could be honoured (only when `since` was given).
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        /// Number of replayed events that follow (only when `since` was given).
        #[serde(skip_serializing_if = "Option::is_none")]
        replayed: Option<u64>,
        /// Current members (only in rooms with presence on).
        #[serde(skip_serializing_if = "Option::is_none")]
        members: Option<Vec<MemberSummary>>,
    },
    /// The connection left a room (or was removed from it).
    RoomLeft {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Room name.
        room: String,
        /// Why the server removed the connection, when it did.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Another connection joined a room with presence on.
    MemberJoined {
        /// Room name.
        room: String,
        /// The member's user id.
        user_id: String,
        /// The member's connection id.
        connection_id: String,
    },
    /// A connection left a room with presence on.
    MemberLeft {
        /// Room name.
        room: String,
        /// The member's user id.
        user_id: String,
        /// The member's connection id.
        connection_id: String,
    },
    /// Generic success reply.
    Ack {
        /// Request id.
        id: RequestId,
        /// Epoch of the message sent (for `send_message`).
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        /// Offset of the message sent (for `send_message`).
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    /// Reply to `presence` (an extension): the room's members.
    Presence {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Room name.
        room: String,
        /// Current members, cluster-wide.
        members: Vec<MemberSummary>,
    },
    /// The backend's answer to an `rpc` request.
    RpcResult {
        /// Request id of the `rpc`.
        id: RequestId,
        /// The backend's JSON answer, verbatim.
        data: Box<RawValue>,
    },
    /// Reply to `ping`.
    Pong {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
    },
    /// A request failed.
    Error {
        /// Request id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// The server is about to close the connection.
    Disconnect(Disconnect),
    /// Events of these rooms were dropped from this connection's full send
    /// queue (namespace `overflow = "drop"` or `"conflate"`); queued where
    /// the first dropped event of each room was. `join_room` with `since`
    /// = a room's position replays what was lost.
    EventsDropped {
        /// Each room that lost events, and where its gap starts.
        rooms: Vec<DroppedRoom>,
    },
}

/// A room in the `events_dropped` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DroppedRoom {
    /// Room name.
    pub room: String,
    /// Stream epoch of the dropped events.
    pub epoch: String,
    /// The offset just before the room's first dropped event: resume from
    /// here (`since`) to get every dropped event back.
    pub offset: u64,
}

/// Serializes a control frame. Serializing these types cannot fail (no maps
/// with non-string keys, no custom serializers), so a failure is a bug and
/// is reported as an `internal` error frame rather than a panic.
pub fn encode(frame: &ServerFrame) -> Bytes {
    match serde_json::to_vec(frame) {
        Ok(v) => Bytes::from(v),
        Err(_) => Bytes::from_static(
            br#"{"type":"error","code":"internal","message":"frame encoding failed"}"#,
        ),
    }
}

/// The parts of an `event` (or, with `from`, a `message`) frame.
#[derive(Debug, Serialize)]
pub struct PublicationFrame<'a> {
    /// `event` or `message`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Room name as clients know it (without tenant).
    pub room: &'a str,
    /// Event name.
    pub event: &'a str,
    /// Payload, verbatim.
    pub data: &'a RawValue,
    /// Stream epoch.
    pub epoch: &'a str,
    /// Offset in the room.
    pub offset: u64,
    /// Publish time, ms since the Unix epoch.
    pub ts: u64,
    /// Unique id of the event.
    pub event_id: &'a str,
    /// Sender of a `message`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<&'a Sender>,
}

impl<'a> PublicationFrame<'a> {
    /// The frame of a room event; with `from`, a `message` frame.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        room: &'a str,
        event: &'a str,
        data: &'a RawValue,
        position: &'a StreamPosition,
        ts: u64,
        event_id: &'a str,
        from: Option<&'a Sender>,
    ) -> Self {
        Self {
            kind: if from.is_some() { "message" } else { "event" },
            room,
            event,
            data,
            epoch: &position.epoch,
            offset: position.offset,
            ts,
            event_id,
            from,
        }
    }
}

/// The parts of a direct message's `event` frame (an extension): an event
/// sent to one connection or one user through the HTTP API, outside any
/// room. `room` is always `null` and there is no `epoch` or `offset`: it is
/// in no stream, so it cannot be resumed or replayed.
#[derive(Debug, Serialize)]
pub struct DirectFrame<'a> {
    /// Always `event`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Always `None` (`null` on the wire): no room.
    pub room: Option<&'a str>,
    /// Event name.
    pub event: &'a str,
    /// Payload, verbatim.
    pub data: &'a RawValue,
    /// Send time, ms since the Unix epoch.
    pub ts: u64,
    /// Unique id of the message.
    pub event_id: &'a str,
}

impl<'a> DirectFrame<'a> {
    /// The frame of a direct message.
    pub fn new(event: &'a str, data: &'a RawValue, ts: u64, event_id: &'a str) -> Self {
        Self {
            kind: "event",
            room: None,
            event,
            data,
            ts,
            event_id,
        }
    }
}

/// Herald JSON of a direct message's frame.
pub(crate) fn encode_direct_frame(frame: &DirectFrame<'_>) -> Bytes {
    let mut buf = Vec::with_capacity(96 + frame.data.get().len() + frame.event.len());
    match serde_json::to_writer(&mut buf, frame) {
        Ok(()) => Bytes::from(buf),
        Err(_) => Bytes::from_static(
            br#"{"type":"error","code":"internal","message":"frame encoding failed"}"#,
        ),
    }
}

/// Encodes a room event once in Herald JSON; the bytes are shared by every
/// recipient.
#[allow(clippy::too_many_arguments)]
pub fn encode_publication(
    room: &str,
    event: &str,
    data: &RawValue,
    position: &StreamPosition,
    ts: u64,
    event_id: &str,
    from: Option<&Sender>,
) -> Bytes {
    let frame = PublicationFrame::new(room, event, data, position, ts, event_id, from);
    encode_publication_frame(&frame)
}

/// Herald JSON of a room event's frame.
pub(crate) fn encode_publication_frame(frame: &PublicationFrame<'_>) -> Bytes {
    let len = 128 + frame.data.get().len() + frame.room.len() + frame.event.len();
    let mut buf = Vec::with_capacity(len);
    match serde_json::to_writer(&mut buf, frame) {
        Ok(()) => Bytes::from(buf),
        Err(_) => Bytes::from_static(
            br#"{"type":"error","code":"internal","message":"frame encoding failed"}"#,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_frame_has_contract_fields() {
        let data = RawValue::from_string(r#"{"x":1}"#.into()).expect("raw");
        let bytes = encode_publication(
            "project:7",
            "project.updated",
            &data,
            &StreamPosition::new("ep", 4),
            1700,
            "evt1",
            None,
        );
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["type"], "event");
        assert_eq!(v["room"], "project:7");
        assert_eq!(v["data"]["x"], 1);
        assert_eq!(v["offset"], 4);
        assert_eq!(v["epoch"], "ep");
        assert!(v.get("from").is_none());
    }

    #[test]
    fn rpc_result_carries_the_backend_json() {
        let data = RawValue::from_string(r#"{"ok":true}"#.into()).expect("raw");
        let bytes = encode(&ServerFrame::RpcResult {
            id: RequestId::Number(9.into()),
            data,
        });
        assert_eq!(
            &bytes[..],
            br#"{"type":"rpc_result","id":9,"data":{"ok":true}}"#
        );
    }

    #[test]
    fn message_frame_carries_sender() {
        let data = RawValue::from_string("1".into()).expect("raw");
        let from = Sender {
            user_id: "u".into(),
            connection_id: "c".into(),
        };
        let bytes = encode_publication(
            "r",
            "message",
            &data,
            &StreamPosition::new("e", 1),
            1,
            "id",
            Some(&from),
        );
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["type"], "message");
        assert_eq!(v["from"]["user_id"], "u");
    }

    #[test]
    fn direct_frame_has_a_null_room_and_no_position() {
        let data = RawValue::from_string(r#"{"x":1}"#.into()).expect("raw");
        let bytes = encode_direct_frame(&DirectFrame::new("note", &data, 5, "id1"));
        assert_eq!(
            &bytes[..],
            br#"{"type":"event","room":null,"event":"note","data":{"x":1},"ts":5,"event_id":"id1"}"#
        );
    }

    #[test]
    fn control_frames_are_tagged() {
        let b = encode(&ServerFrame::Pong { id: None });
        assert_eq!(&b[..], br#"{"type":"pong"}"#);
        let b = encode(&ServerFrame::Disconnect(Disconnect {
            code: 4011,
            reason: "slow_consumer".into(),
            reconnect: true,
        }));
        let v: serde_json::Value = serde_json::from_slice(&b).expect("json");
        assert_eq!(v["type"], "disconnect");
        assert_eq!(v["code"], 4011);
    }

    #[test]
    fn events_dropped_lists_rooms_and_positions() {
        let frame = ServerFrame::EventsDropped {
            rooms: vec![DroppedRoom {
                room: "agent:7".into(),
                epoch: "e1".into(),
                offset: 41,
            }],
        };
        assert_eq!(
            &encode(&frame)[..],
            br#"{"type":"events_dropped","rooms":[{"room":"agent:7","epoch":"e1","offset":41}]}"#
        );
    }
}
