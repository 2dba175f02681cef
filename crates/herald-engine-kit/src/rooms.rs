//! The rooms this node listens to: a count of local subscribers per room,
//! an async gate serializing the room's subscription (a Redis channel, a
//! NATS delivery subject), the last
//! publication delivered (the cursor the reader keeps order with), and the
//! room's owner while a task works on it off the reader (a gap fill or a
//! catch-up from history): what the subscription brings for the room meanwhile
//! waits in the owner's backlog, so the room stays in order while the
//! reader goes on with every other room.
//!
//! Counts change under the map's sync lock; subscriptions change under the
//! room's gate. An entry is removed only while its gate is held and its
//! count is zero, so whoever holds a gate can tell, by comparing gates,
//! whether the entry it works for is still the live one.

use herald_core::{Publication, RoomKey};
use herald_protocol::StreamPosition;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Publications one room's backlog holds while its owner works; past it the
/// owner catches up from history instead (bounded memory per room).
pub const MAX_BACKLOG: usize = 10_000;

/// A room's gate; it holds the engine's state of the room's subscription
/// (`L`: whatever tells the engine the subscription is live, e.g. a flag
/// or the stop token of a forwarding task).
pub type Gate<L> = Arc<tokio::sync::Mutex<L>>;

/// What a publication of a new epoch whose first offsets were not seen
/// means (the engines differ in when a stream can start over unseen).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewEpoch {
    /// Only when nothing was delivered yet (the cursor is the baseline of a
    /// room read without a stream, offset 0) are the offsets before it a
    /// gap; otherwise a new epoch is delivered from where it is.
    GapWhenNothingDelivered,
    /// Any new epoch started at 1: offsets before the publication are a
    /// gap (the stream may have been lost and started over while the
    /// subscription was being renewed).
    AlwaysGap,
}

struct Entry<L> {
    count: usize,
    gate: Gate<L>,
    cursor: Option<StreamPosition>,
    owner: Option<Owner>,
}

/// A task delivering one room off the reader.
struct Owner {
    id: u64,
    /// What the delivery subject brought meanwhile, in stream order.
    backlog: VecDeque<Arc<Publication>>,
    /// Whether to catch up from history before letting go (a resync asked,
    /// or the backlog overflowed).
    catch_up: bool,
    /// Whether that catch-up makes sure the subscription is live first
    /// (after a reconnect).
    resubscribe: bool,
}

/// What to do with a publication read off the subscription.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not listened to, or already delivered.
    Drop,
    /// Next in order (or a new epoch): deliver; the cursor has moved.
    Deliver,
    /// Offsets between the cursor (`after`) and this one are missing: fill
    /// them from history first, then offer this one. Told the reader, the
    /// room now has the owner `owner`, to do that off the reader.
    Gap {
        /// The last offset delivered.
        after: u64,
        /// The room's owner id (see [`Rooms::next`]).
        owner: u64,
    },
    /// The room has an owner: it went into the owner's backlog.
    Queued,
}

/// What a room's owner does next (see [`Rooms::next`]).
#[derive(Debug)]
pub enum Next<L> {
    /// Judge and deliver this publication from the backlog.
    Publication(Arc<Publication>),
    /// Catch up from history, under the room's gate; make sure the subscription is
    /// live first when `resubscribe`.
    CatchUp {
        /// The room's gate.
        gate: Gate<L>,
        /// Make sure the subscription is live first.
        resubscribe: bool,
    },
    /// Nothing left: the room has no owner any more.
    Done,
}

/// What to do with a publication read from history (or after a fill).
#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    /// Not listened to, or already delivered.
    Drop,
    /// Deliver it; `missed` offsets before it can never be delivered.
    Deliver {
        /// Offsets skipped over.
        missed: u64,
    },
}

/// The rooms this node listens to (see the module's documentation).
pub struct Rooms<L> {
    map: Mutex<HashMap<RoomKey, Entry<L>>>,
    /// The last owner id handed out.
    owners: AtomicU64,
    new_epoch: NewEpoch,
}

impl<L: Default> Rooms<L> {
    /// No rooms yet; `new_epoch` says how an unseen new epoch is judged.
    pub fn new(new_epoch: NewEpoch) -> Self {
        Self {
            map: Mutex::default(),
            owners: AtomicU64::new(0),
            new_epoch,
        }
    }

    /// Takes one count of `room` and returns its gate.
    pub fn join(&self, room: &RoomKey) -> Gate<L> {
        let mut map = self.map.lock();
        let entry = map.entry(room.clone()).or_insert_with(|| Entry {
            count: 0,
            gate: Gate::<L>::default(),
            cursor: None,
            owner: None,
        });
        entry.count += 1;
        entry.gate.clone()
    }

    /// Gives one count back; returns the gate when the count reached zero
    /// (the caller then stops listening, see [`Rooms::is_idle`]).
    pub fn leave(&self, room: &RoomKey) -> Option<Gate<L>> {
        let mut map = self.map.lock();
        let entry = map.get_mut(room)?;
        if entry.count == 0 {
            return None;
        }
        entry.count -= 1;
        (entry.count == 0).then(|| entry.gate.clone())
    }

    /// Whether `gate` still belongs to `room`'s entry and its count is zero.
    pub fn is_idle(&self, room: &RoomKey, gate: &Gate<L>) -> bool {
        let map = self.map.lock();
        map.get(room)
            .is_some_and(|e| Arc::ptr_eq(&e.gate, gate) && e.count == 0)
    }

    /// Whether `gate` still belongs to `room`'s entry and someone listens.
    pub fn is_wanted(&self, room: &RoomKey, gate: &Gate<L>) -> bool {
        let map = self.map.lock();
        map.get(room)
            .is_some_and(|e| Arc::ptr_eq(&e.gate, gate) && e.count > 0)
    }

    /// Removes the entry if it is still `gate`'s and idle. The caller holds
    /// the gate.
    pub fn forget_if_idle(&self, room: &RoomKey, gate: &Gate<L>) {
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
    pub fn undo_join(&self, room: &RoomKey, gate: &Gate<L>) {
        {
            let mut map = self.map.lock();
            if let Some(e) = map.get_mut(room).filter(|e| Arc::ptr_eq(&e.gate, gate)) {
                e.count = e.count.saturating_sub(1);
            }
        }
        self.forget_if_idle(room, gate);
    }

    /// Rooms with a count above zero, with their gates.
    pub fn listened(&self) -> Vec<(RoomKey, Gate<L>)> {
        let map = self.map.lock();
        map.iter()
            .filter(|(_, e)| e.count > 0)
            .map(|(k, e)| (k.clone(), e.gate.clone()))
            .collect()
    }

    /// How many rooms have a count above zero.
    pub fn listened_count(&self) -> usize {
        self.map.lock().values().filter(|e| e.count > 0).count()
    }

    /// Whether `room` has a count above zero.
    pub fn is_listened(&self, room: &RoomKey) -> bool {
        self.map.lock().get(room).is_some_and(|e| e.count > 0)
    }

    /// The last delivered position of `room`.
    pub fn cursor(&self, room: &RoomKey) -> Option<StreamPosition> {
        self.map.lock().get(room).and_then(|e| e.cursor.clone())
    }

    /// Sets where delivery starts, unless something was delivered already.
    pub fn set_baseline(&self, room: &RoomKey, position: StreamPosition) {
        if let Some(e) = self.map.lock().get_mut(room) {
            if e.cursor.is_none() {
                e.cursor = Some(position);
            }
        }
    }

    /// Judges a publication read off the delivery subject, for the reader: it waits
    /// in the backlog of the room's owner if there is one; a gap makes the
    /// room owned (the reader hands the fill to a task).
    pub fn classify(&self, p: &Arc<Publication>) -> Verdict {
        let mut map = self.map.lock();
        let Some(e) = map.get_mut(&p.room).filter(|e| e.count > 0) else {
            return Verdict::Drop;
        };
        if let Some(owner) = &mut e.owner {
            if owner.backlog.len() < MAX_BACKLOG {
                owner.backlog.push_back(p.clone());
            } else {
                owner.catch_up = true;
            }
            return Verdict::Queued;
        }
        let id = self.owners.fetch_add(1, Ordering::Relaxed) + 1;
        let verdict = judge(e, p, id, self.new_epoch);
        if matches!(verdict, Verdict::Gap { .. }) {
            e.owner = Some(Owner {
                id,
                backlog: VecDeque::new(),
                catch_up: false,
                resubscribe: false,
            });
        }
        verdict
    }

    /// Judges a publication of the backlog, for the room's owner `id`.
    pub fn classify_owned(&self, p: &Publication, id: u64) -> Verdict {
        let mut map = self.map.lock();
        let Some(e) = map
            .get_mut(&p.room)
            .filter(|e| e.count > 0 && e.owner.as_ref().is_some_and(|o| o.id == id))
        else {
            return Verdict::Drop;
        };
        judge(e, p, id, self.new_epoch)
    }

    /// Makes the caller (the reader) the starter of an owner of `room` that
    /// catches it up from history; when the room already has an owner, asks
    /// that one to catch up before it lets go (resyncs coalesce) and
    /// returns `None`, as for a room nobody listens to.
    pub fn claim_catch_up(&self, room: &RoomKey, resubscribe: bool) -> Option<u64> {
        let mut map = self.map.lock();
        let e = map.get_mut(room).filter(|e| e.count > 0)?;
        if let Some(owner) = &mut e.owner {
            owner.catch_up = true;
            owner.resubscribe |= resubscribe;
            return None;
        }
        let id = self.owners.fetch_add(1, Ordering::Relaxed) + 1;
        e.owner = Some(Owner {
            id,
            backlog: VecDeque::new(),
            catch_up: true,
            resubscribe,
        });
        Some(id)
    }

    /// The owner `id` of `room` takes its next piece of work: the backlog
    /// in order, then a catch-up if one was asked. When nothing is left the
    /// room has no owner any more, decided under the map's lock, so nothing
    /// the reader queues can be stranded.
    pub fn next(&self, room: &RoomKey, id: u64) -> Next<L> {
        let mut map = self.map.lock();
        let Some(e) = map
            .get_mut(room)
            .filter(|e| e.owner.as_ref().is_some_and(|o| o.id == id))
        else {
            return Next::Done;
        };
        let work = match e.owner.as_mut() {
            Some(owner) if e.count > 0 => match owner.backlog.pop_front() {
                Some(p) => Next::Publication(p),
                None if std::mem::take(&mut owner.catch_up) => Next::CatchUp {
                    gate: e.gate.clone(),
                    resubscribe: std::mem::take(&mut owner.resubscribe),
                },
                None => Next::Done,
            },
            _ => Next::Done,
        };
        if matches!(work, Next::Done) {
            e.owner = None;
        }
        work
    }

    /// Whether `id` still owns `room` (a retrying owner stops when not).
    pub fn owns(&self, room: &RoomKey, id: u64) -> bool {
        let map = self.map.lock();
        map.get(room)
            .is_some_and(|e| e.count > 0 && e.owner.as_ref().is_some_and(|o| o.id == id))
    }

    /// Judges a publication read from history, or one whose gap was filled
    /// as far as history allowed, for the room's owner `owner` (an owner
    /// whose room was dropped and listened to again delivers nothing more);
    /// moves the cursor when it is delivered.
    pub fn offer(&self, p: &Publication, owner: u64) -> Offer {
        let mut map = self.map.lock();
        let Some(e) = map
            .get_mut(&p.room)
            .filter(|e| e.count > 0 && e.owner.as_ref().is_some_and(|o| o.id == owner))
        else {
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

/// The cursor's verdict on `p` (see [`Verdict`]); a gap names `owner`.
fn judge<L>(e: &mut Entry<L>, p: &Publication, owner: u64, new_epoch: NewEpoch) -> Verdict {
    match &mut e.cursor {
        Some(c) if c.epoch == p.position.epoch => {
            if p.position.offset <= c.offset {
                Verdict::Drop
            } else if p.position.offset == c.offset + 1 {
                c.offset = p.position.offset;
                Verdict::Deliver
            } else {
                Verdict::Gap {
                    after: c.offset,
                    owner,
                }
            }
        }
        // Another epoch than the cursor's (nothing delivered yet and the
        // stream started in another epoch than the one read, or, with
        // `AlwaysGap`, the stream was lost and started over) whose first
        // events this node did not see (they beat the subscription, or came
        // while it was being renewed after a reconnect): the new epoch
        // started at 1, so fill the events before from history, like any gap.
        Some(c) if p.position.offset > 1 && (new_epoch == NewEpoch::AlwaysGap || c.offset == 0) => {
            *c = StreamPosition::new(p.position.epoch.clone(), 0);
            Verdict::Gap { after: 0, owner }
        }
        // A new epoch (or the first publication): its stream started over.
        cursor => {
            *cursor = Some(p.position.clone());
            Verdict::Deliver
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

    fn rooms() -> Rooms<bool> {
        Rooms::new(NewEpoch::AlwaysGap)
    }

    fn publication(epoch: &str, offset: u64) -> Arc<Publication> {
        publication_in(room(), epoch, offset)
    }

    fn publication_in(room: RoomKey, epoch: &str, offset: u64) -> Arc<Publication> {
        Arc::new(Publication::new(
            room,
            StreamPosition::new(epoch, offset),
            "e",
            RawValue::from_string("{}".into()).expect("raw"),
            0,
            "id",
        ))
    }

    #[test]
    fn counts_gate_listening() {
        let rooms = rooms();
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
        let rooms = rooms();
        let r = room();
        assert_eq!(rooms.classify(&publication("a", 1)), Verdict::Drop);
        rooms.join(&r);
        rooms.set_baseline(&r, StreamPosition::new("a", 2));
        assert_eq!(rooms.classify(&publication("a", 2)), Verdict::Drop);
        assert_eq!(rooms.classify(&publication("a", 3)), Verdict::Deliver);
        let Verdict::Gap { after: 3, owner } = rooms.classify(&publication("a", 6)) else {
            panic!("a gap after 3");
        };
        assert_eq!(
            rooms.offer(&publication("a", 4), owner),
            Offer::Deliver { missed: 0 }
        );
        assert_eq!(
            rooms.offer(&publication("a", 6), owner),
            Offer::Deliver { missed: 1 }
        );
        assert_eq!(rooms.offer(&publication("a", 6), owner), Offer::Drop);
        assert!(matches!(rooms.next(&r, owner), Next::Done));
        assert_eq!(rooms.classify(&publication("b", 1)), Verdict::Deliver);
        assert_eq!(rooms.cursor(&r), Some(StreamPosition::new("b", 1)));
        rooms.set_baseline(&r, StreamPosition::new("c", 0));
        assert_eq!(rooms.cursor(&r), Some(StreamPosition::new("b", 1)));
    }

    /// With `GapWhenNothingDelivered` (Redis), a new epoch after deliveries
    /// is delivered from where it is; before any, it is a gap.
    #[test]
    fn a_new_epoch_after_deliveries_starts_over_unless_always_gap() {
        let rooms = Rooms::<bool>::new(NewEpoch::GapWhenNothingDelivered);
        let r = room();
        rooms.join(&r);
        rooms.set_baseline(&r, StreamPosition::new("a", 3));
        assert_eq!(rooms.classify(&publication("b", 9)), Verdict::Deliver);
        assert_eq!(rooms.cursor(&r), Some(StreamPosition::new("b", 9)));
        let other = Rooms::<bool>::new(NewEpoch::GapWhenNothingDelivered);
        other.join(&r);
        other.set_baseline(&r, StreamPosition::new("read", 0));
        assert!(matches!(
            other.classify(&publication("a", 3)),
            Verdict::Gap { after: 0, .. }
        ));
    }

    /// The stream was lost and started over in a new epoch while this node
    /// was away, and its first events came before the subscription was
    /// live again: they are filled from history, not skipped.
    #[test]
    fn a_new_epoch_whose_first_events_were_missed_is_a_gap() {
        let rooms = rooms();
        let r = room();
        rooms.join(&r);
        rooms.set_baseline(&r, StreamPosition::new("old", 150));
        let Verdict::Gap { after: 0, owner } = rooms.classify(&publication("new", 2)) else {
            panic!("a gap after 0 in the new epoch");
        };
        assert_eq!(
            rooms.offer(&publication("new", 1), owner),
            Offer::Deliver { missed: 0 }
        );
        assert_eq!(
            rooms.offer(&publication("new", 2), owner),
            Offer::Deliver { missed: 0 }
        );
        assert!(matches!(rooms.next(&r, owner), Next::Done));
        assert_eq!(rooms.classify(&publication("new", 3)), Verdict::Deliver);
    }

    #[test]
    fn a_room_read_without_a_stream_fills_what_beat_the_subscription() {
        let rooms = rooms();
        let r = room();
        rooms.join(&r);
        rooms.set_baseline(&r, StreamPosition::new("read", 0));
        let Verdict::Gap { after: 0, owner } = rooms.classify(&publication("a", 3)) else {
            panic!("a gap after 0");
        };
        assert_eq!(
            rooms.offer(&publication("a", 1), owner),
            Offer::Deliver { missed: 0 }
        );
        assert!(matches!(rooms.next(&r, owner), Next::Done));
        assert_eq!(rooms.classify(&publication("a", 2)), Verdict::Deliver);
    }

    /// While a task fills one room's gap, the reader queues that room's
    /// publications behind it (in order) and the room's owner takes them
    /// back; other rooms are judged as usual.
    #[test]
    fn an_owned_room_queues_behind_its_owner_and_others_go_on() {
        let rooms = rooms();
        let r = room();
        let other = RoomKey::new(
            Tenant::default_tenant(),
            RoomName::parse("other").expect("room"),
        );
        rooms.join(&r);
        rooms.join(&other);
        rooms.set_baseline(&r, StreamPosition::new("a", 1));
        rooms.set_baseline(&other, StreamPosition::new("a", 1));
        let Verdict::Gap { after: 1, owner } = rooms.classify(&publication("a", 4)) else {
            panic!("a gap after 1");
        };
        assert_eq!(rooms.classify(&publication("a", 5)), Verdict::Queued);
        assert_eq!(rooms.classify(&publication("a", 6)), Verdict::Queued);
        let elsewhere = publication_in(other.clone(), "a", 2);
        assert_eq!(rooms.classify(&elsewhere), Verdict::Deliver);
        // A resync meanwhile is coalesced into the owner's work.
        assert_eq!(rooms.claim_catch_up(&r, true), None);
        // The owner fills 2..3, offers 4, then drains its backlog in order.
        for o in [2, 3, 4] {
            assert!(matches!(
                rooms.offer(&publication("a", o), owner),
                Offer::Deliver { missed: 0 }
            ));
        }
        for want in [5, 6] {
            let Next::Publication(p) = rooms.next(&r, owner) else {
                panic!("offset {want} waits in the backlog");
            };
            assert_eq!(p.position.offset, want);
            assert_eq!(rooms.classify_owned(&p, owner), Verdict::Deliver);
        }
        assert!(matches!(
            rooms.next(&r, owner),
            Next::CatchUp {
                resubscribe: true,
                ..
            }
        ));
        assert!(matches!(rooms.next(&r, owner), Next::Done));
        assert!(!rooms.owns(&r, owner));
        assert_eq!(
            rooms.offer(&publication("a", 8), owner),
            Offer::Drop,
            "a former owner delivers nothing"
        );
        assert_eq!(rooms.classify(&publication("a", 7)), Verdict::Deliver);
        let Some(again) = rooms.claim_catch_up(&r, false) else {
            panic!("a room without an owner is claimed");
        };
        assert!(matches!(
            rooms.next(&r, again),
            Next::CatchUp {
                resubscribe: false,
                ..
            }
        ));
        assert!(matches!(rooms.next(&r, again), Next::Done));
    }
}
