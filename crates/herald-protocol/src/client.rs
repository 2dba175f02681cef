//! Frames a client sends, and their strict parsing.
//!
//! Parsing happens in two steps so that a malformed request still gets a
//! reply carrying its `id`: first the envelope (`type`, `id`), then the
//! fields of that type. Unknown extra fields are ignored, as Centrifugo and
//! Pusher do, so newer clients can talk to older servers.

use crate::{ErrorCode, StreamPosition};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

/// Longest string request id accepted, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 64;

/// Longest `rpc` method name accepted, in bytes.
pub const MAX_RPC_METHOD_BYTES: usize = 128;

/// A client's request id: a JSON number or a short string, echoed verbatim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RequestId {
    /// A numeric id.
    Number(serde_json::Number),
    /// A string id of at most [`MAX_REQUEST_ID_BYTES`] bytes.
    String(String),
}

/// One parsed client request.
#[derive(Debug, Clone)]
pub enum ClientRequest {
    /// Authenticate (first frame) or refresh the token (later).
    Authenticate {
        /// The JWT.
        token: String,
    },
    /// Join a room, optionally resuming from a position.
    JoinRoom {
        /// Room name as the client wrote it.
        room: String,
        /// Where the client's copy of the stream stops.
        since: Option<StreamPosition>,
    },
    /// Leave a room.
    LeaveRoom {
        /// Room name.
        room: String,
    },
    /// Add event-name patterns to the filter (the first call replaces `*`).
    Subscribe {
        /// Glob patterns.
        events: Vec<String>,
    },
    /// Remove event-name patterns from the filter.
    Unsubscribe {
        /// Glob patterns.
        events: Vec<String>,
    },
    /// Send a message to a joined room.
    SendMessage {
        /// Room name.
        room: String,
        /// Event name, `message` when omitted.
        event: Option<String>,
        /// Any JSON, kept as the client's bytes.
        data: Box<RawValue>,
    },
    /// Lists the members of a joined room with presence on (an extension
    /// of PROTOCOL.md 3.4, docs/protocol.md 3.4).
    Presence {
        /// Room name.
        room: String,
    },
    /// A call the backend answers (`proxy.rpc_url`): replied to with
    /// `rpc_result` or `error`. Always carries a request id.
    Rpc {
        /// The method: 1 to [`MAX_RPC_METHOD_BYTES`] bytes.
        method: String,
        /// Any JSON (`null` when omitted), kept as the client's bytes.
        data: Box<RawValue>,
    },
    /// Application-level ping.
    Ping,
}

impl ClientRequest {
    /// The `type` string of this request.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Authenticate { .. } => "authenticate",
            Self::JoinRoom { .. } => "join_room",
            Self::LeaveRoom { .. } => "leave_room",
            Self::Subscribe { .. } => "subscribe",
            Self::Unsubscribe { .. } => "unsubscribe",
            Self::SendMessage { .. } => "send_message",
            Self::Presence { .. } => "presence",
            Self::Rpc { .. } => "rpc",
            Self::Ping => "ping",
        }
    }
}

/// Why a frame could not be parsed: the reply to send, with the request id
/// when one could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    /// The id of the request, if the envelope was readable.
    pub id: Option<RequestId>,
    /// `bad_request` or `unknown_type`.
    pub code: ErrorCode,
    /// Human-readable detail naming the bad field.
    pub message: String,
}

impl FrameError {
    pub(crate) fn bad(id: Option<RequestId>, message: impl Into<String>) -> Self {
        Self {
            id,
            code: ErrorCode::BadRequest,
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
struct Authenticate {
    token: String,
}
#[derive(Deserialize)]
struct JoinRoom {
    room: String,
    #[serde(default)]
    since: Option<StreamPosition>,
}
#[derive(Deserialize)]
struct Room {
    room: String,
}
#[derive(Deserialize)]
struct Events {
    events: Vec<String>,
}
#[derive(Deserialize)]
struct Rpc {
    method: String,
    #[serde(default)]
    data: Value,
}
#[derive(Deserialize)]
struct SendMessage {
    room: String,
    #[serde(default)]
    event: Option<String>,
    data: Value,
}

/// Parses one text frame into its request id and request.
///
/// On failure the returned [`FrameError`] carries the id when the envelope
/// had a valid one, so the caller can answer that request.
pub fn parse_client_frame(text: &str) -> Result<(Option<RequestId>, ClientRequest), FrameError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| FrameError::bad(None, format!("invalid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(FrameError::bad(None, "a frame must be a JSON object"));
    };
    parse_client_map(map)
}

/// A frame's request id read from its `id` field (`None` when absent or
/// null); an error when the field is not a short string or a number.
pub(crate) fn request_id_of(value: Option<Value>) -> Result<Option<RequestId>, FrameError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(Some(RequestId::Number(n))),
        Some(Value::String(s)) if s.len() <= MAX_REQUEST_ID_BYTES => Ok(Some(RequestId::String(s))),
        Some(Value::String(_)) => Err(FrameError::bad(
            None,
            format!("field `id` is longer than {MAX_REQUEST_ID_BYTES} bytes"),
        )),
        Some(_) => Err(FrameError::bad(
            None,
            "field `id` must be a number or a string",
        )),
    }
}

/// Parses a frame already read into a map of its fields (from JSON text
/// or from MessagePack): the same rules whatever the encoding.
pub(crate) fn parse_client_map(
    mut map: serde_json::Map<String, Value>,
) -> Result<(Option<RequestId>, ClientRequest), FrameError> {
    let id = request_id_of(map.remove("id"))?;
    let kind = match map.remove("type") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(FrameError::bad(id, "field `type` must be a string")),
        None => return Err(FrameError::bad(id, "missing field `type`")),
    };
    let fields = Value::Object(map);
    let request = match kind.as_str() {
        "authenticate" => {
            let f: Authenticate = fields_of(&id, &kind, fields)?;
            ClientRequest::Authenticate { token: f.token }
        }
        "join_room" => {
            let f: JoinRoom = fields_of(&id, &kind, fields)?;
            ClientRequest::JoinRoom {
                room: f.room,
                since: f.since,
            }
        }
        "leave_room" => {
            let f: Room = fields_of(&id, &kind, fields)?;
            ClientRequest::LeaveRoom { room: f.room }
        }
        "subscribe" => {
            let f: Events = fields_of(&id, &kind, fields)?;
            ClientRequest::Subscribe { events: f.events }
        }
        "unsubscribe" => {
            let f: Events = fields_of(&id, &kind, fields)?;
            ClientRequest::Unsubscribe { events: f.events }
        }
        "send_message" => {
            let f: SendMessage = fields_of(&id, &kind, fields)?;
            let data = serde_json::value::to_raw_value(&f.data)
                .map_err(|e| FrameError::bad(id.clone(), format!("send_message: data: {e}")))?;
            ClientRequest::SendMessage {
                room: f.room,
                event: f.event,
                data,
            }
        }
        "presence" => {
            let f: Room = fields_of(&id, &kind, fields)?;
            ClientRequest::Presence { room: f.room }
        }
        "rpc" => {
            let f: Rpc = fields_of(&id, &kind, fields)?;
            if id.is_none() {
                return Err(FrameError::bad(None, "rpc: missing field `id`"));
            }
            if f.method.is_empty() || f.method.len() > MAX_RPC_METHOD_BYTES {
                return Err(FrameError::bad(
                    id,
                    format!("rpc: `method` must be 1 to {MAX_RPC_METHOD_BYTES} bytes"),
                ));
            }
            let data = serde_json::value::to_raw_value(&f.data)
                .map_err(|e| FrameError::bad(id.clone(), format!("rpc: data: {e}")))?;
            ClientRequest::Rpc {
                method: f.method,
                data,
            }
        }
        "ping" => ClientRequest::Ping,
        other => {
            let mut shown: String = other.chars().take(64).collect();
            if shown.len() < other.len() {
                shown.push('…');
            }
            return Err(FrameError {
                id,
                code: ErrorCode::UnknownType,
                message: format!("unknown frame type `{shown}`"),
            });
        }
    };
    Ok((id, request))
}

fn fields_of<T: serde::de::DeserializeOwned>(
    id: &Option<RequestId>,
    kind: &str,
    fields: Value,
) -> Result<T, FrameError> {
    serde_json::from_value(fields).map_err(|e| FrameError::bad(id.clone(), format!("{kind}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_join_with_since_and_numeric_id() {
        let (id, req) = parse_client_frame(
            r#"{"type":"join_room","id":7,"room":"project:1","since":{"epoch":"e","offset":3}}"#,
        )
        .expect("valid frame");
        assert_eq!(id, Some(RequestId::Number(7.into())));
        match req {
            ClientRequest::JoinRoom { room, since } => {
                assert_eq!(room, "project:1");
                assert_eq!(since, Some(StreamPosition::new("e", 3)));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn missing_field_keeps_id_and_names_field() {
        let err = parse_client_frame(r#"{"type":"join_room","id":"a"}"#).unwrap_err();
        assert_eq!(err.id, Some(RequestId::String("a".into())));
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains("room"), "{}", err.message);
    }

    #[test]
    fn wrong_type_of_field_is_bad_request() {
        let err = parse_client_frame(r#"{"type":"leave_room","id":1,"room":5}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains("invalid type"), "{}", err.message);
    }

    #[test]
    fn unknown_type_is_reported() {
        let err = parse_client_frame(r#"{"type":"dance","id":2}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownType);
        assert_eq!(err.id, Some(RequestId::Number(2.into())));
    }

    #[test]
    fn malformed_json_and_non_objects_are_bad_requests() {
        for text in ["{", "[]", "42", "\"x\"", ""] {
            let err = parse_client_frame(text).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest, "{text}");
            assert_eq!(err.id, None);
        }
    }

    #[test]
    fn long_or_odd_ids_are_rejected() {
        let long = "x".repeat(65);
        let err = parse_client_frame(&format!(r#"{{"type":"ping","id":"{long}"}}"#)).unwrap_err();
        assert!(err.message.contains("64"));
        let err = parse_client_frame(r#"{"type":"ping","id":[1]}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
    }

    #[test]
    fn parses_presence() {
        let (id, req) =
            parse_client_frame(r#"{"type":"presence","id":4,"room":"chat:1"}"#).expect("valid");
        assert_eq!(id, Some(RequestId::Number(4.into())));
        assert!(matches!(req, ClientRequest::Presence { room } if room == "chat:1"));
        let err = parse_client_frame(r#"{"type":"presence","id":5}"#).unwrap_err();
        assert!(err.message.contains("room"), "{}", err.message);
    }

    #[test]
    fn send_message_keeps_raw_data() {
        let (_, req) =
            parse_client_frame(r#"{"type":"send_message","room":"r","data":{"a": [1, 2]}}"#)
                .expect("valid");
        match req {
            ClientRequest::SendMessage { data, event, .. } => {
                assert_eq!(data.get(), r#"{"a":[1,2]}"#);
                assert_eq!(event, None);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn parses_rpc() {
        let (id, req) =
            parse_client_frame(r#"{"type":"rpc","id":3,"method":"select","data":{"chat":9}}"#)
                .expect("valid");
        assert_eq!(id, Some(RequestId::Number(3.into())));
        match req {
            ClientRequest::Rpc { method, data } => {
                assert_eq!(method, "select");
                assert_eq!(data.get(), r#"{"chat":9}"#);
            }
            other => panic!("unexpected {other:?}"),
        }
        let (_, req) =
            parse_client_frame(r#"{"type":"rpc","id":"a","method":"m"}"#).expect("valid");
        assert!(matches!(req, ClientRequest::Rpc { data, .. } if data.get() == "null"));
    }

    #[test]
    fn rpc_needs_an_id_and_a_short_method() {
        let err = parse_client_frame(r#"{"type":"rpc","method":"m"}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains("`id`"), "{}", err.message);
        let err = parse_client_frame(r#"{"type":"rpc","id":1,"method":""}"#).unwrap_err();
        assert_eq!(err.id, Some(RequestId::Number(1.into())));
        assert!(err.message.contains("128"), "{}", err.message);
        let long = "m".repeat(MAX_RPC_METHOD_BYTES + 1);
        let frame = format!(r#"{{"type":"rpc","id":1,"method":"{long}"}}"#);
        assert!(parse_client_frame(&frame).is_err());
        let frame = format!(r#"{{"type":"rpc","id":1,"method":"{}"}}"#, &long[1..]);
        assert!(parse_client_frame(&frame).is_ok());
        let err = parse_client_frame(r#"{"type":"rpc","id":1}"#).unwrap_err();
        assert!(err.message.contains("method"), "{}", err.message);
        let err = parse_client_frame(r#"{"type":"rpc","id":1,"method":5}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
    }
}
