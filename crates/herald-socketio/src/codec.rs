//! [`SocketIoCodec`]: Herald's protocol as Socket.IO events and acks.
//!
//! Client requests are events with an ack id: `emit("join_room", {room},
//! ack)` arrives as `2<id>["join_room",{"room":..}]` and is decoded into the
//! same [`ClientRequest`] a Herald JSON frame would be, the ack id becoming
//! [`RequestId::Number`]. A reply to a request with an id is an ACK,
//! `43<id>[{reply}]`, whose argument is Herald's reply object without
//! `type` and `id`; a frame without an id is an event named by its type,
//! so `emit("rpc", {method, data}, ack)` gets `{"data": <answer>}` or
//! `{"code", "message"}` in its ack (an `rpc` needs the ack);
//! `42["room_joined",{...}]`. Room events are `42["<event>",<data>,<meta>]`.
//!
//! Every encoding is a complete Engine.IO message packet (the leading `4`
//! included). `room_joined`, `room_left` and `authenticated` answering a
//! request are both an ACK and an event (the event carries the recovery
//! token, which acks cannot): the two packets are joined by
//! [`PACKET_SEPARATOR`], which JSON text never contains, and
//! [`split_packets`] takes them apart. Names Socket.IO reserves
//! (`disconnect`, `connect`, ...) are emitted as `herald:<name>`
//! ([`RESERVED_EVENTS`]).

use crate::packet::{self, write_head, PacketType};
use bytes::Bytes;
use herald_protocol::{
    parse_client_frame, ClientCodec, ClientFrame, DirectFrame, ErrorCode, FrameError,
    PublicationFrame, RequestId, Sender, ServerFrame,
};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Separates the Engine.IO packets of one encoding (the Engine.IO
/// long-polling record separator).
pub const PACKET_SEPARATOR: u8 = 0x1e;

/// Herald's protocol over Socket.IO 5 (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketIoCodec;

/// The Socket.IO codec, for `&'static dyn ClientCodec` holders.
pub static SOCKET_IO: SocketIoCodec = SocketIoCodec;

/// Event names socket.io-client refuses to receive (socket.io-parser's
/// `RESERVED_EVENTS`): a packet with one is a parse error that drops the
/// whole connection, and python-socketio would call its own handlers. An
/// event with one of these names (a room event, or Herald's `disconnect`)
/// is emitted as [`RESERVED_PREFIX`] + the name.
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// The prefix of an event whose name Socket.IO reserves.
pub const RESERVED_PREFIX: &str = "herald:";

/// The name an event is emitted under (see [`RESERVED_EVENTS`]).
pub fn event_name(name: &str) -> std::borrow::Cow<'_, str> {
    if RESERVED_EVENTS.contains(&name) {
        format!("{RESERVED_PREFIX}{name}").into()
    } else {
        name.into()
    }
}

/// Replies that are also emitted as events when they answer an ack, so the
/// client's recovery token follows every change of its rooms.
const ALSO_EVENTS: [&str; 3] = ["room_joined", "room_left", "authenticated"];

fn bad(id: &Option<RequestId>, message: impl Into<String>) -> FrameError {
    FrameError {
        id: id.clone(),
        code: ErrorCode::BadRequest,
        message: message.into(),
    }
}

impl ClientCodec for SocketIoCodec {
    fn name(&self) -> &'static str {
        "socketio"
    }

    fn slot(&self) -> usize {
        1
    }

    fn binary(&self) -> bool {
        false
    }

    fn decode(&self, message: &[u8]) -> Result<ClientFrame, FrameError> {
        let text = std::str::from_utf8(message)
            .map_err(|_| bad(&None, "Socket.IO packet is not valid UTF-8"))?;
        let packet = packet::parse(text).map_err(|e| bad(&None, e.to_string()))?;
        let id = packet.id.map(|n| RequestId::Number(n.into()));
        if packet.kind.is_binary() {
            return Err(bad(&id, "binary attachments are not supported"));
        }
        if packet.kind != PacketType::Event {
            return Err(bad(
                &id,
                format!(
                    "unexpected Socket.IO packet type {}; requests are events",
                    char::from(packet.kind.digit())
                ),
            ));
        }
        if packet.namespace != "/" {
            return Err(bad(&id, "invalid namespace; Herald serves `/` only"));
        }
        let args: Vec<&RawValue> = packet
            .data
            .and_then(|d| serde_json::from_str(d).ok())
            .ok_or_else(|| bad(&id, "an event's payload must be a JSON array [name, ...]"))?;
        let name: String = args
            .first()
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .ok_or_else(|| bad(&id, "an event's first argument must be its name"))?;
        let mut fields = match args.get(1) {
            None => Map::new(),
            Some(raw) => match serde_json::from_str(raw.get()) {
                Ok(Value::Object(map)) => map,
                _ => {
                    return Err(bad(
                        &id,
                        format!("{}: the payload must be a JSON object", shorten(&name)),
                    ))
                }
            },
        };
        let kind = match name.as_str() {
            // `subscribe` with a room is the join of older clients; with
            // `events` it is Herald's event filter.
            "subscribe" if fields.contains_key("room") => "join_room",
            "join_room" | "leave_room" | "send_message" | "subscribe" | "unsubscribe"
            | "presence" | "authenticate" | "ping" | "rpc" => name.as_str(),
            other => {
                return Err(FrameError {
                    id,
                    code: ErrorCode::UnknownType,
                    message: format!("unknown request `{}`", shorten(other)),
                })
            }
        };
        // The ack id is the request id; an `id` in the payload is not.
        // It goes into the frame for the requests that need one (`rpc`).
        fields.remove("id");
        if let Some(RequestId::Number(n)) = &id {
            fields.insert("id".into(), Value::Number(n.clone()));
        }
        fields.insert("type".into(), Value::String(kind.into()));
        let text = Value::Object(fields).to_string();
        let (_, request) = parse_client_frame(&text).map_err(|e| FrameError {
            id: id.clone(),
            ..e
        })?;
        Ok((id, request))
    }

    fn encode(&self, frame: &ServerFrame) -> Bytes {
        let Ok(Value::Object(mut fields)) = serde_json::to_value(frame) else {
            return internal_error();
        };
        let Some(Value::String(kind)) = fields.remove("type") else {
            return internal_error();
        };
        let ack = match fields.remove("id") {
            Some(Value::Number(n)) => n.as_u64(),
            _ => None,
        };
        let body = Value::Object(fields);
        let mut out = Vec::with_capacity(128);
        if let Some(id) = ack {
            write_head(&mut out, PacketType::Ack, "/", Some(id));
            out.push(b'[');
            json_into(&mut out, &body);
            out.push(b']');
            if !ALSO_EVENTS.contains(&kind.as_str()) {
                return Bytes::from(out);
            }
            out.push(PACKET_SEPARATOR);
        }
        write_head(&mut out, PacketType::Event, "/", None);
        out.push(b'[');
        json_into(&mut out, &*event_name(&kind));
        out.push(b',');
        json_into(&mut out, &body);
        out.push(b']');
        Bytes::from(out)
    }

    fn encode_publication(&self, frame: &PublicationFrame<'_>) -> Bytes {
        let meta = Meta {
            room: frame.room,
            offset: frame.offset,
            epoch: frame.epoch,
            ts: frame.ts,
            event_id: frame.event_id,
            from: frame.from,
        };
        event_packet(frame.event, frame.data.get(), &meta, 128)
    }

    fn encode_direct(&self, frame: &DirectFrame<'_>) -> Bytes {
        let meta = DirectMeta {
            room: frame.room,
            ts: frame.ts,
            event_id: frame.event_id,
        };
        event_packet(frame.event, frame.data.get(), &meta, 96)
    }
}

/// An event packet on the main namespace: `[name, data, meta]`, with
/// `data` (JSON text) copied as is; `meta_len` is room for `meta`.
fn event_packet(event: &str, data: &str, meta: &impl Serialize, meta_len: usize) -> Bytes {
    let mut out = Vec::with_capacity(meta_len + data.len() + event.len());
    write_head(&mut out, PacketType::Event, "/", None);
    out.push(b'[');
    json_into(&mut out, &*event_name(event));
    out.push(b',');
    out.extend_from_slice(data.as_bytes());
    out.push(b',');
    json_into(&mut out, meta);
    out.push(b']');
    Bytes::from(out)
}

/// The third argument of a direct message: `room` is `null` and there is
/// no position (it belongs to no stream).
#[derive(Serialize)]
struct DirectMeta<'a> {
    room: Option<&'a str>,
    ts: u64,
    event_id: &'a str,
}

/// The third argument of a room event.
#[derive(Serialize)]
struct Meta<'a> {
    room: &'a str,
    offset: u64,
    epoch: &'a str,
    ts: u64,
    event_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a Sender>,
}

fn json_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// What a codec bug looks like on the wire: an `error` event, not a panic.
fn internal_error() -> Bytes {
    Bytes::from_static(br#"42["error",{"code":"internal","message":"frame encoding failed"}]"#)
}

fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// The Engine.IO packets of one encoding, sharing its bytes.
pub fn split_packets(bytes: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start > bytes.len() {
            return None;
        }
        let end = bytes[start..]
            .iter()
            .position(|&b| b == PACKET_SEPARATOR)
            .map_or(bytes.len(), |i| start + i);
        let packet = bytes.slice(start..end);
        start = end + 1;
        Some(packet)
    })
}

/// For an event packet (`42[...]`), its bytes without the closing `]`, so
/// that a per-connection tail (`,"<token>"]`) can add one more argument
/// without copying them.
pub fn event_head(packet: &Bytes) -> Option<Bytes> {
    (packet.starts_with(b"42[") && packet.ends_with(b"]")).then(|| packet.slice(..packet.len() - 1))
}

#[cfg(test)]
mod tests;
