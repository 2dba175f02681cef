//! Engine.IO protocol 4, the transport layer under Socket.IO: packets, the
//! long-polling payloads that carry several of them, the handshake (open
//! packet) and the HTTP error bodies Engine.IO servers answer with.
//!
//! A packet is its type as one ASCII digit followed by its data:
//! `4hello` is a message, `2` a ping, `3probe` the pong of an upgrade probe.
//! On WebSocket each text frame is one packet and a binary frame is a binary
//! message. A polling payload joins packets with the record separator
//! `\x1e`; a binary message there is `b` followed by its base64.

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

/// The Engine.IO protocol version this module speaks (`EIO=4`).
pub const PROTOCOL: u8 = 4;

/// Separates packets in a long-polling payload.
pub const SEPARATOR: u8 = 0x1e;

/// The type of a packet, and its digit on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    /// `0`: the handshake, server to client.
    Open,
    /// `1`: the session ends.
    Close,
    /// `2`: ping (server to client; `2probe` from a client probing an upgrade).
    Ping,
    /// `3`: pong.
    Pong,
    /// `4`: a message for the layer above.
    Message,
    /// `5`: the client switches to the probed transport.
    Upgrade,
    /// `6`: nothing; releases a pending long-polling request.
    Noop,
}

impl PacketType {
    /// The type whose ASCII digit is `byte`.
    pub fn from_digit(byte: u8) -> Option<Self> {
        Some(match byte {
            b'0' => Self::Open,
            b'1' => Self::Close,
            b'2' => Self::Ping,
            b'3' => Self::Pong,
            b'4' => Self::Message,
            b'5' => Self::Upgrade,
            b'6' => Self::Noop,
            _ => return None,
        })
    }

    /// The ASCII digit of this type.
    pub fn digit(self) -> u8 {
        match self {
            Self::Open => b'0',
            Self::Close => b'1',
            Self::Ping => b'2',
            Self::Pong => b'3',
            Self::Message => b'4',
            Self::Upgrade => b'5',
            Self::Noop => b'6',
        }
    }
}

/// One Engine.IO packet. Data is shared with the buffer it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// A text packet of `kind` with its data (UTF-8; may be empty).
    Text {
        /// The packet's type.
        kind: PacketType,
        /// What follows the type digit.
        data: Bytes,
    },
    /// A binary message (a binary WebSocket frame, or `b<base64>` in a
    /// polling payload).
    Binary(Bytes),
}

impl Packet {
    /// A text packet.
    pub fn text(kind: PacketType, data: impl Into<Bytes>) -> Self {
        Self::Text {
            kind,
            data: data.into(),
        }
    }

    /// The packet's type (`Message` for a binary one).
    pub fn kind(&self) -> PacketType {
        match self {
            Self::Text { kind, .. } => *kind,
            Self::Binary(_) => PacketType::Message,
        }
    }

    /// Appends the packet as it appears in a polling payload (binary as
    /// `b<base64>`), without a separator.
    pub fn encode_into(&self, out: &mut BytesMut) {
        match self {
            Self::Text { kind, data } => {
                out.reserve(1 + data.len());
                out.put_u8(kind.digit());
                out.put_slice(data);
            }
            Self::Binary(data) => {
                out.put_u8(b'b');
                out.put_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(data)
                        .as_bytes(),
                );
            }
        }
    }
}

/// Why bytes from a client are not a valid packet or payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A packet with no bytes at all (an empty frame, or `\x1e\x1e`).
    #[error("empty packet")]
    Empty,
    /// The first byte is not a packet type (`0`-`6`, or `b` in a payload).
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    /// A text packet or payload that is not UTF-8.
    #[error("packet is not UTF-8")]
    InvalidUtf8,
    /// `b` followed by something that is not base64.
    #[error("binary packet is not valid base64")]
    InvalidBase64,
}

/// Parses one packet of a WebSocket text frame (no `b` form there).
pub fn decode_packet(frame: Bytes) -> Result<Packet, ParseError> {
    let Some(&first) = frame.first() else {
        return Err(ParseError::Empty);
    };
    let kind = PacketType::from_digit(first).ok_or(ParseError::UnknownType(first as char))?;
    if std::str::from_utf8(&frame[1..]).is_err() {
        return Err(ParseError::InvalidUtf8);
    }
    Ok(Packet::Text {
        kind,
        data: frame.slice(1..),
    })
}

/// Parses a long-polling payload (a POST body): packets separated by
/// `\x1e`, binary ones as `b<base64>`. Every packet's data shares `body`.
pub fn decode_payload(body: Bytes) -> Result<Vec<Packet>, ParseError> {
    if std::str::from_utf8(&body).is_err() {
        return Err(ParseError::InvalidUtf8);
    }
    let mut packets = Vec::new();
    let mut start = 0;
    loop {
        let end = body[start..]
            .iter()
            .position(|&b| b == SEPARATOR)
            .map_or(body.len(), |i| start + i);
        let part = body.slice(start..end);
        packets.push(match part.first() {
            Some(b'b') => {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(&part[1..])
                    .map_err(|_| ParseError::InvalidBase64)?;
                Packet::Binary(Bytes::from(data))
            }
            _ => decode_packet(part)?,
        });
        if end == body.len() {
            return Ok(packets);
        }
        start = end + 1;
    }
}

/// Joins encoded packets into one long-polling payload.
pub fn encode_payload<'a>(packets: impl IntoIterator<Item = &'a Packet>) -> Bytes {
    let mut out = BytesMut::new();
    for (i, packet) in packets.into_iter().enumerate() {
        if i > 0 {
            out.put_u8(SEPARATOR);
        }
        packet.encode_into(&mut out);
    }
    out.freeze()
}

/// The open packet's data: what the server tells a new client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Handshake {
    /// The session id, sent back as `sid` by every later request.
    pub sid: String,
    /// Transports the client may upgrade to (`["websocket"]` on polling).
    pub upgrades: Vec<&'static str>,
    /// Milliseconds between server pings.
    pub ping_interval: u64,
    /// Milliseconds the client waits after a ping interval before deciding
    /// the server is gone (and the server waits for the pong).
    pub ping_timeout: u64,
    /// Largest payload (POST body, or WebSocket message) the server takes.
    pub max_payload: u64,
}

impl Handshake {
    /// The complete open packet, `0{"sid":...}`.
    pub fn encode(&self) -> Bytes {
        let mut out = b"0".to_vec();
        // Serialising a struct of strings and integers cannot fail.
        if serde_json::to_writer(&mut out, self).is_err() {
            out.truncate(1);
        }
        Bytes::from(out)
    }
}

/// The errors an Engine.IO server answers a request with (HTTP 400 or 403,
/// body `{"code":N,"message":"..."}`), as the reference server words them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// 0: the `transport` query parameter is missing or not known.
    #[error("Transport unknown")]
    TransportUnknown,
    /// 1: the `sid` is not (or no longer) a session of this server.
    #[error("Session ID unknown")]
    UnknownSid,
    /// 2: a handshake with a method other than GET.
    #[error("Bad handshake method")]
    BadHandshakeMethod,
    /// 3: anything else wrong with the request.
    #[error("Bad request")]
    BadRequest,
    /// 4: refused by the server's policy.
    #[error("Forbidden")]
    Forbidden,
    /// 5: `EIO` is missing or not 4.
    #[error("Unsupported protocol version")]
    UnsupportedProtocolVersion,
}

impl RequestError {
    /// The numeric code of the error body.
    pub fn code(self) -> u8 {
        match self {
            Self::TransportUnknown => 0,
            Self::UnknownSid => 1,
            Self::BadHandshakeMethod => 2,
            Self::BadRequest => 3,
            Self::Forbidden => 4,
            Self::UnsupportedProtocolVersion => 5,
        }
    }

    /// The HTTP status that carries it: 403 for `Forbidden`, else 400.
    pub fn status(self) -> u16 {
        match self {
            Self::Forbidden => 403,
            _ => 400,
        }
    }

    /// The JSON body, `{"code":1,"message":"Session ID unknown"}`.
    pub fn body(self) -> String {
        serde_json::json!({"code": self.code(), "message": self.to_string()}).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(kind: PacketType, data: &'static str) -> Packet {
        Packet::text(kind, Bytes::from_static(data.as_bytes()))
    }

    #[test]
    fn every_type_digit_round_trips() {
        for digit in b'0'..=b'6' {
            let kind = PacketType::from_digit(digit).expect("a type");
            assert_eq!(kind.digit(), digit);
        }
        assert_eq!(PacketType::from_digit(b'7'), None);
        assert_eq!(PacketType::from_digit(b'b'), None);
    }

    #[test]
    fn a_frame_is_one_packet_with_its_data() {
        let packet = decode_packet(Bytes::from_static(b"42[\"a\",1]")).expect("packet");
        assert_eq!(packet, text(PacketType::Message, "2[\"a\",1]"));
        assert_eq!(
            decode_packet(Bytes::from_static(b"2probe")),
            Ok(text(PacketType::Ping, "probe"))
        );
        assert_eq!(
            decode_packet(Bytes::from_static(b"3")),
            Ok(text(PacketType::Pong, ""))
        );
        assert_eq!(decode_packet(Bytes::new()), Err(ParseError::Empty));
        assert_eq!(
            decode_packet(Bytes::from_static(b"9x")),
            Err(ParseError::UnknownType('9'))
        );
        // `b` is a payload form only.
        assert_eq!(
            decode_packet(Bytes::from_static(b"bAQI=")),
            Err(ParseError::UnknownType('b'))
        );
        assert_eq!(
            decode_packet(Bytes::from_static(b"4\xff")),
            Err(ParseError::InvalidUtf8)
        );
    }

    #[test]
    fn a_payload_splits_on_the_record_separator() {
        let body = Bytes::from_static(b"4hello\x1e2\x1ebAQID\x1e4\xc3\xa9t\xc3\xa9");
        let packets = decode_payload(body).expect("payload");
        assert_eq!(
            packets,
            vec![
                text(PacketType::Message, "hello"),
                text(PacketType::Ping, ""),
                Packet::Binary(Bytes::from_static(&[1, 2, 3])),
                text(PacketType::Message, "été"),
            ]
        );
    }

    #[test]
    fn bad_payloads_are_refused() {
        let cases: [(&[u8], ParseError); 6] = [
            (b"", ParseError::Empty),
            (b"4a\x1e", ParseError::Empty),
            (b"4a\x1e\x1e4b", ParseError::Empty),
            (b"4a\x1ex", ParseError::UnknownType('x')),
            (b"b!!!", ParseError::InvalidBase64),
            (b"4\xff", ParseError::InvalidUtf8),
        ];
        for (body, error) in cases {
            assert_eq!(
                decode_payload(Bytes::copy_from_slice(body)),
                Err(error),
                "{body:?}"
            );
        }
    }

    #[test]
    fn payloads_round_trip() {
        let packets = vec![
            text(PacketType::Message, "2[\"x\"]"),
            text(PacketType::Noop, ""),
            Packet::Binary(Bytes::from_static(b"\x00\xffbin")),
            text(PacketType::Close, ""),
        ];
        let body = encode_payload(&packets);
        assert_eq!(&body[..], b"42[\"x\"]\x1e6\x1ebAP9iaW4=\x1e1");
        assert_eq!(decode_payload(body), Ok(packets));
        assert_eq!(
            &encode_payload(&[text(PacketType::Ping, "")])[..],
            b"2",
            "one packet has no separator"
        );
    }

    #[test]
    fn the_handshake_has_the_fields_clients_read() {
        let open = Handshake {
            sid: "abc".into(),
            upgrades: vec!["websocket"],
            ping_interval: 25_000,
            ping_timeout: 20_000,
            max_payload: 1_000_000,
        }
        .encode();
        assert_eq!(open[0], b'0');
        let json: serde_json::Value = serde_json::from_slice(&open[1..]).expect("JSON");
        assert_eq!(
            json,
            serde_json::json!({
                "sid": "abc", "upgrades": ["websocket"], "pingInterval": 25000,
                "pingTimeout": 20000, "maxPayload": 1000000
            })
        );
    }

    #[test]
    fn error_bodies_are_the_reference_servers() {
        assert_eq!(
            RequestError::UnknownSid.body(),
            r#"{"code":1,"message":"Session ID unknown"}"#
        );
        let all = [
            (RequestError::TransportUnknown, 0, "Transport unknown"),
            (RequestError::UnknownSid, 1, "Session ID unknown"),
            (RequestError::BadHandshakeMethod, 2, "Bad handshake method"),
            (RequestError::BadRequest, 3, "Bad request"),
            (RequestError::Forbidden, 4, "Forbidden"),
            (
                RequestError::UnsupportedProtocolVersion,
                5,
                "Unsupported protocol version",
            ),
        ];
        for (error, code, message) in all {
            assert_eq!(error.code(), code);
            assert_eq!(error.to_string(), message);
            assert_eq!(error.status(), if code == 4 { 403 } else { 400 });
        }
    }
}
