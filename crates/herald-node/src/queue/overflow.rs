//! A full send queue in a namespace that sheds events (`overflow = "drop"`
//! or `"conflate"`): make room instead of cutting the connection.
//!
//! Only room events whose resolved [`EventPolicy`] is sheddable (not
//! critical, namespace not `disconnect`) are ever removed; control frames,
//! pings, raw frames, critical events and a frame already partly written
//! stay. The incoming event is never the one removed: it is the newest, and
//! every removal is of something older. Order of work:
//!
//! 1. Conflation: a queued event of a `conflate` namespace is removed when
//!    a newer queued (or the incoming) event has the same room and
//!    `conflation_key`. No notice: the newer event supersedes it, and the
//!    client's resume position moves past it when that newer event arrives
//!    (offsets only grow), so a later resume never asks for it.
//! 2. If that is not enough (or the namespace is `drop`), sheddable events
//!    are dropped oldest first until the incoming event fits. Where a
//!    room's first dropped event was, an `events_dropped` notice takes its
//!    place, naming the position just before it; a room already named by a
//!    queued notice at or before that position gets no second one (resuming
//!    from the earlier position replays the later gap too), unless the
//!    room's `room_joined` lies between them: the client, re-joining, reads
//!    notices before that reply as part of the old stream, so a drop after
//!    it needs its own. Notices count against `limits.send_queue_bytes` but
//!    not `send_queue_messages`, queued ones included.
//! 3. If even that is not enough (only critical or control frames left),
//!    the push overflows and the caller cuts the connection, as in
//!    `disconnect`.

use super::{Outbound, PositionChange, PushResult, SendQueue, State};
use crate::metrics;
use herald_core::{Overflow, Publication, RoomKey};
use herald_protocol::{ClientCodec, DroppedRoom, ServerFrame, StreamPosition};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// What shedding would remove and add, decided before anything changes.
#[derive(Default)]
struct Plan {
    remove: Vec<bool>,
    removed_items: usize,
    removed_bytes: usize,
    conflated: u64,
    dropped: u64,
    /// Notices by the index of the item they go in front of, ascending.
    notices: Vec<(usize, Outbound)>,
    notice_bytes: usize,
}

impl SendQueue {
    /// [`Self::push`] for a control frame or ping of a connection whose
    /// codec is `codec`: a full queue first sheds what its namespaces allow
    /// (`overflow.rs`); only then does the push overflow.
    pub(crate) fn push_shedding(&self, item: Outbound, codec: &dyn ClientCodec) -> PushResult {
        let result = self.enqueue_or_shed(item, codec);
        if result == PushResult::Queued {
            self.flush();
        }
        result
    }

    /// [`Self::push_shedding`] without the write (see [`Self::enqueue`]).
    pub(crate) fn enqueue_or_shed(&self, item: Outbound, codec: &dyn ClientCodec) -> PushResult {
        match self.try_enqueue(item) {
            Ok(()) => PushResult::Queued,
            Err((PushResult::Overflow, item)) => self.enqueue_shedding(item, codec),
            Err((result, _)) => result,
        }
    }

    /// Queues an item (a room event, or a control frame or ping of the
    /// connection) that a plain enqueue found no room for, making room by
    /// conflating and dropping sheddable events (see the module
    /// documentation). `codec` encodes the `events_dropped` notices.
    /// [`PushResult::Overflow`] means the caller cuts the connection.
    pub(crate) fn enqueue_shedding(&self, item: Outbound, codec: &dyn ClientCodec) -> PushResult {
        let len = item.len();
        let incoming = publication(&item).cloned();
        let mut s = self.state.lock();
        if s.closing.is_some() {
            return PushResult::Closed;
        }
        let notices = queued_notice_count(&s.items);
        if self.fits(&s, notices, 0, 0, len) {
            // Written meanwhile, or only notices in the way: room after all.
            s.bytes += len;
            s.items.push_back(item);
            return PushResult::Queued;
        }
        // An event of a `disconnect` namespace never makes room: a full
        // queue cuts its connection (other items, replies and pings, shed
        // what their connection's namespaces allow).
        if incoming
            .as_ref()
            .is_some_and(|p| p.policy.get().overflow == Overflow::Disconnect)
        {
            return PushResult::Overflow;
        }
        let Some(plan) = self.plan(&s, notices, incoming.as_deref(), len, codec) else {
            return PushResult::Overflow;
        };
        let notice_count = plan.notices.len() as u64;
        let old = std::mem::take(&mut s.items);
        let mut items = VecDeque::with_capacity(old.len() + plan.notices.len() + 1);
        let mut notices = plan.notices.into_iter().peekable();
        for (i, queued) in old.into_iter().enumerate() {
            if let Some((_, notice)) = notices.next_if(|(at, _)| *at == i) {
                items.push_back(notice);
            }
            if !plan.remove[i] {
                items.push_back(queued);
            }
        }
        items.push_back(item);
        s.items = items;
        s.bytes = s.bytes - plan.removed_bytes + plan.notice_bytes + len;
        drop(s);
        metrics::events_shed(plan.dropped, plan.conflated, notice_count);
        PushResult::Queued
    }

    /// Whether the queue takes one more item of `len` bytes after removing
    /// `removed` items and `freed` bytes (net of notices added); `notices`
    /// queued items are notices, which the frame bound does not count.
    fn fits(&self, s: &State, notices: usize, removed: isize, freed: isize, len: usize) -> bool {
        let items = (s.items.len() - notices) as isize - removed + 1;
        let bytes = s.bytes as isize - freed + len as isize;
        items <= self.max_items as isize && bytes <= self.max_bytes as isize
    }

    /// Decides what to remove so the incoming event fits, or `None` when
    /// nothing sheddable frees enough.
    fn plan(
        &self,
        s: &State,
        notices: usize,
        incoming: Option<&Publication>,
        len: usize,
        codec: &dyn ClientCodec,
    ) -> Option<Plan> {
        let n = s.items.len();
        // A frame the writer has begun must end whole.
        let first = usize::from(!s.writing && s.offset > 0 && n > 0);
        let mut plan = Plan {
            remove: vec![false; n],
            ..Plan::default()
        };
        // Notices count against the byte bound but not the frame bound:
        // dropping one room's single event would otherwise free nothing.
        let net = |plan: &Plan| {
            (
                plan.removed_items as isize,
                plan.removed_bytes as isize - plan.notice_bytes as isize,
            )
        };

        // 1. Conflation, newest first: the first of each key seen stays.
        let mut newer: HashSet<(&RoomKey, &str)> = HashSet::new();
        if let Some(p) = incoming {
            if let Some(key) = p.conflation_key.as_deref() {
                newer.insert((&p.room, key));
            }
        }
        for i in (first..n).rev() {
            let Some(p) = publication(&s.items[i]) else {
                continue;
            };
            let Some(key) = p.conflation_key.as_deref() else {
                continue;
            };
            let policy = p.policy.get();
            let superseded = !newer.insert((&p.room, key));
            if superseded && policy.overflow == Overflow::Conflate && !policy.critical {
                plan.remove[i] = true;
                plan.removed_items += 1;
                plan.removed_bytes += s.items[i].len();
                plan.conflated += 1;
            }
        }
        let (items, bytes) = net(&plan);
        if self.fits(s, notices, items, bytes, len) {
            return Some(plan);
        }

        // 2. Drop sheddable events, oldest first, noting each room's gap.
        // `covered`: per room, the earliest notice queued (or planned) since
        // the room's last `room_joined`, walking the queue in order.
        let mut covered: HashMap<&str, StreamPosition> = HashMap::new();
        for i in 0..n {
            let item = &s.items[i];
            match change(item) {
                Some(PositionChange::Dropped { room, position }) => {
                    cover(&mut covered, room.as_str(), position);
                }
                Some(PositionChange::Joined { room, .. }) => {
                    covered.remove(room.as_str());
                }
                _ => {}
            }
            if i < first || plan.remove[i] {
                continue;
            }
            let Some(p) = publication(item) else {
                continue;
            };
            if !p.policy.get().sheddable() {
                continue;
            }
            plan.remove[i] = true;
            plan.removed_items += 1;
            plan.removed_bytes += item.len();
            plan.dropped += 1;
            let before = StreamPosition::new(
                p.position.epoch.clone(),
                p.position.offset.saturating_sub(1),
            );
            let already = covered
                .get(p.room.name.as_str())
                .is_some_and(|at| at.epoch == before.epoch && at.offset <= before.offset);
            if !already {
                let notice = notice(codec, p, before.clone());
                plan.notice_bytes += notice.len();
                plan.notices.push((i, notice));
                covered.insert(p.room.name.as_str(), before);
            }
            let (items, bytes) = net(&plan);
            if self.fits(s, notices, items, bytes, len) {
                return Some(plan);
            }
        }
        None
    }
}

fn publication(item: &Outbound) -> Option<&Arc<Publication>> {
    match item {
        Outbound::Frame {
            publication: Some(p),
            ..
        } => Some(p),
        _ => None,
    }
}

/// The position change an item makes when written, if any.
fn change(item: &Outbound) -> Option<&PositionChange> {
    match item {
        Outbound::Frame {
            change: Some(change),
            ..
        } => Some(change),
        _ => None,
    }
}

/// How many queued items are `events_dropped` notices.
fn queued_notice_count(items: &VecDeque<Outbound>) -> usize {
    items
        .iter()
        .filter(|item| matches!(change(item), Some(PositionChange::Dropped { .. })))
        .count()
}

/// Records a notice for `room` at `position`, keeping the earliest.
fn cover<'a>(
    covered: &mut HashMap<&'a str, StreamPosition>,
    room: &'a str,
    position: &StreamPosition,
) {
    covered
        .entry(room)
        .and_modify(|p| {
            if p.epoch == position.epoch && position.offset < p.offset {
                *p = position.clone();
            }
        })
        .or_insert_with(|| position.clone());
}

/// The `events_dropped` notice for `p`'s room, resuming from `before`.
fn notice(codec: &dyn ClientCodec, p: &Publication, before: StreamPosition) -> Outbound {
    let bytes = codec.encode(&ServerFrame::EventsDropped {
        rooms: vec![DroppedRoom {
            room: p.room.name.as_str().to_owned(),
            epoch: before.epoch.clone(),
            offset: before.offset,
        }],
    });
    Outbound::changing(
        bytes,
        PositionChange::Dropped {
            room: p.room.name.clone(),
            position: before,
        },
    )
}

#[cfg(test)]
#[path = "overflow_tests.rs"]
mod tests;
