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
//! Several recovering rooms (an SSE resume over many rooms, say) take
//! turns of at most [`TURN`] events, so every room's buffer keeps draining
//! while a long gap in another is replayed.
//!
//! A replay longer than one page ([`REPLAY_PAGE`] events) is read page by
//! page as the client takes it, so memory per replay stays one page
//! whatever the gap. Every page must follow on without a hole (an engine
//! may skip an expired or unreadable entry anywhere in a page). If history
//! was trimmed past the client meanwhile, a page has a hole (or the stream
//! was reset), the rest cannot be replayed without a gap: the
//! connection is cut as a slow consumer (4011), and the client's resume
//! from where it got to answers `recovered: false`. A broker that fails a
//! read closes it with 1013 (try again later).
//!
//! Who feeds: a transport that drains the queue itself (SSE) feeds after
//! each batch; a queue with a socket writer (WebSocket) asks for
//! [`crate::Duty::Refill`] when it has no room left, and the connection's
//! task feeds again once the writer emptied it.

use crate::conn::Connection;
use crate::error::NodeError;
use crate::rooms::{enqueue_publication, passes, Rooms};
use crate::session::Session;
use herald_core::{Broker, BrokerError, HistoryPage, Publication, RoomKey};
use herald_protocol::{CloseCode, StreamPosition};
use std::collections::VecDeque;
use std::sync::Arc;

/// Most stored events a recovering join reads at once.
pub(crate) const REPLAY_PAGE: usize = 1000;

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
    /// Stored events after the ones read so far remain to be read, up to
    /// this offset (the position announced in `room_joined`).
    unread_to: Option<u64>,
    /// Offset of the last stored event read.
    read_to: u64,
    /// Whether the final step tells the room's members (presence).
    pub(crate) announce: bool,
    /// Its stored events are queued: what is left is what its room
    /// buffered meanwhile, which goes first (see [`feed`]).
    draining: bool,
}

impl Replay {
    /// A replay of `events` (the first stored events of the gap, up to
    /// `position`); with `more`, the rest of the gap is read later.
    pub(crate) fn new(
        key: RoomKey,
        position: &StreamPosition,
        events: Vec<Arc<Publication>>,
        more: bool,
        announce: bool,
    ) -> Self {
        let read_to = events.last().map_or(0, |p| p.position.offset);
        Self {
            key,
            epoch: position.epoch.clone(),
            last: position.offset,
            events: events.into(),
            unread_to: more.then_some(position.offset),
            read_to,
            announce,
            draining: false,
        }
    }

    /// The read of the next page, when one is due.
    pub(crate) fn next_read(&self, broker: &Arc<dyn Broker>) -> Option<ReplayRead> {
        let to = self.unread_to?;
        Some(ReplayRead {
            broker: broker.clone(),
            key: self.key.clone(),
            since: self.read_to,
            limit: usize::try_from(to.saturating_sub(self.read_to))
                .unwrap_or(REPLAY_PAGE)
                .clamp(1, REPLAY_PAGE),
        })
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
        enqueue_publication(conn, p, &p.encoded(conn.codec));
    }
}

/// The read of one page of a replay's stored events; holds no borrow of
/// the session, so a transport can run it while it goes on draining.
pub struct ReplayRead {
    broker: Arc<dyn Broker>,
    key: RoomKey,
    since: u64,
    limit: usize,
}

impl std::fmt::Debug for ReplayRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayRead")
            .field("key", &self.key)
            .field("since", &self.since)
            .finish_non_exhaustive()
    }
}

impl ReplayRead {
    /// Reads the page.
    pub async fn run(self) -> ReplayPage {
        let result = self.broker.history(&self.key, self.since, self.limit).await;
        ReplayPage {
            key: self.key,
            since: self.since,
            result,
        }
    }
}

/// A page read by [`ReplayRead::run`], for [`Session::add_replay_page`].
#[derive(Debug)]
pub struct ReplayPage {
    key: RoomKey,
    since: u64,
    result: Result<HistoryPage, BrokerError>,
}

/// How far [`feed`] got.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fed {
    /// Every replay is queued.
    Done,
    /// The queue has no room; feed again once it drained.
    Waiting,
    /// The first replay needs its next page read.
    NeedsPage,
}

/// Most events one replay queues in a turn before the next room's replay
/// gets the queue.
const TURN: usize = 64;

/// How one replay's turn ended.
enum Turn {
    /// Its events are all queued and the member is live (or gone).
    Finished,
    /// It needs its next page read first.
    NeedsPage,
    /// It queued its share (or the queue filled): the next one's turn.
    Yielded,
}

/// Queues as much of `replays` as the queue has room for. A replay whose
/// stored events are all queued goes first and is fed until its room's
/// buffer is empty and the member turns live, as a live member's events
/// would be queued; the others take turns of at most [`TURN`] events. So
/// the live events a recovering room buffers keep being drained whatever
/// gap another room replays (a replay fed to the end before the next one
/// starts would let a busy room's buffer overflow behind a long gap).
/// Each room's events still go out in order, and each room turns live as
/// in a single replay.
pub(crate) fn feed(rooms: &Rooms, conn: &Arc<Connection>, replays: &mut VecDeque<Replay>) -> Fed {
    let mut queued = false;
    let fed = loop {
        if conn.queue.closing().is_some() {
            replays.clear();
            break Fed::Done;
        }
        if replays.is_empty() {
            break Fed::Done;
        }
        if !conn.queue.has_room() {
            if std::mem::take(&mut queued) {
                // One write for what was queued (with a writer); a
                // wake-up without.
                conn.queue.flush();
            }
            // The writer emptied the queue meanwhile, or will.
            conn.queue.want_room();
            if !conn.queue.has_room() {
                return Fed::Waiting;
            }
            continue;
        }
        let (idx, draining) = replays
            .iter()
            .position(|r| r.draining)
            .map_or((0, false), |i| (i, true));
        let Some(replay) = replays.get_mut(idx) else {
            break Fed::Done;
        };
        match take_turn(rooms, conn, replay, &mut queued) {
            Turn::Finished => {
                replays.remove(idx);
            }
            // Only a replay still reading its stored events (the front).
            Turn::NeedsPage => break Fed::NeedsPage,
            // A draining replay yields only when the queue is full.
            Turn::Yielded if draining => {}
            Turn::Yielded => replays.rotate_left(1),
        }
    };
    if queued {
        conn.queue.flush();
    }
    fed
}

/// Queues up to [`TURN`] of `replay`'s stored events while the queue has
/// room; once those are queued, what its room buffered meanwhile (without
/// a cap), and when nothing is left, turns the member live.
fn take_turn(
    rooms: &Rooms,
    conn: &Arc<Connection>,
    replay: &mut Replay,
    queued: &mut bool,
) -> Turn {
    let mut n = 0;
    while (replay.draining || n < TURN) && conn.queue.has_room() {
        if let Some(p) = replay.events.pop_front() {
            replay.queue(conn, &p);
            *queued = true;
            n += 1;
            continue;
        }
        if replay.unread_to.is_some() {
            return Turn::NeedsPage;
        }
        match rooms.take_pending(&replay.key, conn) {
            // The member left or the connection closed meanwhile.
            None => return Turn::Finished,
            Some(buffered) if buffered.is_empty() => {
                let position = StreamPosition::new(replay.epoch.clone(), replay.last);
                rooms.complete_join(&replay.key, conn, &position, None, &[], replay.announce);
                return Turn::Finished;
            }
            Some(buffered) => {
                replay.draining = true;
                let fresh: Vec<_> = buffered.into_iter().filter(|p| replay.is_new(p)).collect();
                replay.events.extend(fresh);
            }
        }
    }
    Turn::Yielded
}

/// Adds a page read for its room's replay (a page for a replay that ended
/// or was superseded meanwhile is dropped).
pub(crate) fn add_page(conn: &Connection, replays: &mut VecDeque<Replay>, page: ReplayPage) {
    let Some(replay) = replays.iter_mut().find(|r| r.key == page.key) else {
        return;
    };
    if replay.key != page.key || replay.read_to != page.since || replay.unread_to.is_none() {
        return;
    }
    let page = match page.result {
        Ok(page) => page,
        Err(e) => {
            tracing::warn!(room = %replay.key, error = %e, "replay read failed");
            conn.close(CloseCode::TryAgainLater);
            replays.clear();
            return;
        }
    };
    if page.position.epoch != replay.epoch
        || page.publications.is_empty()
        || !follows(replay.read_to, &page.publications)
    {
        // Trimmed past the client, a hole inside the page (an entry expired
        // or unreadable), or reset: no gap-free way on.
        tracing::debug!(room = %replay.key, "history moved past a replay under way");
        conn.close(CloseCode::SlowConsumer);
        replays.clear();
        return;
    }
    let to = replay.unread_to.unwrap_or(0);
    replay.read_to = page.publications.last().map_or(to, |p| p.position.offset);
    if replay.read_to >= to {
        replay.unread_to = None;
    }
    replay.events.extend(page.publications);
}

/// Whether `publications` are the events right after `since`, each
/// following the one before by exactly one offset: an engine may skip
/// entries anywhere in a page (expired, or unreadable), and a replay must
/// not pass over the hole.
fn follows(since: u64, publications: &[Arc<Publication>]) -> bool {
    let mut expected = since;
    publications.iter().all(|p| {
        expected = match expected.checked_add(1) {
            Some(next) if next == p.position.offset => next,
            _ => return false,
        };
        true
    })
}

/// What phase two of a join read: the position, and for a recovering join
/// the first page of its replay.
pub(crate) struct Resolved {
    pub(crate) position: StreamPosition,
    pub(crate) replay: Vec<Arc<Publication>>,
    pub(crate) recovered: bool,
    /// Stored events after `replay` remain to be read.
    pub(crate) more: bool,
}

impl Session {
    /// Queues more of the recovering joins' events as the send queue has
    /// room (see [`crate::replay`]). Returns the read of the next page of
    /// stored events when the replay needs one: run it (no session borrow
    /// is held meanwhile) and hand its result to
    /// [`Session::add_replay_page`]. A transport that drains the queue
    /// itself calls this after each batch.
    pub fn feed_replay(&mut self) -> Option<ReplayRead> {
        if feed(&self.node.inner.rooms, &self.conn, &mut self.replays) != Fed::NeedsPage {
            return None;
        }
        self.replays
            .front()
            .and_then(|r| r.next_read(self.node.broker()))
    }

    /// Queues a page of stored events read for the replay under way.
    pub fn add_replay_page(&mut self, page: ReplayPage) {
        add_page(&self.conn, &mut self.replays, page);
    }

    /// Feeds the replay, reading pages as needed, until it waits for room
    /// or is done. For transports whose task owns the session (WebSocket,
    /// on [`crate::Duty::Refill`]).
    pub async fn feed_replay_all(&mut self) {
        while let Some(read) = self.feed_replay() {
            let page = read.run().await;
            self.add_replay_page(page);
        }
    }

    /// What `room_joined` reports as `replayed`: the events the client will
    /// receive (the filter and exclusions apply to replayed events too);
    /// for a replay longer than one page, the stored events of the gap,
    /// counted before the filter (the later pages are not read yet).
    pub(crate) fn replayed(&self, since: Option<&StreamPosition>, r: &Resolved) -> u64 {
        match since {
            Some(since) if r.more => r.position.offset.saturating_sub(since.offset),
            _ => r.replay.iter().filter(|p| passes(&self.conn, p)).count() as u64,
        }
    }

    /// Phase two of a join: subscribe the node (counted per member, see
    /// the `Broker` contract), record the membership cluster-wide, then read
    /// the position, or the history after `since`. On error, tells whether
    /// the subscription was taken (and must be released).
    pub(crate) async fn resolve(
        &self,
        key: &RoomKey,
        since: Option<&StreamPosition>,
        history_size: usize,
        presence: bool,
        new_member: bool,
    ) -> Result<Resolved, (NodeError, bool)> {
        let broker = self.node.broker();
        if new_member {
            broker.subscribe(key).await.map_err(|e| (e.into(), false))?;
            self.node
                .cluster_membership(key, &self.conn, presence, true)
                .await;
        }
        let Some(since) = since else {
            let position = broker.position(key).await.map_err(|e| (e.into(), true))?;
            return Ok(Resolved {
                position,
                replay: Vec::new(),
                recovered: false,
                more: false,
            });
        };
        let limit = history_size.clamp(1, REPLAY_PAGE);
        let page = broker
            .history(key, since.offset, limit)
            .await
            .map_err(|e| (e.into(), true))?;
        let in_stream = page.position.epoch == since.epoch && since.offset <= page.position.offset;
        // Every event of the page follows `since` without a hole (`since`
        // comes from the client: no overflow on u64::MAX).
        let contiguous = follows(since.offset, &page.publications);
        // History is trimmed from the front only: a full, gap-free page
        // starting right after `since` was cut by the limit, and the rest
        // of the gap is still stored.
        let more = !page.complete && page.publications.len() == limit && contiguous;
        if in_stream && contiguous && (page.complete || more) {
            Ok(Resolved {
                position: page.position,
                replay: page.publications,
                recovered: true,
                more,
            })
        } else {
            Ok(Resolved {
                position: page.position,
                replay: Vec::new(),
                recovered: false,
                more: false,
            })
        }
    }
}
