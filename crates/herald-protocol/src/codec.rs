//! Client codecs: how a connection's frames look on the wire.
//!
//! The protocol's requests and replies ([`ClientRequest`], [`ServerFrame`],
//! [`PublicationFrame`]) are independent of their encoding; a codec turns a
//! client's message into a request and a server frame into bytes: Herald
//! JSON ([`HeraldJson`], slot 0), Socket.IO (slot 1, in herald-socketio)
//! and MessagePack ([`crate::HeraldMsgpack`], slot 2).

use crate::server::{DirectFrame, PublicationFrame};
use crate::{ClientRequest, ErrorCode, FrameError, RequestId, ServerFrame};
use bytes::Bytes;

/// A decoded client message: its request id (when it had one) and request.
pub type ClientFrame = (Option<RequestId>, ClientRequest);

/// How many codecs can have their publication frames cached on a
/// publication (see [`ClientCodec::slot`]).
pub const CODEC_SLOTS: usize = 4;

/// Encodes and decodes one wire format of the client protocol. Object safe:
/// a connection holds a `&'static dyn ClientCodec`.
pub trait ClientCodec: Send + Sync + std::fmt::Debug + 'static {
    /// Short name, e.g. `json`, for logs and negotiation.
    fn name(&self) -> &'static str;

    /// The codec's place in a publication's encode cache: distinct for
    /// every codec, below [`CODEC_SLOTS`] (a codec at or past it is not
    /// cached and encodes every event once per recipient).
    fn slot(&self) -> usize;

    /// Whether frames are binary (a WebSocket binary opcode) rather than
    /// UTF-8 text.
    fn binary(&self) -> bool;

    /// Decodes one client message. On failure the [`FrameError`] carries
    /// the request id when one could be read, so the request gets its reply.
    fn decode(&self, message: &[u8]) -> Result<ClientFrame, FrameError>;

    /// Encodes a control frame. Encoding cannot fail for the protocol's own
    /// types; a codec reports a bug as an `internal` error frame, not a panic.
    fn encode(&self, frame: &ServerFrame) -> Bytes;

    /// Encodes a room event (`event` or `message`). Called once per event
    /// and codec; every recipient shares the bytes.
    fn encode_publication(&self, frame: &PublicationFrame<'_>) -> Bytes;

    /// Encodes a direct message (an `event` with no room and no position).
    /// Called once per message and codec on each node; its recipients
    /// there share the bytes.
    fn encode_direct(&self, frame: &DirectFrame<'_>) -> Bytes;
}

/// Herald's JSON text frames (PROTOCOL.md 3).
#[derive(Debug, Clone, Copy, Default)]
pub struct HeraldJson;

/// The Herald JSON codec, for `&'static dyn ClientCodec` holders.
pub static HERALD_JSON: HeraldJson = HeraldJson;

impl ClientCodec for HeraldJson {
    fn name(&self) -> &'static str {
        "json"
    }

    fn slot(&self) -> usize {
        0
    }

    fn binary(&self) -> bool {
        false
    }

    fn decode(&self, message: &[u8]) -> Result<ClientFrame, FrameError> {
        let text = std::str::from_utf8(message).map_err(|_| FrameError {
            id: None,
            code: ErrorCode::BadRequest,
            message: "text frame is not valid UTF-8".into(),
        })?;
        crate::parse_client_frame(text)
    }

    fn encode(&self, frame: &ServerFrame) -> Bytes {
        crate::encode(frame)
    }

    fn encode_publication(&self, frame: &PublicationFrame<'_>) -> Bytes {
        crate::server::encode_publication_frame(frame)
    }

    fn encode_direct(&self, frame: &DirectFrame<'_>) -> Bytes {
        crate::server::encode_direct_frame(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StreamPosition;
    use serde_json::value::RawValue;

    #[test]
    fn json_codec_round_trips_the_contract() {
        let codec: &dyn ClientCodec = &HERALD_JSON;
        let (id, request) = codec
            .decode(br#"{"type":"ping","id":3}"#)
            .expect("valid frame");
        assert!(matches!(request, ClientRequest::Ping));
        assert_eq!(id, Some(RequestId::Number(3.into())));
        let (_, request) = codec
            .decode(br#"{"type":"presence","id":4,"room":"r"}"#)
            .expect("presence request");
        assert!(matches!(request, ClientRequest::Presence { room } if room == "r"));
        let presence = codec.encode(&ServerFrame::Presence {
            id: Some(RequestId::Number(4.into())),
            room: "r".into(),
            members: Vec::new(),
        });
        assert_eq!(
            &presence[..],
            br#"{"type":"presence","id":4,"room":"r","members":[]}"#
        );
        let err = codec.decode(b"\xff").expect_err("not UTF-8");
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert_eq!(
            &codec.encode(&ServerFrame::Pong { id: None })[..],
            br#"{"type":"pong"}"#
        );
        let data = RawValue::from_string("7".into()).expect("raw");
        let position = StreamPosition::new("e", 2);
        let frame = PublicationFrame::new("r", "x", &data, &position, 1, "id", None);
        let bytes = codec.encode_publication(&frame);
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["type"], "event");
        assert_eq!(v["data"], 7);
        assert_eq!(v["offset"], 2);
    }
}
