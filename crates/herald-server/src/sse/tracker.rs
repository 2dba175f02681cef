//! Where an SSE client stands in each room of its stream, for the `id:` of
//! every message it receives.
//!
//! The rules keep `Last-Event-ID` safe to resume from at any point of the
//! stream: a room moves to an event's offset when that event is written; a
//! room being resumed keeps the client's own position until its replayed
//! events move it on (a `room_joined` with `recovered: true` or the
//! `authenticated` listing does not move it); any other join starts at the
//! room's current position; a room left is dropped.

use super::last_event_id::{self, Positions};
use herald_core::{Publication, RoomName};
use herald_protocol::StreamPosition;
use serde::Deserialize;

/// The positions of one stream's rooms.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    positions: Positions,
}

/// The fields of a control frame that move positions.
#[derive(Deserialize)]
struct Peek {
    #[serde(rename = "type")]
    kind: String,
    room: Option<String>,
    epoch: Option<String>,
    offset: Option<u64>,
    recovered: Option<bool>,
    #[serde(default)]
    rooms: Vec<PeekRoom>,
}

#[derive(Deserialize)]
struct PeekRoom {
    room: String,
    epoch: String,
    offset: u64,
}

impl Tracker {
    /// A tracker starting from the positions a client resumes from.
    pub(crate) fn resuming(positions: Positions) -> Self {
        Self { positions }
    }

    fn set(&mut self, room: &str, epoch: &str, offset: u64) {
        if let Ok(name) = RoomName::parse(room) {
            self.positions
                .insert(name, StreamPosition::new(epoch, offset));
        }
    }

    fn has(&self, room: &str) -> bool {
        RoomName::parse(room).is_ok_and(|n| self.positions.contains_key(&n))
    }

    /// Records a written event or message; returns its SSE event type.
    pub(crate) fn on_publication(&mut self, p: &Publication) -> String {
        self.set(p.room.name.as_str(), &p.position.epoch, p.position.offset);
        if p.from.is_some() { "message" } else { "event" }.to_owned()
    }

    /// Records a written control frame; returns its type, or `None` when
    /// the bytes are not a frame (which the node never produces).
    pub(crate) fn on_control(&mut self, frame: &[u8]) -> Option<String> {
        let peek: Peek = serde_json::from_slice(frame).ok()?;
        match (peek.kind.as_str(), &peek.room, &peek.epoch, peek.offset) {
            ("room_joined", Some(r), Some(e), Some(o)) if peek.recovered != Some(true) => {
                self.set(r, e, o)
            }
            ("room_left", Some(r), _, _) => {
                if let Ok(name) = RoomName::parse(r) {
                    self.positions.remove(&name);
                }
            }
            _ => {}
        }
        for r in &peek.rooms {
            if !self.has(&r.room) {
                self.set(&r.room, &r.epoch, r.offset);
            }
        }
        Some(peek.kind)
    }

    /// The `id:` for the message just recorded.
    pub(crate) fn id(&self) -> String {
        last_event_id::encode(&self.positions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{RoomKey, Tenant};
    use serde_json::value::RawValue;

    fn publication(room: &str, epoch: &str, offset: u64) -> Publication {
        Publication {
            room: RoomKey::new(
                Tenant::default_tenant(),
                RoomName::parse(room).expect("room"),
            ),
            position: StreamPosition::new(epoch, offset),
            event: "e".into(),
            data: RawValue::from_string("1".into()).expect("raw"),
            ts: 0,
            event_id: "id".into(),
            from: None,
            exclude_connection: None,
            accepted_at: None,
            encoded: Default::default(),
        }
    }

    fn resuming(entries: &[(&str, &str, u64)]) -> Tracker {
        Tracker::resuming(
            entries
                .iter()
                .map(|(r, e, o)| {
                    (
                        RoomName::parse(r).expect("room"),
                        StreamPosition::new(*e, *o),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn a_recovering_room_keeps_the_client_position_until_replay_moves_it() {
        let mut t = resuming(&[("a", "E", 3)]);
        t.on_control(br#"{"type":"authenticated","rooms":[{"room":"a","epoch":"E","offset":9},{"room":"b","epoch":"F","offset":4}]}"#);
        assert_eq!(
            t.id(),
            "a~E~3,b~F~4",
            "resumed room kept, fresh room at head"
        );
        t.on_control(br#"{"type":"room_joined","room":"a","epoch":"E","offset":9,"recovered":true,"replayed":6}"#);
        assert_eq!(
            t.id(),
            "a~E~3,b~F~4",
            "recovering join does not jump to the head"
        );
        assert_eq!(t.on_publication(&publication("a", "E", 4)), "event");
        assert_eq!(t.id(), "a~E~4,b~F~4");
    }

    #[test]
    fn failed_recovery_and_fresh_joins_start_at_the_head() {
        let mut t = resuming(&[("a", "OLD", 3)]);
        t.on_control(br#"{"type":"room_joined","room":"a","epoch":"NEW","offset":9,"recovered":false,"replayed":0}"#);
        t.on_control(br#"{"type":"room_joined","room":"c","epoch":"G","offset":2}"#);
        assert_eq!(t.id(), "a~NEW~9,c~G~2");
        t.on_control(br#"{"type":"room_left","room":"c"}"#);
        assert_eq!(t.id(), "a~NEW~9");
    }

    #[test]
    fn other_frames_pass_through() {
        let mut t = Tracker::default();
        assert_eq!(t.on_control(br#"{"type":"pong"}"#).as_deref(), Some("pong"));
        assert_eq!(t.on_control(b"not json"), None);
        assert_eq!(t.id(), "");
    }
}
