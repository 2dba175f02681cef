//! Socket.IO protocol 5 packets, as carried in Engine.IO message packets.
//!
//! A packet is `<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]`:
//! one type digit, for binary packets the number of attachments and a `-`,
//! a namespace other than `/` followed by `,`, the ack id in digits, then
//! the JSON payload (an array for events and acks, an object for CONNECT
//! and CONNECT_ERROR). Parsing borrows from the text and never panics.

use std::fmt;
use thiserror::Error;

/// Longest ack id accepted, in digits (ids are at most `u64`).
const MAX_ID_DIGITS: usize = 19;
/// Most attachments a binary packet may announce.
const MAX_ATTACHMENTS_DIGITS: usize = 6;
/// Longest namespace accepted, in bytes.
pub const MAX_NAMESPACE_BYTES: usize = 256;

/// The type of a Socket.IO packet (its first digit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    /// `0`: connect to a namespace (client) or its acceptance (server).
    Connect,
    /// `1`: leave a namespace.
    Disconnect,
    /// `2`: an event, `[name, ...args]`.
    Event,
    /// `3`: the answer to an event that asked for one.
    Ack,
    /// `4`: a refused CONNECT.
    ConnectError,
    /// `5`: an event with binary attachments.
    BinaryEvent,
    /// `6`: an ack with binary attachments.
    BinaryAck,
}

impl PacketType {
    /// The type's digit.
    pub fn digit(self) -> u8 {
        match self {
            Self::Connect => b'0',
            Self::Disconnect => b'1',
            Self::Event => b'2',
            Self::Ack => b'3',
            Self::ConnectError => b'4',
            Self::BinaryEvent => b'5',
            Self::BinaryAck => b'6',
        }
    }

    fn from_digit(d: u8) -> Option<Self> {
        Some(match d {
            b'0' => Self::Connect,
            b'1' => Self::Disconnect,
            b'2' => Self::Event,
            b'3' => Self::Ack,
            b'4' => Self::ConnectError,
            b'5' => Self::BinaryEvent,
            b'6' => Self::BinaryAck,
            _ => return None,
        })
    }

    /// Whether the packet announces binary attachments.
    pub fn is_binary(self) -> bool {
        matches!(self, Self::BinaryEvent | Self::BinaryAck)
    }
}

/// One parsed packet, borrowing from its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The packet's type.
    pub kind: PacketType,
    /// Number of binary attachments (binary packets only).
    pub attachments: Option<u32>,
    /// The namespace, `/` when the packet named none.
    pub namespace: &'a str,
    /// The ack id, when the sender asked for (or answers) an ack.
    pub id: Option<u64>,
    /// The JSON payload as sent, not yet parsed; `None` when absent.
    pub data: Option<&'a str>,
}

/// Why a packet could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PacketError {
    /// Nothing at all.
    #[error("empty Socket.IO packet")]
    Empty,
    /// The first character is not a packet type.
    #[error("unknown Socket.IO packet type `{0}`")]
    UnknownType(String),
    /// A binary packet without a valid `<n>-` attachment count.
    #[error("binary packet without a valid attachment count")]
    BadAttachments,
    /// The namespace is not followed by `,`, or is too long.
    #[error("malformed namespace (at most {MAX_NAMESPACE_BYTES} bytes, then `,`)")]
    BadNamespace,
    /// The ack id has too many digits.
    #[error("ack id is longer than {MAX_ID_DIGITS} digits")]
    BadId,
}

/// Parses one Socket.IO packet (the Engine.IO message payload, without
/// Engine.IO's leading `4`).
pub fn parse(text: &str) -> Result<Packet<'_>, PacketError> {
    let bytes = text.as_bytes();
    let first = *bytes.first().ok_or(PacketError::Empty)?;
    let kind = PacketType::from_digit(first).ok_or_else(|| {
        PacketError::UnknownType(text.chars().next().map(String::from).unwrap_or_default())
    })?;
    let mut rest = &text[1..];
    let attachments = if kind.is_binary() {
        let digits = leading_digits(rest);
        if digits == 0
            || digits > MAX_ATTACHMENTS_DIGITS
            || rest.as_bytes().get(digits) != Some(&b'-')
        {
            return Err(PacketError::BadAttachments);
        }
        let n = rest[..digits]
            .parse()
            .map_err(|_| PacketError::BadAttachments)?;
        rest = &rest[digits + 1..];
        Some(n)
    } else {
        None
    };
    let namespace = if rest.starts_with('/') {
        match rest.find(',') {
            Some(end) if end <= MAX_NAMESPACE_BYTES => {
                let ns = &rest[..end];
                rest = &rest[end + 1..];
                ns
            }
            // `/x` alone: a namespace with no payload (e.g. `1/admin`).
            None if rest.len() <= MAX_NAMESPACE_BYTES && !rest.contains(['[', '{']) => {
                let ns = rest;
                rest = "";
                ns
            }
            _ => return Err(PacketError::BadNamespace),
        }
    } else {
        "/"
    };
    let digits = leading_digits(rest);
    let id = if digits == 0 {
        None
    } else if digits > MAX_ID_DIGITS {
        return Err(PacketError::BadId);
    } else {
        let id = rest[..digits].parse().map_err(|_| PacketError::BadId)?;
        rest = &rest[digits..];
        Some(id)
    };
    let data = (!rest.is_empty()).then_some(rest);
    Ok(Packet {
        kind,
        attachments,
        namespace,
        id,
        data,
    })
}

fn leading_digits(s: &str) -> usize {
    s.bytes().take_while(u8::is_ascii_digit).count()
}

/// Writes the start of a packet inside an Engine.IO message: `4`, the type
/// digit, the namespace (when not `/`) and the ack id; the caller appends
/// the payload.
pub fn write_head(out: &mut Vec<u8>, kind: PacketType, namespace: &str, id: Option<u64>) {
    out.push(b'4');
    out.push(kind.digit());
    if namespace != "/" {
        out.extend_from_slice(namespace.as_bytes());
        out.push(b',');
    }
    if let Some(id) = id {
        out.extend_from_slice(id.to_string().as_bytes());
    }
}

impl fmt::Display for Packet<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&char::from(self.kind.digit()).to_string())?;
        if let Some(n) = self.attachments {
            write!(f, "{n}-")?;
        }
        // `/` is implied, unless a payload right after it would read as a
        // namespace.
        let ambiguous = self.id.is_none() && self.data.is_some_and(|d| d.starts_with('/'));
        if self.namespace != "/" || ambiguous {
            write!(f, "{},", self.namespace)?;
        }
        if let Some(id) = self.id {
            write!(f, "{id}")?;
        }
        f.write_str(self.data.unwrap_or(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_packet_shapes_of_the_protocol() {
        let p = parse("0").expect("connect");
        assert_eq!(
            (p.kind, p.namespace, p.id, p.data),
            (PacketType::Connect, "/", None, None)
        );
        let p = parse(r#"0{"token":"t"}"#).expect("connect with auth");
        assert_eq!(p.data, Some(r#"{"token":"t"}"#));
        let p = parse(r#"0/admin,{"a":1}"#).expect("namespace");
        assert_eq!(p.namespace, "/admin");
        let p = parse("1/admin").expect("disconnect from a namespace");
        assert_eq!(
            (p.kind, p.namespace, p.data),
            (PacketType::Disconnect, "/admin", None)
        );
        let p = parse(r#"212["join_room",{"room":"a"}]"#).expect("event with ack id");
        assert_eq!((p.kind, p.id), (PacketType::Event, Some(12)));
        assert_eq!(p.data, Some(r#"["join_room",{"room":"a"}]"#));
        let p = parse(r#"2/chat,7["x"]"#).expect("event in a namespace");
        assert_eq!((p.namespace, p.id), ("/chat", Some(7)));
        let p = parse(r#"52-3["up",{"_placeholder":true,"num":0}]"#).expect("binary");
        assert_eq!(
            (p.kind, p.attachments, p.id),
            (PacketType::BinaryEvent, Some(2), Some(3))
        );
        assert_eq!(p.to_string(), r#"52-3["up",{"_placeholder":true,"num":0}]"#);
    }

    #[test]
    fn bad_packets_are_errors_not_panics() {
        assert_eq!(parse(""), Err(PacketError::Empty));
        assert!(matches!(parse("9[]"), Err(PacketError::UnknownType(_))));
        assert!(matches!(parse("é"), Err(PacketError::UnknownType(_))));
        assert_eq!(parse("5[]"), Err(PacketError::BadAttachments));
        assert_eq!(parse("51[]"), Err(PacketError::BadAttachments));
        assert_eq!(
            parse(&format!("2{}[]", "9".repeat(20))),
            Err(PacketError::BadId)
        );
        assert_eq!(parse("2/ns[1]"), Err(PacketError::BadNamespace));
        let long = format!("2/{},[]", "n".repeat(MAX_NAMESPACE_BYTES));
        assert_eq!(parse(&long), Err(PacketError::BadNamespace));
        // Arbitrary prefixes of a valid packet never panic.
        let text = r#"52-/ns,12["é",{"a":[1]}]"#;
        for end in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            let _ = parse(&text[..end]);
        }
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "2/,/b,[1]",
            "2007[1]",
            "1/admin",
            "0/a,/b",
            "52-/x,3[\"a\"]",
            "3[]",
        ] {
            let p = parse(text).expect(text);
            assert_eq!(parse(&p.to_string()), Ok(p), "{text}");
        }
    }

    #[test]
    fn heads_are_engine_io_messages() {
        let mut out = Vec::new();
        write_head(&mut out, PacketType::Ack, "/", Some(5));
        assert_eq!(out, b"435");
        out.clear();
        write_head(&mut out, PacketType::ConnectError, "/x", None);
        assert_eq!(out, b"44/x,");
    }
}
