//! Room membership on this node and fan-out.
//!
//! One entry per room with local members, in a sharded map. Fan-out takes a
//! shard's read lock, encodes the event once and queues the same bytes for
//! every member (queueing never waits, so the lock is held briefly and a
//! slow client holds nothing up); the writes happen after the lock is let
//! go (see [`crate::flush`]).
//!
//! Joining is a two-phase handshake that makes resume gap-free (documented
//! in docs/architecture.md): the member is first registered as *pending*,
//! which buffers every publication fanned out to it; then the stream's
//! position (or history) is read from the broker; then, under the shard's
//! write lock, `room_joined`, the replay and the buffered publications newer
//! than the replay are queued and the member turns live. Live delivery skips
//! offsets the join already covered, so nothing arrives twice.

use crate::conn::Connection;
use crate::flush::Flusher;
use crate::hooks::Emitter;
use crate::members::{Member, Members};
use crate::metrics;
use crate::queue::{Outbound, PushResult};
use herald_core::broker::Writes;
use herald_core::{
    EventPolicy, MemberRecord, Namespaces, PresenceChange, PresenceSink, Publication,
    PublicationSink, RoomKey,
};
use herald_protocol::{CloseCode, MemberSummary, ServerFrame, StreamPosition, CODEC_SLOTS};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const SHARDS: usize = 64;

#[cfg(test)]
#[path = "rooms_tests.rs"]
mod tests;

#[derive(Default)]
struct RoomEntry {
    members: Members,
    presence: bool,
}

pub(crate) struct Rooms {
    shards: Box<[RwLock<HashMap<RoomKey, RoomEntry>>]>,
    node_id: Arc<str>,
    pending_limit: usize,
    count: AtomicUsize,
    flusher: Flusher,
    /// `member.*` and (alone) `room.*`, emitted under the room's shard
    /// lock so a room's events come in the order of its transitions.
    hooks: Emitter,
    /// Deliveries by namespace and event name.
    events: Arc<metrics::EventCounters>,
    /// The node's tracer, set once when tracing is on (see `trace.rs`).
    pub(crate) telemetry: std::sync::OnceLock<herald_telemetry::Telemetry>,
    /// The namespaces, when one of them sheds events or lists critical
    /// ones: fan-out then resolves each event's policy once.
    priorities: Option<Arc<Namespaces>>,
}

impl Rooms {
    pub(crate) fn new(node_id: Arc<str>, pending_limit: usize, flusher: Flusher) -> Self {
        let node_id_for_hooks = node_id.clone();
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            node_id,
            pending_limit: pending_limit.max(1),
            count: AtomicUsize::new(0),
            flusher,
            hooks: Emitter::off(node_id_for_hooks),
            events: Arc::new(metrics::EventCounters::new([])),
            telemetry: std::sync::OnceLock::new(),
            priorities: None,
        }
    }

    /// The same rooms, resolving each event's backpressure policy from
    /// `namespaces` (only kept when a namespace uses priorities).
    pub(crate) fn with_priorities(mut self, namespaces: &Namespaces) -> Self {
        self.priorities = namespaces
            .uses_priorities()
            .then(|| Arc::new(namespaces.clone()));
        self
    }

    /// The same rooms, counting deliveries into `events` (the node's).
    pub(crate) fn with_events(mut self, events: Arc<metrics::EventCounters>) -> Self {
        self.events = events;
        self
    }

    /// The same rooms, emitting webhook events through `hooks`.
    pub(crate) fn with_hooks(mut self, hooks: Emitter) -> Self {
        self.hooks = hooks;
        self
    }

    fn shard(&self, room: &RoomKey) -> &RwLock<HashMap<RoomKey, RoomEntry>> {
        let mut h = std::hash::DefaultHasher::new();
        room.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// Rooms with at least one local member.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Phase 1: register `conn` as a pending member of `room`. A `rejoin`
    /// of a live member turns it pending, remembering where it was so a
    /// rejoin that fails can turn it live again ([`Self::abort_rejoin`]); a
    /// rejoin of a member still pending (its replay superseded) keeps what
    /// it buffered. O(1) whatever the room's size.
    pub(crate) fn begin_join(
        &self,
        room: &RoomKey,
        conn: &Arc<Connection>,
        presence: bool,
        rejoin: bool,
    ) {
        let mut shard = self.shard(room).write();
        let created = !shard.contains_key(room);
        let entry = shard.entry(room.clone()).or_default();
        entry.presence = presence;
        match entry.members.get_mut(conn) {
            Some(member) if rejoin => {
                if member.pending.is_none() {
                    member.before_rejoin = Some(member.start.clone());
                    member.pending = Some(Mutex::new(Vec::new()));
                } else {
                    // Its replay (of a rejoin that succeeded) is what a
                    // failure goes back to, not what it had before that.
                    member.before_rejoin = None;
                }
            }
            _ => {
                if entry.members.insert(Member::joining(conn)) {
                    self.hooks.joined(room, conn, created);
                }
            }
        }
        if created {
            self.count.fetch_add(1, Ordering::Relaxed);
            metrics::rooms(self.len());
        }
    }

    /// Undoes [`Self::begin_join`] of a rejoin that failed: a member that
    /// was live turns live again from where it was, after the publications
    /// buffered meanwhile, so its stream has no gap; a member that was
    /// pending stays pending (its replay goes on). A failed join changes
    /// nothing, as the client expects of an error reply.
    pub(crate) fn abort_rejoin(&self, room: &RoomKey, conn: &Arc<Connection>) {
        let mut written = false;
        {
            let mut shard = self.shard(room).write();
            let Some(member) = shard
                .get_mut(room)
                .and_then(|entry| entry.members.get_mut(conn))
            else {
                return;
            };
            let Some(start) = member.before_rejoin.take() else {
                return;
            };
            if let Some(buffer) = member.pending.take() {
                for p in buffer.into_inner() {
                    if p.position.epoch != start.epoch || p.position.offset > start.offset {
                        written |= enqueue_publication(conn, &p, &p.encoded(conn.codec));
                    }
                }
            }
            member.start = start;
        }
        if written {
            self.flusher.flush(vec![conn.clone()]);
        }
    }

    /// Phase 2: queue `first` (the `room_joined` frame, if any), then
    /// `replay`, then every buffered publication after `position`, and turn
    /// the member live; with `announce`, tell the other members (presence).
    /// Returns `None` when the member vanished meanwhile (the connection
    /// left or closed).
    pub(crate) fn complete_join(
        &self,
        room: &RoomKey,
        conn: &Arc<Connection>,
        position: &StreamPosition,
        first: Option<Outbound>,
        replay: &[Arc<Publication>],
        announce: bool,
    ) -> Option<()> {
        let mut written = vec![conn.clone()];
        {
            let mut shard = self.shard(room).write();
            let entry = shard.get_mut(room)?;
            let member = entry.members.get_mut(conn)?;
            if let Some(frame) = first {
                enqueued(conn, conn.queue.enqueue_or_shed(frame, conn.codec));
            }
            let mut last = position.offset;
            for p in replay {
                enqueue_publication(conn, p, &p.encoded(conn.codec));
                last = last.max(p.position.offset);
            }
            if let Some(buffer) = member.pending.take() {
                for p in buffer.into_inner() {
                    if p.position.epoch != position.epoch || p.position.offset > last {
                        enqueue_publication(conn, &p, &p.encoded(conn.codec));
                        last = p.position.offset;
                    }
                }
            }
            member.start = StreamPosition::new(position.epoch.clone(), last);
            member.before_rejoin = None;
            member.announced |= announce;
            if entry.presence && announce {
                let frame = ServerFrame::MemberJoined {
                    room: room.name.to_string(),
                    user_id: conn.user_id.to_string(),
                    connection_id: conn.id.to_string(),
                };
                let others = entry.members.iter().filter(|m| !Arc::ptr_eq(&m.conn, conn));
                tell_live(others, &frame, &mut written);
            }
        }
        self.flusher.flush(written);
        Some(())
    }

    /// Takes what the pending member `conn` of `room` buffered so far,
    /// leaving it pending (a paced replay queues these itself, so the final
    /// [`Self::complete_join`] has little left to queue at once). `None`
    /// when the member vanished (the connection left or closed) or is live.
    pub(crate) fn take_pending(
        &self,
        room: &RoomKey,
        conn: &Arc<Connection>,
    ) -> Option<Vec<Arc<Publication>>> {
        let shard = self.shard(room).read();
        let member = shard.get(room)?.members.get(conn)?;
        let buffer = member.pending.as_ref()?;
        let taken = std::mem::take(&mut *buffer.lock());
        Some(taken)
    }

    /// Removes `conn` from `room` (O(1)), telling the others when presence
    /// is on.
    pub(crate) fn remove(&self, room: &RoomKey, conn: &Arc<Connection>) {
        let mut written = Vec::new();
        {
            let mut shard = self.shard(room).write();
            let Some(entry) = shard.get_mut(room) else {
                return;
            };
            let removed = entry.members.remove(conn);
            let was_announced = removed.as_ref().is_some_and(|m| m.announced);
            if was_announced && entry.presence {
                let frame = ServerFrame::MemberLeft {
                    room: room.name.to_string(),
                    user_id: conn.user_id.to_string(),
                    connection_id: conn.id.to_string(),
                };
                tell_live(entry.members.iter(), &frame, &mut written);
            }
            if removed.is_some() {
                self.hooks.left(room, conn, entry.members.is_empty());
            }
            if entry.members.is_empty() {
                shard.remove(room);
                self.count.fetch_sub(1, Ordering::Relaxed);
                metrics::rooms(self.len());
            }
        }
        self.flusher.flush(written);
    }

    /// The local members of `room`.
    pub(crate) fn members(&self, room: &RoomKey) -> Vec<MemberSummary> {
        let shard = self.shard(room).read();
        shard.get(room).map_or_else(Vec::new, |e| {
            e.members
                .iter()
                .map(|m| MemberSummary {
                    user_id: m.conn.user_id.to_string(),
                    connection_id: m.conn.id.to_string(),
                    node_id: self.node_id.to_string(),
                })
                .collect()
        })
    }
}

/// Whether `conn` receives `p`: not excluded, and (for events, not
/// messages) passing its filter.
pub(crate) fn passes(conn: &Connection, p: &Publication) -> bool {
    p.exclude_connection.as_deref() != Some(&*conn.id) && (p.from.is_some() || conn.wants(&p.event))
}

/// Queues `frame` for every live (not joining) member, noting whom to
/// write. Encoded once per codec among the members, in each member's own.
fn tell_live<'a>(
    members: impl Iterator<Item = &'a Member>,
    frame: &ServerFrame,
    written: &mut Vec<Arc<Connection>>,
) {
    let mut encoded: [Option<bytes::Bytes>; CODEC_SLOTS] = Default::default();
    for m in members.filter(|m| m.pending.is_none()) {
        let codec = m.conn.codec;
        let bytes = match encoded.get_mut(codec.slot()) {
            Some(cell) => cell.get_or_insert_with(|| codec.encode(frame)).clone(),
            None => codec.encode(frame),
        };
        let queued = m
            .conn
            .queue
            .enqueue_or_shed(Outbound::control(bytes), codec);
        if enqueued(&m.conn, queued) {
            written.push(m.conn.clone());
        }
    }
}

/// Queues one publication for `conn` without writing it, applying exclusion
/// and the filter. Returns whether it was queued.
pub(crate) fn enqueue_publication(
    conn: &Connection,
    p: &Arc<Publication>,
    frame: &bytes::Bytes,
) -> bool {
    if !passes(conn, p) {
        return false;
    }
    let item = || Outbound::Frame {
        bytes: frame.clone(),
        publication: Some(p.clone()),
        change: None,
    };
    let mut result = conn.queue.enqueue(item());
    // Only a full queue pays for the policy: the cell read and the
    // shedding path are off the per-recipient path. Even an event of a
    // `disconnect` namespace goes there, since queued `events_dropped`
    // notices do not count against the frame bound; it sheds nothing.
    if result == PushResult::Overflow {
        result = conn.queue.enqueue_shedding(item(), conn.codec);
    }
    enqueued(conn, result)
}

fn enqueued(conn: &Connection, result: PushResult) -> bool {
    match result {
        PushResult::Queued => true,
        PushResult::Overflow => {
            conn.close(CloseCode::SlowConsumer);
            false
        }
        PushResult::Closed => false,
    }
}

impl PresenceSink for Rooms {
    fn changed(&self, change: &PresenceChange) {
        let room = change.room.name.to_string();
        let user_id = change.user_id.clone();
        let connection_id = change.connection_id.clone();
        let frame = if change.joined {
            ServerFrame::MemberJoined {
                room,
                user_id,
                connection_id,
            }
        } else {
            ServerFrame::MemberLeft {
                room,
                user_id,
                connection_id,
            }
        };
        let mut written = Vec::new();
        {
            let shard = self.shard(&change.room).read();
            let Some(entry) = shard.get(&change.room) else {
                return;
            };
            tell_live(entry.members.iter(), &frame, &mut written);
        }
        self.flusher.flush(written);
    }

    fn local_members(&self, room: &RoomKey) -> Vec<MemberRecord> {
        self.members(room)
            .into_iter()
            .map(|m| MemberRecord {
                user_id: m.user_id,
                connection_id: m.connection_id,
                node_id: m.node_id,
            })
            .collect()
    }
}

impl PublicationSink for Rooms {
    fn deliver(&self, p: Arc<Publication>) -> Writes {
        let span = crate::trace::fanout_start(&self.telemetry, &p);
        if let Some(namespaces) = &self.priorities {
            // Once per event, before any queue can see it.
            let ns = namespaces.for_room(&p.room.name);
            p.policy.set(EventPolicy {
                overflow: ns.overflow,
                critical: p.critical || ns.critical_events.contains(&p.event),
            });
        }
        let mut written = Vec::new();
        {
            let shard = self.shard(&p.room).read();
            let Some(entry) = shard.get(&p.room) else {
                return Writes::none();
            };
            written.reserve(entry.members.len());
            for m in &entry.members {
                if let Some(buffer) = &m.pending {
                    let mut buffer = buffer.lock();
                    if buffer.len() >= self.pending_limit {
                        drop(buffer);
                        m.conn.close(CloseCode::SlowConsumer);
                    } else {
                        buffer.push(p.clone());
                    }
                    continue;
                }
                if p.position.offset <= m.start.offset && p.position.epoch == m.start.epoch {
                    continue;
                }
                // Encoded once per codec, on first use: a room whose members
                // are all pending or filtered out costs no encoding.
                if enqueue_publication(&m.conn, &p, &p.encoded(m.conn.codec)) {
                    written.push(m.conn.clone());
                }
            }
        }
        // Once per publication, not per recipient.
        self.events
            .delivered(p.room.name.namespace(), &p.event, written.len());
        crate::trace::fanout_queued(span, &p, &written);
        // Queued in order under the broker's lock; written after it.
        self.flusher.writes(written)
    }
}
