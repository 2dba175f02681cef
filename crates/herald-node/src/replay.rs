//! Paced replay: a recovering join's stored events go into the send queue
//! as the socket drains, so a gap larger than the queue still resumes.
//!
//! A joining member stays *pending* in its room (live publications are
//! buffered, see [`crate::rooms`]) until its replay is queued. The replay
//! is fed in slices while the queue is at most half full: first the stored
//! events, then what the pending buffer gathered meanwhile (newer than the
//! replay, in publish order). Once both are empty, the room's usual last
//! step ([`crate::rooms::Rooms::complete_join`]) queues whatever arrived
//! since and turns the member live, so replayed and live events meet with
//! no gap and no duplicate. The buffer keeps its bound meanwhile: a member
//! whose buffer overflows is cut as a slow consumer (4011), from where the
//! client resumes further on.
//!
//! Who feeds: a transport that drains the queue itself (SSE) feeds after
//! each batch; a queue with a socket writer (WebSocket) asks for
//! [`crate::Duty::Refill`] when it has no room left, and the connection's
//! task feeds again once the writer emptied it.

use crate::conn::Connection;
use crate::rooms::{enqueue_publication, Rooms};
use herald_core::{Publication, RoomKey};
use herald_protocol::StreamPosition;
use std::collections::VecDeque;
use std::sync::Arc;

/// One recovering join whose events are not all queued yet.
pub(crate) struct Replay {
    pub(crate) key: RoomKey,
    /// Epoch of the stream the join resumed in.
    epoch: String,
    /// Highest offset of that epoch queued so far (at least the position
    /// announced in `room_joined`, which the stored events reach).
    last: u64,
    /// Events still to queue, oldest first.
    events: VecDeque<Arc<Publication>>,
    /// Whether the final step tells the room's members (presence).
    announce: bool,
}

impl Replay {
    /// A replay of `events` (stored events up to `position`).
    pub(crate) fn new(
        key: RoomKey,
        position: &StreamPosition,
        events: Vec<Arc<Publication>>,
        announce: bool,
    ) -> Self {
        Self {
            key,
            epoch: position.epoch.clone(),
            last: position.offset,
            events: events.into(),
            announce,
        }
    }

    /// Whether `p` comes after what was queued (publications of another
    /// epoch always do: the stream was reset meanwhile).
    fn is_new(&self, p: &Publication) -> bool {
        p.position.epoch != self.epoch || p.position.offset > self.last
    }

    fn queue(&mut self, conn: &Connection, p: &Arc<Publication>) {
        if p.position.epoch == self.epoch {
            self.last = self.last.max(p.position.offset);
        }
        enqueue_publication(conn, p, &p.encode());
    }
}

/// Queues as much of `replays` (in order) as the queue has room for.
/// Returns whether some remain, in which case the caller feeds again later.
pub(crate) fn feed(rooms: &Rooms, conn: &Arc<Connection>, replays: &mut VecDeque<Replay>) -> bool {
    loop {
        if conn.queue.closing().is_some() {
            replays.clear();
            return false;
        }
        let Some(replay) = replays.front_mut() else {
            return false;
        };
        let mut queued = false;
        let mut finished = false;
        while conn.queue.has_room() {
            if let Some(p) = replay.events.pop_front() {
                replay.queue(conn, &p);
                queued = true;
                continue;
            }
            match rooms.take_pending(&replay.key, conn) {
                // The member left or the connection closed meanwhile.
                None => {
                    replays.pop_front();
                    finished = true;
                }
                Some(buffered) if buffered.is_empty() => {
                    let position = StreamPosition::new(replay.epoch.clone(), replay.last);
                    rooms.complete_join(&replay.key, conn, &position, None, &[], replay.announce);
                    replays.pop_front();
                    finished = true;
                }
                Some(buffered) => {
                    let fresh: Vec<_> = buffered.into_iter().filter(|p| replay.is_new(p)).collect();
                    replay.events.extend(fresh);
                    continue;
                }
            }
            break;
        }
        if queued {
            // One write for the slice (with a writer); a wake-up without.
            conn.queue.flush();
        }
        if finished {
            continue;
        }
        if !conn.queue.has_room() {
            // The writer emptied the queue meanwhile, or will.
            conn.queue.want_room();
            if !conn.queue.has_room() {
                return true;
            }
        }
    }
}
