//! The rooms this node listens to: a count of local subscribers per room,
//! an async gate serializing the room's SUBSCRIBE/UNSUBSCRIBE, and the last
//! publication delivered (the cursor the reader keeps order with).
//!
//! Counts change under the map's sync lock; channel commands run under the
//! room's gate. An entry is removed only while its gate is held and its
//! count is zero, so whoever holds a gate can tell, by comparing gates,
//! whether the entry it works for is still the live one.

use herald_core::{Publication, RoomKey};
use herald_protocol::StreamPosition;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// A room's gate; the flag says whether its channel subscription is live.
pub(super) type Gate = Arc<tokio::sync::Mutex<bool>>;

struct Entry {
    count: usize,
    gate: Gate,
    cursor: Option<StreamPosition>,
}

/// What to do with a publication read off the channel.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Not listened to, or already delivered.
    Drop,
    /// Next in order (or a new epoch): deliver; the cursor has moved.
    Deliver,
    /// Offsets between the cursor (`after`) and this one are missing: fill
    /// them from history first, then offer this one.
    Gap {
        /// The last offset delivered.
        after: u64,
    },
}

/// What to do with a publication read from history (or after a fill).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Offer {
    /// Not listened to, or already delivered.
    Drop,
    /// Deliver it; `missed` offsets before it can never be delivered.
    Deliver {
        /// Offsets skipped over.
        missed: u64,
    },
}

#[derive(Default)]
pub(super) struct Rooms {
    map: Mutex<HashMap<RoomKey, Entry>>,
}

impl Rooms {
    /// Takes one count of `room` and returns its gate.
    pub(super) fn join(&self, room: &RoomKey) -> Gate {
        let mut map = self.map.lock();
        let entry = map.entry(room.clone()).or_insert_with(|| Entry {
            count: 0,
            gate: Gate::default(),
            cursor: None,
        });
        entry.count += 1;
        entry.gate.clone()
    }

    /// Gives one count back; returns the gate when the count reached zero
    /// (the caller then stops listening, see [`Rooms::is_idle`]).
    pub(super) fn leave(&self, room: &RoomKey) -> Option<Gate> {
        let mut map = self.map.lock();
        let entry = map.get_mut(room)?;
        if entry.count == 0 {
            return None;
        }
        entry.count -= 1;
        (entry.count == 0).then(|| entry.gate.clone())
    }

    /// Whether `gate` still belongs to `room`'s entry and its count is zero.
    pub(super) fn is_idle(&self, room: &RoomKey, gate: &Gate) -> bool {
        let map = self.map.lock();
        map.get(room)
            .is_some_and(|e| Arc::ptr_eq(&e.gate, gate) && e.count == 0)
    }

    /// Whether `gate` still belongs to `room`'s entry and someone listens.
    pub(super) fn is_wanted(&self, room: &RoomKey, gate: &Gate) -> bool {
        let map = self.map.lock();
        map.get(room)
            .is_some_and(|e| Arc::ptr_eq(&e.gate, gate) && e.count > 0)
    }

    /// Removes the entry if it is still `gate`'s and idle. The caller holds
    /// the gate.
    pub(super) fn forget_if_idle(&self, room: &RoomKey, gate: &Gate) {
        let mut map = self.map.lock();
        if map
            .get(room)
            .is_some_and(|e| Arc::ptr_eq(&e.gate, gate) && e.count == 0)
        {
            map.remove(room);
        }
    }

    /// Gives back the count of a subscribe that failed. The caller holds
    /// the gate.
    pub(super) fn undo_join(&self, room: &RoomKey, gate: &Gate) {
        {
            let mut map = self.map.lock();
            if let Some(e) = map.get_mut(room).filter(|e| Arc::ptr_eq(&e.gate, gate)) {
                e.count = e.count.saturating_sub(1);
            }
        }
        self.forget_if_idle(room, gate);
    }

    /// Rooms with a count above zero, with their gates.
    pub(super) fn listened(&self) -> Vec<(RoomKey, Gate)> {
        let map = self.map.lock();
        map.iter()
            .filter(|(_, e)| e.count > 0)
            .map(|(k, e)| (k.clone(), e.gate.clone()))
            .collect()
    }

    pub(super) fn listened_count(&self) -> usize {
        self.map.lock().values().filter(|e| e.count > 0).count()
    }

    pub(super) fn is_listened(&self, room: &RoomKey) -> bool {
        self.map.lock().get(room).is_some_and(|e| e.count > 0)
    }

    /// The last delivered position of `room`.
    pub(super) fn cursor(&self, room: &RoomKey) -> Option<StreamPosition> {
        self.map.lock().get(room).and_then(|e| e.cursor.clone())
    }

    /// Sets where delivery starts, unless something was delivered already.
    pub(super) fn set_baseline(&self, room: &RoomKey, position: StreamPosition) {
        if let Some(e) = self.map.lock().get_mut(room) {
            if e.cursor.is_none() {
                e.cursor = Some(position);
            }
        }
    }

    /// Judges a publication read off the channel.
    pub(super) fn classify(&self, p: &Publication) -> Verdict {
        let mut map = self.map.lock();
        let Some(e) = map.get_mut(&p.room).filter(|e| e.count > 0) else {
            return Verdict::Drop;
        };
        match &mut e.cursor {
            Some(c) if c.epoch == p.position.epoch => {
                if p.position.offset <= c.offset {
                    Verdict::Drop
                } else if p.position.offset == c.offset + 1 {
                    c.offset = p.position.offset;
                    Verdict::Deliver
                } else {
                    Verdict::Gap { after: c.offset }
                }
            }
            // Nothing delivered yet (the room had no stream when this node
            // read it) and the stream started in another epoch than the
            // one read, with a publish that beat the subscription: fill the
            // events before from history, like any gap.
            Some(c) if c.offset == 0 && p.position.offset > 1 => {
                *c = StreamPosition::new(p.position.epoch.clone(), 0);
                Verdict::Gap { after: 0 }
            }
            // A new epoch (or the first publication): its stream started over.
            cursor => {
                *cursor = Some(p.position.clone());
                Verdict::Deliver
            }
        }
    }

    /// Judges a publication read from history, or one whose gap was filled
    /// as far as history allowed; moves the cursor when it is delivered.
    pub(super) fn offer(&self, p: &Publication) -> Offer {
        let mut map = self.map.lock();
        let Some(e) = map.get_mut(&p.room).filter(|e| e.count > 0) else {
            return Offer::Drop;
        };
        match &mut e.cursor {
            Some(c) if c.epoch == p.position.epoch => {
                if p.position.offset <= c.offset {
                    return Offer::Drop;
                }
                let missed = p.position.offset - c.offset - 1;
                c.offset = p.position.offset;
                Offer::Deliver { missed }
            }
            cursor => {
                *cursor = Some(p.position.clone());
                Offer::Deliver { missed: 0 }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{RoomName, Tenant};
    use serde_json::value::RawValue;

    fn room() -> RoomKey {
        RoomKey::new(
            Tenant::default_tenant(),
            RoomName::parse("r").expect("room"),
        )
    }

    fn publication(epoch: &str, offset: u64) -> Publication {
        Publication {
            room: room(),
            position: StreamPosition::new(epoch, offset),
            event: "e".into(),
            data: RawValue::from_string("{}".into()).expect("raw"),
            ts: 0,
            event_id: "id".into(),
            from: None,
            exclude_connection: None,
            accepted_at: None,
            encoded: Default::default(),
        }
    }

    #[test]
    fn counts_gate_listening() {
        let rooms = Rooms::default();
        let r = room();
        let g1 = rooms.join(&r);
        let g2 = rooms.join(&r);
        assert!(Arc::ptr_eq(&g1, &g2));
        assert!(rooms.leave(&r).is_none(), "one member is left");
        let g = rooms.leave(&r).expect("last one out");
        assert!(rooms.is_idle(&r, &g));
        rooms.forget_if_idle(&r, &g);
        assert!(!rooms.is_listened(&r));
        assert!(rooms.leave(&r).is_none(), "an extra leave is ignored");
        let fresh = rooms.join(&r);
        assert!(!Arc::ptr_eq(&fresh, &g), "a new entry has a new gate");
        assert!(!rooms.is_idle(&r, &g) && !rooms.is_wanted(&r, &g));
    }

    #[test]
    fn cursor_orders_and_detects_gaps() {
        let rooms = Rooms::default();
        let r = room();
        assert_eq!(rooms.classify(&publication("a", 1)), Verdict::Drop);
        rooms.join(&r);
        rooms.set_baseline(&r, StreamPosition::new("a", 2));
        assert_eq!(rooms.classify(&publication("a", 2)), Verdict::Drop);
        assert_eq!(rooms.classify(&publication("a", 3)), Verdict::Deliver);
        assert_eq!(
            rooms.classify(&publication("a", 6)),
            Verdict::Gap { after: 3 }
        );
        assert_eq!(
            rooms.offer(&publication("a", 4)),
            Offer::Deliver { missed: 0 }
        );
        assert_eq!(
            rooms.offer(&publication("a", 6)),
            Offer::Deliver { missed: 1 }
        );
        assert_eq!(rooms.offer(&publication("a", 6)), Offer::Drop);
        assert_eq!(rooms.classify(&publication("b", 9)), Verdict::Deliver);
        assert_eq!(rooms.cursor(&r), Some(StreamPosition::new("b", 9)));
        rooms.set_baseline(&r, StreamPosition::new("c", 0));
        assert_eq!(rooms.cursor(&r), Some(StreamPosition::new("b", 9)));
    }

    #[test]
    fn a_room_read_without_a_stream_fills_what_beat_the_subscription() {
        let rooms = Rooms::default();
        let r = room();
        rooms.join(&r);
        rooms.set_baseline(&r, StreamPosition::new("read", 0));
        assert_eq!(
            rooms.classify(&publication("a", 3)),
            Verdict::Gap { after: 0 }
        );
        assert_eq!(
            rooms.offer(&publication("a", 1)),
            Offer::Deliver { missed: 0 }
        );
        assert_eq!(rooms.classify(&publication("a", 2)), Verdict::Deliver);
    }
}
