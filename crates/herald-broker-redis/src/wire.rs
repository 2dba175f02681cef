//! What travels on a room's channel: one tag byte, then JSON.
//!
//! - `p` + a publication: the publish script builds it by splicing the
//!   offset and epoch it assigned in front of the JSON the node prepared
//!   (see [`PublicationWire`]); the same bytes are stored in the stream.
//! - `m` + a presence change ([`PresenceWire`]).

use herald_core::{PresenceChange, Publication, RoomKey, RoomName, Tenant, TraceContext};
use herald_protocol::{Sender, StreamPosition};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;

/// Tag of a publication message.
pub const TAG_PUBLICATION: u8 = b'p';
/// Tag of a presence message.
pub const TAG_PRESENCE: u8 = b'm';

/// A publication as stored in a room's stream and sent on its channel.
/// Short field names: this is per event, per node.
#[derive(Debug, Serialize, Deserialize)]
pub struct PublicationWire<'a> {
    /// Offset, assigned by the publish script.
    pub o: u64,
    /// Epoch, assigned by the publish script.
    #[serde(borrow)]
    pub e: std::borrow::Cow<'a, str>,
    /// Tenant.
    #[serde(borrow)]
    pub t: std::borrow::Cow<'a, str>,
    /// Room name.
    #[serde(borrow)]
    pub r: std::borrow::Cow<'a, str>,
    /// Event name.
    #[serde(borrow)]
    pub n: std::borrow::Cow<'a, str>,
    /// Payload, verbatim.
    #[serde(borrow)]
    pub d: &'a RawValue,
    /// Accepted at, ms since the Unix epoch.
    pub ts: u64,
    /// Event id.
    #[serde(borrow)]
    pub id: std::borrow::Cow<'a, str>,
    /// Sender, for `message` frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f: Option<Sender>,
    /// Connection that must not receive it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// Node that published it.
    #[serde(borrow)]
    pub nd: std::borrow::Cow<'a, str>,
    /// Accepted at, µs since the Unix epoch: the delivering node's latency
    /// histogram measures from it (across hosts, as exact as their clocks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tu: Option<u64>,
    /// The publishing node's `broker.publish` span, as a W3C `traceparent`
    /// (only on traced publications; older nodes neither write nor read it).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub tp: Option<std::borrow::Cow<'a, str>>,
    /// Critical under backpressure (written only when true; older
    /// messages decode as not critical).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cr: bool,
    /// Conflation key (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ck: Option<String>,
}

/// When a publication accepted at `accepted_us` (µs since the Unix epoch,
/// by the wall clock) was accepted, on this process's monotonic clock.
fn local_instant(accepted_us: u64) -> Option<std::time::Instant> {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_micros();
    let age = u64::try_from(now_us).ok()?.saturating_sub(accepted_us);
    std::time::Instant::now().checked_sub(std::time::Duration::from_micros(age))
}

/// Why a message on a room channel could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Empty, or an unknown tag.
    #[error("unknown message tag")]
    UnknownTag,
    /// Not the JSON expected.
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
    /// A room name that does not parse.
    #[error("bad room name: {0}")]
    Room(String),
}

impl PublicationWire<'_> {
    /// The node-side publication. `accepted_at` is set by the caller when
    /// this node published it.
    pub fn into_publication(self) -> Result<Publication, WireError> {
        let name = RoomName::parse(&self.r).map_err(|e| WireError::Room(e.to_string()))?;
        Ok(Publication {
            room: RoomKey::new(Tenant::from_option(Some(&self.t)), name),
            position: StreamPosition::new(self.e.into_owned(), self.o),
            event: self.n.into_owned(),
            data: self.d.to_owned(),
            ts: self.ts,
            event_id: self.id.into_owned(),
            from: self.f,
            exclude_connection: self.x,
            accepted_at: self.tu.and_then(local_instant),
            encoded: Default::default(),
            // A malformed value (from a foreign writer) only loses the trace.
            trace: self.tp.as_deref().and_then(TraceContext::parse_traceparent),
            critical: self.cr,
            conflation_key: self.ck,
            policy: Default::default(),
        })
    }
}

/// Decodes a stored or announced publication (without its tag byte).
pub fn decode_publication(json: &[u8]) -> Result<(Publication, String), WireError> {
    let wire: PublicationWire<'_> = serde_json::from_slice(json)?;
    let node = wire.nd.to_string();
    Ok((wire.into_publication()?, node))
}

/// A presence change on a room channel.
#[derive(Debug, Serialize, Deserialize)]
pub struct PresenceWire {
    /// Tenant.
    pub t: String,
    /// Room name.
    pub r: String,
    /// Joined (true) or left.
    pub j: bool,
    /// User.
    pub u: String,
    /// Connection.
    pub c: String,
    /// Node holding the connection.
    pub nd: String,
}

/// Encodes a presence change with its tag byte.
pub fn encode_presence(change: &PresenceChange) -> Vec<u8> {
    let wire = PresenceWire {
        t: change.room.tenant.as_str().to_owned(),
        r: change.room.name.as_str().to_owned(),
        j: change.joined,
        u: change.user_id.clone(),
        c: change.connection_id.clone(),
        nd: change.node_id.clone(),
    };
    let mut out = vec![TAG_PRESENCE];
    // Serializing plain strings and a bool cannot fail.
    if serde_json::to_writer(&mut out, &wire).is_err() {
        out.truncate(1);
    }
    out
}

/// Decodes a presence change (without its tag byte).
pub fn decode_presence(json: &[u8]) -> Result<PresenceChange, WireError> {
    let w: PresenceWire = serde_json::from_slice(json)?;
    let name = RoomName::parse(&w.r).map_err(|e| WireError::Room(e.to_string()))?;
    Ok(PresenceChange {
        room: RoomKey::new(Tenant::from_option(Some(&w.t)), name),
        joined: w.j,
        user_id: w.u,
        connection_id: w.c,
        node_id: w.nd,
    })
}

/// One message read off a room channel.
#[derive(Debug)]
pub enum RoomMessage {
    /// A publication, with the node that published it.
    Publication(Arc<Publication>, String),
    /// A presence change.
    Presence(PresenceChange),
}

/// Decodes a message of a room channel.
pub fn decode_room_message(bytes: &[u8]) -> Result<RoomMessage, WireError> {
    match bytes.split_first() {
        Some((&TAG_PUBLICATION, rest)) => {
            let (p, node) = decode_publication(rest)?;
            Ok(RoomMessage::Publication(Arc::new(p), node))
        }
        Some((&TAG_PRESENCE, rest)) => Ok(RoomMessage::Presence(decode_presence(rest)?)),
        _ => Err(WireError::UnknownTag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_round_trips() {
        let change = PresenceChange {
            room: RoomKey::new(
                Tenant::from_option(Some("acme")),
                RoomName::parse("project:7").expect("room"),
            ),
            joined: true,
            user_id: "42".into(),
            connection_id: "c1".into(),
            node_id: "n1".into(),
        };
        match decode_room_message(&encode_presence(&change)).expect("decodes") {
            RoomMessage::Presence(back) => assert_eq!(back, change),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_spliced_publication_decodes_with_its_payload_verbatim() {
        let msg = br#"p{"o":7,"e":"ab12","t":"","r":"project:7","n":"updated","d":{"x":1.50},"ts":1,"id":"e1","nd":"n2"}"#;
        match decode_room_message(msg).expect("decodes") {
            RoomMessage::Publication(p, node) => {
                assert_eq!(p.position.offset, 7);
                assert_eq!(p.data.get(), r#"{"x":1.50}"#);
                assert_eq!(node, "n2");
                assert_eq!(p.trace, None, "no tp: no trace");
                assert!(!p.critical, "no cr: not critical");
                assert_eq!(p.conflation_key, None, "no ck: no key");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_publication_carries_its_traceparent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let msg = format!(
            r#"p{{"o":7,"e":"ab12","t":"","r":"r","n":"u","d":1,"ts":1,"id":"e1","nd":"n2","tp":"{tp}"}}"#
        );
        match decode_room_message(msg.as_bytes()).expect("decodes") {
            RoomMessage::Publication(p, _) => {
                assert_eq!(p.trace.map(|t| t.to_traceparent()).as_deref(), Some(tp));
            }
            other => panic!("{other:?}"),
        }
        let bad = br#"p{"o":7,"e":"ab12","t":"","r":"r","n":"u","d":1,"ts":1,"id":"e1","nd":"n2","tp":"junk"}"#;
        match decode_room_message(bad).expect("a bad traceparent still decodes") {
            RoomMessage::Publication(p, _) => assert_eq!(p.trace, None),
            other => panic!("{other:?}"),
        }
    }
}
