//! Where a client stands in each of its rooms, for the SSE `id:` of every
//! message and the Socket.IO recovery token of every event.
//!
//! The rules keep the text safe to resume from at any point of the stream:
//! a room moves to an event's offset when that event is written; a room
//! being resumed keeps the client's own position until its replayed events
//! move it on (a `room_joined` with `recovered: true` or the
//! `authenticated` listing does not move it); any other join starts at the
//! room's current position; a room left is dropped. Positions are learnt
//! from the typed [`PositionChange`] the session queues with its control
//! frames, whatever their codec.

use super::last_event_id::{self, Positions};
use herald_core::Publication;
use herald_node::PositionChange;

/// The positions of one connection's rooms.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    positions: Positions,
}

impl Tracker {
    /// A tracker starting from the positions a client resumes from.
    pub(crate) fn resuming(positions: Positions) -> Self {
        Self { positions }
    }

    /// Records a written event or message.
    pub(crate) fn on_publication(&mut self, p: &Publication) {
        self.positions
            .insert(p.room.name.clone(), p.position.clone());
    }

    /// Records a written control frame's change of positions.
    pub(crate) fn on_change(&mut self, change: &PositionChange) {
        match change {
            PositionChange::Joined {
                room,
                position,
                recovered,
            } => {
                if *recovered != Some(true) {
                    self.positions.insert(room.clone(), position.clone());
                }
            }
            PositionChange::Left { room } => {
                self.positions.remove(room);
            }
            PositionChange::Listed(rooms) => {
                for (room, position) in rooms {
                    self.positions
                        .entry(room.clone())
                        .or_insert_with(|| position.clone());
                }
            }
        }
    }

    /// The text of the positions recorded so far.
    pub(crate) fn id(&self) -> String {
        last_event_id::encode(&self.positions)
    }

    /// `,"<text>"]`: the positions as an event's last argument (the
    /// Socket.IO recovery token), in one allocation.
    pub(crate) fn token_tail(&self) -> bytes::Bytes {
        let mut out = String::with_capacity(4 + self.positions.len() * 48);
        out.push_str(",\"");
        last_event_id::encode_into(&self.positions, &mut out);
        out.push_str("\"]");
        bytes::Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{RoomKey, RoomName, Tenant};
    use herald_protocol::StreamPosition;
    use serde_json::value::RawValue;

    fn room(r: &str) -> RoomName {
        RoomName::parse(r).expect("room")
    }

    fn publication(r: &str, epoch: &str, offset: u64) -> Publication {
        Publication {
            room: RoomKey::new(Tenant::default_tenant(), room(r)),
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
                .map(|(r, e, o)| (room(r), StreamPosition::new(*e, *o)))
                .collect(),
        )
    }

    fn joined(r: &str, epoch: &str, offset: u64, recovered: Option<bool>) -> PositionChange {
        PositionChange::Joined {
            room: room(r),
            position: StreamPosition::new(epoch, offset),
            recovered,
        }
    }

    #[test]
    fn a_recovering_room_keeps_the_client_position_until_replay_moves_it() {
        let mut t = resuming(&[("a", "E", 3)]);
        t.on_change(&PositionChange::Listed(vec![
            (room("a"), StreamPosition::new("E", 9)),
            (room("b"), StreamPosition::new("F", 4)),
        ]));
        assert_eq!(
            t.id(),
            "a~E~3,b~F~4",
            "resumed room kept, fresh room at head"
        );
        t.on_change(&joined("a", "E", 9, Some(true)));
        assert_eq!(
            t.id(),
            "a~E~3,b~F~4",
            "recovering join does not jump to the head"
        );
        t.on_publication(&publication("a", "E", 4));
        assert_eq!(t.id(), "a~E~4,b~F~4");
    }

    #[test]
    fn failed_recovery_and_fresh_joins_start_at_the_head() {
        let mut t = resuming(&[("a", "OLD", 3)]);
        t.on_change(&joined("a", "NEW", 9, Some(false)));
        t.on_change(&joined("c", "G", 2, None));
        assert_eq!(t.id(), "a~NEW~9,c~G~2");
        t.on_change(&PositionChange::Left { room: room("c") });
        assert_eq!(t.id(), "a~NEW~9");
        assert_eq!(&t.token_tail()[..], br#","a~NEW~9"]"#);
    }
}
