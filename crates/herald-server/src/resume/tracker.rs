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
//!
//! The text is kept written (as the token's tail `,"<text>"]`) and edited
//! in place: an event rewrites only its room's offset digits, so a
//! connection's positions cost one string and a few indexes into it, and
//! an event no allocation beyond the copy the caller asks for.

use super::last_event_id::{self, Positions};
use herald_core::Publication;
use herald_node::PositionChange;

/// Before the positions text in [`Tracker::text`].
const PREFIX: &str = ",\"";
/// After it.
const SUFFIX: &str = "\"]";

/// One room's entry `room~epoch~offset` in the text, as byte indexes.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Where the room name starts.
    room: u32,
    /// Where the epoch starts (after the room's `~`).
    epoch: u32,
    /// Where the offset starts (after the epoch's `~`).
    offset: u32,
    /// Where the entry ends (a `,` or the suffix follows).
    end: u32,
}

impl Entry {
    fn shift(&mut self, by: isize) {
        for at in [
            &mut self.room,
            &mut self.epoch,
            &mut self.offset,
            &mut self.end,
        ] {
            *at = (*at as isize + by) as u32;
        }
    }
}

/// The positions of one connection's rooms.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// `,"` + the positions text + `"]`.
    text: String,
    /// One per room, in room-name order (the text's order).
    entries: Vec<Entry>,
}

impl Default for Tracker {
    fn default() -> Self {
        Self::resuming(Positions::new())
    }
}

impl Tracker {
    /// A tracker starting from the positions a client resumes from.
    pub(crate) fn resuming(positions: Positions) -> Self {
        let mut text = String::with_capacity(PREFIX.len() + SUFFIX.len() + positions.len() * 40);
        text.push_str(PREFIX);
        text.push_str(SUFFIX);
        let mut tracker = Self {
            text,
            entries: Vec::with_capacity(positions.len()),
        };
        // In room order already: each lands at the end.
        for (room, p) in &positions {
            tracker.set(room.as_str(), &p.epoch, p.offset, true);
        }
        tracker
    }

    /// Records a written event or message.
    pub(crate) fn on_publication(&mut self, p: &Publication) {
        self.set(
            p.room.name.as_str(),
            &p.position.epoch,
            p.position.offset,
            true,
        );
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
                    self.set(room.as_str(), &position.epoch, position.offset, true);
                }
            }
            PositionChange::Left { room } => self.remove(room.as_str()),
            PositionChange::Listed(rooms) => {
                for (room, position) in rooms {
                    self.set(room.as_str(), &position.epoch, position.offset, false);
                }
            }
            // The kept events after the gap move the room on; the client
            // recovers the gap itself (docs/protocol.md, priorities).
            PositionChange::Dropped { .. } => {}
        }
    }

    /// The text of the positions recorded so far.
    pub(crate) fn id(&self) -> String {
        self.positions_text().to_owned()
    }

    /// `,"<text>"]`: the positions as an event's last argument (the
    /// Socket.IO recovery token), copied once.
    pub(crate) fn token_tail(&self) -> bytes::Bytes {
        bytes::Bytes::copy_from_slice(self.text.as_bytes())
    }

    fn positions_text(&self) -> &str {
        &self.text[PREFIX.len()..self.text.len() - SUFFIX.len()]
    }

    fn room_of(&self, e: &Entry) -> &str {
        &self.text[e.room as usize..e.epoch as usize - 1]
    }

    /// Where `room`'s entry is, or where it would go.
    fn find(&self, room: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|e| self.room_of(e).cmp(room))
    }

    /// Puts `room` at `epoch`/`offset`; a room already there moves only
    /// when `replace`.
    fn set(&mut self, room: &str, epoch: &str, offset: u64, replace: bool) {
        let mut digits = [0u8; 20];
        let digits = last_event_id::itoa(offset, &mut digits);
        match self.find(room) {
            Ok(_) if !replace => {}
            Ok(i) => {
                let e = self.entries[i];
                if &self.text[e.epoch as usize..e.offset as usize - 1] == epoch {
                    self.splice(i, e.offset as usize, e.end as usize, &[digits]);
                } else {
                    self.splice(i, e.epoch as usize, e.end as usize, &[epoch, "~", digits]);
                }
            }
            Err(i) => {
                // Before the entry now at `i`, else before the suffix.
                let first = self.entries.is_empty();
                let at = match self.entries.get(i) {
                    Some(e) => e.room as usize,
                    None => self.text.len() - SUFFIX.len(),
                };
                let start = if first || i < self.entries.len() {
                    at
                } else {
                    at + 1
                };
                let entry = Entry {
                    room: start as u32,
                    epoch: (start + room.len() + 1) as u32,
                    offset: (start + room.len() + epoch.len() + 2) as u32,
                    end: (start + room.len() + epoch.len() + digits.len() + 2) as u32,
                };
                let parts: [&str; 6] = if first {
                    ["", room, "~", epoch, "~", digits]
                } else if i < self.entries.len() {
                    [room, "~", epoch, "~", digits, ","]
                } else {
                    [",", room, "~", epoch, "~", digits]
                };
                let added = self.replace_text(at, at, &parts);
                for later in &mut self.entries[i..] {
                    later.shift(added);
                }
                if self.entries.len() == self.entries.capacity() {
                    // One more room, not twice the rooms: most connections
                    // stay in one or two.
                    self.entries.reserve_exact(1);
                }
                self.entries.insert(i, entry);
            }
        }
    }

    /// Drops `room`'s entry and its separator.
    fn remove(&mut self, room: &str) {
        let Ok(i) = self.find(room) else { return };
        let e = self.entries.remove(i);
        let (start, end) = if i < self.entries.len() {
            // The `,` after it.
            (e.room as usize, e.end as usize + 1)
        } else if i > 0 {
            // The `,` before it.
            (e.room as usize - 1, e.end as usize)
        } else {
            (e.room as usize, e.end as usize)
        };
        let removed = self.replace_text(start, end, &[]);
        for later in &mut self.entries[i..] {
            later.shift(removed);
        }
    }

    /// Replaces `start..end` (the offset, or the epoch and offset) of entry
    /// `i` by `parts`, moving every later entry.
    fn splice(&mut self, i: usize, start: usize, end: usize, parts: &[&str]) {
        let moved = self.replace_text(start, end, parts);
        let e = &mut self.entries[i];
        if let [epoch, _, _] = parts {
            e.offset = (start + epoch.len() + 1) as u32;
        }
        e.end = (end as isize + moved) as u32;
        if moved != 0 {
            for later in &mut self.entries[i + 1..] {
                later.shift(moved);
            }
        }
    }

    /// Replaces `start..end` of the text by `parts`; returns how far what
    /// followed moved. One part (an event's offset) is written in place,
    /// without allocating unless the text outgrows its capacity.
    fn replace_text(&mut self, start: usize, end: usize, parts: &[&str]) -> isize {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        match parts {
            [one] => self.text.replace_range(start..end, one),
            // A join, a leave, a new epoch: rare.
            _ => self.text.replace_range(start..end, &parts.concat()),
        }
        len as isize - (end - start) as isize
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
        Publication::new(
            RoomKey::new(Tenant::default_tenant(), room(r)),
            StreamPosition::new(epoch, offset),
            "e",
            RawValue::from_string("1".into()).expect("raw"),
            0,
            "id",
        )
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

    #[test]
    fn edits_in_place_match_the_text_written_afresh() {
        // Random joins, events (offsets growing by a digit now and then),
        // new epochs and leaves over a few rooms, against the reference
        // encoding of the same positions.
        let names = ["a", "bench:1", "bench:10", "m", "user:42"];
        let mut t = Tracker::default();
        let mut reference = Positions::new();
        for step in 0..4000u64 {
            let r = room(names[(rand::random::<u32>() as usize) % names.len()]);
            match rand::random::<u32>() % 10 {
                0 => {
                    t.on_change(&PositionChange::Left { room: r.clone() });
                    reference.remove(&r);
                }
                1 => {
                    let p = StreamPosition::new(format!("E{step}"), step % 7);
                    t.on_change(&joined(r.as_str(), &p.epoch, p.offset, None));
                    reference.insert(r, p);
                }
                2 => {
                    let p = StreamPosition::new("L", step);
                    t.on_change(&PositionChange::Listed(vec![(r.clone(), p.clone())]));
                    reference.entry(r).or_insert(p);
                }
                _ => {
                    let epoch = reference
                        .get(&r)
                        .map_or_else(|| "F".to_owned(), |p| p.epoch.clone());
                    let offset = step * step;
                    t.on_publication(&publication(r.as_str(), &epoch, offset));
                    reference.insert(r, StreamPosition::new(epoch, offset));
                }
            }
            let text = last_event_id::encode(&reference);
            assert_eq!(t.id(), text, "step {step}");
            assert_eq!(&t.token_tail()[..], format!(",\"{text}\"]").as_bytes());
        }
    }
}
