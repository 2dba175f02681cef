//! Messages on a room's delivery subject besides its publications:
//! presence changes, published by the node where a member joined or left
//! (or by the survivor that reaped a dead node's members).
//!
//! A presence change is a core NATS message on
//! [`crate::names::Names::delivery_subject`] with the header
//! `Herald-Presence: join` or `leave` and the body
//! `{"user_id","connection_id","node_id"}`. Publications carry no such
//! header. A node drops the changes whose `node_id` is its own (its
//! members were told by the node itself).

use async_nats::HeaderMap;
use bytes::Bytes;
use herald_core::{PresenceChange, RoomKey};
use serde::{Deserialize, Serialize};

/// The header that marks a presence change.
pub const PRESENCE_HEADER: &str = "Herald-Presence";

#[derive(Serialize, Deserialize)]
struct PresenceBody<'a> {
    user_id: std::borrow::Cow<'a, str>,
    connection_id: std::borrow::Cow<'a, str>,
    node_id: std::borrow::Cow<'a, str>,
}

/// The headers and body of a presence change (its room is the subject's).
pub fn encode_presence(change: &PresenceChange) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(
        PRESENCE_HEADER,
        if change.joined { "join" } else { "leave" },
    );
    let body = PresenceBody {
        user_id: change.user_id.as_str().into(),
        connection_id: change.connection_id.as_str().into(),
        node_id: change.node_id.as_str().into(),
    };
    // Serializing three strings cannot fail.
    let body = serde_json::to_vec(&body).unwrap_or_default();
    (headers, Bytes::from(body))
}

/// Whether a message on a delivery subject is a presence change.
pub fn is_presence(headers: Option<&HeaderMap>) -> bool {
    headers.is_some_and(|h| h.get(PRESENCE_HEADER).is_some())
}

/// The presence change a message carries, for `room`; `None` when the
/// message is not a well-formed presence change.
pub fn decode_presence(
    room: &RoomKey,
    headers: Option<&HeaderMap>,
    body: &[u8],
) -> Option<PresenceChange> {
    let joined = match headers?.get(PRESENCE_HEADER)?.as_str() {
        "join" => true,
        "leave" => false,
        _ => return None,
    };
    let body: PresenceBody<'_> = serde_json::from_slice(body).ok()?;
    Some(PresenceChange {
        room: room.clone(),
        joined,
        user_id: body.user_id.into_owned(),
        connection_id: body.connection_id.into_owned(),
        node_id: body.node_id.into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{RoomName, Tenant};

    #[test]
    fn presence_changes_round_trip() {
        let room = RoomKey::new(
            Tenant::default_tenant(),
            RoomName::parse("chat:1").expect("room"),
        );
        for joined in [true, false] {
            let change = PresenceChange {
                room: room.clone(),
                joined,
                user_id: "42".into(),
                connection_id: "c-1".into(),
                node_id: "n1".into(),
            };
            let (headers, body) = encode_presence(&change);
            assert!(is_presence(Some(&headers)));
            assert_eq!(decode_presence(&room, Some(&headers), &body), Some(change));
        }
        assert!(!is_presence(None));
        assert_eq!(decode_presence(&room, None, b"{}"), None);
    }
}
