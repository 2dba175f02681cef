//! Herald over MessagePack (`herald.v1.msgpack`, docs/protocol.md
//! "MessagePack encoding"): the same frames as Herald JSON, each a
//! MessagePack map with the same keys and values, in binary WebSocket
//! messages.
//!
//! A room event's `data` (the publisher's JSON, kept verbatim) is streamed
//! into MessagePack values once per event, when the event's frame is
//! encoded for this codec's slot, so msgpack clients get native maps,
//! numbers and strings. A client's message is read into the JSON value the
//! JSON codec would have parsed, then checked by the same rules; values
//! JSON cannot carry are refused (see [`crate::msgpack_to_json`]).

use crate::client::{parse_client_map, request_id_of, FrameError};
use crate::codec::{ClientCodec, ClientFrame};
use crate::msgpack_json::msgpack_to_object;
use crate::server::{DirectFrame, PublicationFrame};
use crate::{RequestId, Sender, ServerFrame};
use bytes::Bytes;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

/// The WebSocket subprotocol of Herald JSON.
pub const SUBPROTOCOL_JSON: &str = "herald.v1.json";

/// The WebSocket subprotocol of Herald over MessagePack.
pub const SUBPROTOCOL_MSGPACK: &str = "herald.v1.msgpack";

/// Herald's frames in MessagePack binary messages.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeraldMsgpack;

/// The MessagePack codec, for `&'static dyn ClientCodec` holders.
pub static HERALD_MSGPACK: HeraldMsgpack = HeraldMsgpack;

/// `{"type":"error","code":"internal","message":"frame encoding failed"}`
/// in MessagePack, for the encoding failure that cannot happen.
const ENCODING_FAILED: &[u8] =
    b"\x83\xa4type\xa5error\xa4code\xa8internal\xa7message\xb5frame encoding failed";

/// The codec a WebSocket subprotocol names, if Herald speaks it.
pub fn codec_of_subprotocol(name: &str) -> Option<&'static dyn ClientCodec> {
    match name {
        SUBPROTOCOL_JSON => Some(&crate::HERALD_JSON),
        SUBPROTOCOL_MSGPACK => Some(&HERALD_MSGPACK),
        _ => None,
    }
}

impl ClientCodec for HeraldMsgpack {
    fn name(&self) -> &'static str {
        "msgpack"
    }

    fn slot(&self) -> usize {
        2
    }

    fn binary(&self) -> bool {
        true
    }

    fn decode(&self, message: &[u8]) -> Result<ClientFrame, FrameError> {
        match msgpack_to_object(message) {
            Ok(map) => parse_client_map(map),
            Err((mut read, e)) => {
                // The id, when it was read before the bad field, names
                // the request the error answers.
                let id = request_id_of(read.remove("id")).unwrap_or(None);
                Err(FrameError::bad(id, e.message))
            }
        }
    }

    fn encode(&self, frame: &ServerFrame) -> Bytes {
        let encoded = match frame {
            ServerFrame::RpcResult { id, data } => {
                return with_data(data, 64 + data.get().len(), |data| RpcResult {
                    kind: "rpc_result",
                    id,
                    data,
                });
            }
            other => rmp_serde::to_vec_named(other),
        };
        encoded.map_or_else(|_| Bytes::from_static(ENCODING_FAILED), Bytes::from)
    }

    fn encode_publication(&self, frame: &PublicationFrame<'_>) -> Bytes {
        let len = 96 + frame.data.get().len() + frame.room.len() + frame.event.len();
        with_data(frame.data, len, |data| Publication {
            kind: frame.kind,
            room: frame.room,
            event: frame.event,
            data,
            epoch: frame.epoch,
            offset: frame.offset,
            ts: frame.ts,
            event_id: frame.event_id,
            from: frame.from,
        })
    }

    fn encode_direct(&self, frame: &DirectFrame<'_>) -> Bytes {
        let len = 64 + frame.data.get().len() + frame.event.len();
        with_data(frame.data, len, |data| Direct {
            kind: frame.kind,
            room: frame.room,
            event: frame.event,
            data,
            ts: frame.ts,
            event_id: frame.event_id,
        })
    }
}

/// `value` as a MessagePack map, into a buffer of about `len` bytes.
fn write<T: Serialize>(value: &T, len: usize) -> Bytes {
    let mut buf = Vec::with_capacity(len);
    let mut serializer = rmp_serde::Serializer::new(&mut buf).with_struct_map();
    match value.serialize(&mut serializer) {
        Ok(()) => Bytes::from(buf),
        Err(_) => Bytes::from_static(ENCODING_FAILED),
    }
}

/// The frame `frame(data)` as a MessagePack map, with `data` transcoded to
/// native values; when serde_json cannot read `data` as values (a lone
/// surrogate escape, a number beyond float64: valid JSON text that some
/// parsers refuse), `data` is sent as a str holding its JSON text rather
/// than losing the event (docs/protocol.md 12.2).
fn with_data<'a, T: Serialize>(
    data: &'a RawValue,
    len: usize,
    frame: impl Fn(Transcoded<'a>) -> T,
) -> Bytes {
    let mut buf = Vec::with_capacity(len);
    let mut serializer = rmp_serde::Serializer::new(&mut buf).with_struct_map();
    if frame(Transcoded {
        json: data,
        as_text: false,
    })
    .serialize(&mut serializer)
    .is_ok()
    {
        return Bytes::from(buf);
    }
    write(
        &frame(Transcoded {
            json: data,
            as_text: true,
        }),
        len,
    )
}

/// JSON text written as the MessagePack values it holds, streamed (no
/// tree): objects become maps, integers integers, other numbers floats;
/// or, `as_text`, as one str of the JSON text.
struct Transcoded<'a> {
    json: &'a RawValue,
    as_text: bool,
}

impl Serialize for Transcoded<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.as_text {
            return serializer.serialize_str(self.json.get());
        }
        let mut json = serde_json::Deserializer::from_str(self.json.get());
        serde_transcode::transcode(&mut json, serializer)
    }
}

/// The `rpc_result` frame with its `data` as MessagePack values.
#[derive(Serialize)]
struct RpcResult<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a RequestId,
    data: Transcoded<'a>,
}

/// A room event's frame with its `data` as MessagePack values; the same
/// fields as [`PublicationFrame`].
#[derive(Serialize)]
struct Publication<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    event: &'a str,
    data: Transcoded<'a>,
    epoch: &'a str,
    offset: u64,
    ts: u64,
    event_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a Sender>,
}

/// A direct message's frame with its `data` as MessagePack values; the
/// same fields as [`DirectFrame`].
#[derive(Serialize)]
struct Direct<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: Option<&'a str>,
    event: &'a str,
    data: Transcoded<'a>,
    ts: u64,
    event_id: &'a str,
}

#[cfg(test)]
#[path = "msgpack_tests.rs"]
mod tests;
