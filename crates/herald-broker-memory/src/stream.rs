//! One room's stream: epoch, last offset and bounded history.

use crate::budget::{Accounting, Trim};
use herald_core::broker::HistoryPage;
use herald_core::{HistoryPolicy, Publication};
use herald_protocol::StreamPosition;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// Fixed overhead counted per stored event besides its strings and payload.
const EVENT_OVERHEAD: usize = std::mem::size_of::<Publication>() + 16;
/// The JSON envelope of an event's client frame around its strings and
/// payload (`{"type":"event","room":...,"offset":...}`), rounded up.
const FRAME_ENVELOPE: usize = 160;

struct Stored {
    publication: Arc<Publication>,
    stored_at: Instant,
    expires_at: Instant,
    bytes: usize,
}

pub(crate) struct RoomStream {
    epoch: Arc<str>,
    offset: u64,
    history: VecDeque<Stored>,
    bytes: usize,
    /// Local members (the broker's counted `subscribe`): a stream with
    /// members is kept even without history, so a caught-up member that
    /// reconnects still recovers.
    subscribers: usize,
    /// Set when the sweep dropped this stream from the room map; a publish
    /// that got hold of it just before must start over on the new one.
    pub(crate) removed: bool,
}

impl RoomStream {
    /// A stream in `epoch`, the engine's current one: a reader told
    /// `(epoch, 0)` before the stream existed stays consistent with it.
    pub(crate) fn new(epoch: Arc<str>) -> Self {
        Self {
            epoch,
            offset: 0,
            history: VecDeque::new(),
            bytes: 0,
            subscribers: 0,
            removed: false,
        }
    }

    pub(crate) fn epoch(&self) -> &Arc<str> {
        &self.epoch
    }

    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    pub(crate) fn position(&self) -> StreamPosition {
        StreamPosition::new(self.epoch.to_string(), self.offset)
    }

    pub(crate) fn next_position(&mut self) -> StreamPosition {
        self.offset += 1;
        self.position()
    }

    pub(crate) fn subscribe(&mut self) {
        self.subscribers += 1;
    }

    pub(crate) fn unsubscribe(&mut self) {
        self.subscribers = self.subscribers.saturating_sub(1);
    }

    pub(crate) fn store(
        &mut self,
        publication: Arc<Publication>,
        policy: HistoryPolicy,
        acct: &Accounting,
    ) {
        let now = Instant::now();
        self.drop_expired(now, acct);
        if policy.size == 0 || policy.ttl.is_zero() {
            return;
        }
        let strings = publication.data.get().len()
            + publication.event.len()
            + publication.event_id.len()
            + publication.position.epoch.len();
        // A stored event also keeps the client frame it was encoded into
        // once delivered or read (its per-codec cache), which repeats its
        // strings and the room's name: counted up front, so the budgets
        // bound what history really holds.
        let frame = strings + publication.room.name.as_str().len() + FRAME_ENVELOPE;
        let bytes = EVENT_OVERHEAD + strings + frame;
        // Always pushed, then trimmed from the front: an event larger than
        // the budget takes the older ones with it, so what is kept stays a
        // contiguous run and a read never skips a gap unnoticed.
        self.history.push_back(Stored {
            publication,
            stored_at: now,
            expires_at: now + policy.ttl,
            bytes,
        });
        self.bytes += bytes;
        acct.add(bytes);
        while self.history.len() > policy.size {
            self.pop_front(acct, Trim::Size);
        }
        while policy.max_bytes > 0 && self.bytes > policy.max_bytes {
            self.pop_front(acct, Trim::RoomBytes);
        }
    }

    pub(crate) fn pop_front(&mut self, acct: &Accounting, why: Trim) {
        if let Some(s) = self.history.pop_front() {
            self.bytes -= s.bytes;
            acct.remove(s.bytes, why);
        }
    }

    /// When the oldest stored event was stored, if any.
    pub(crate) fn oldest_stored_at(&self) -> Option<Instant> {
        self.history.front().map(|s| s.stored_at)
    }

    fn drop_expired(&mut self, now: Instant, acct: &Accounting) {
        while self.history.front().is_some_and(|s| s.expires_at <= now) {
            self.pop_front(acct, Trim::Ttl);
        }
    }

    pub(crate) fn read(
        &mut self,
        since: u64,
        limit: usize,
        now: Instant,
        acct: &Accounting,
    ) -> HistoryPage {
        self.drop_expired(now, acct);
        let oldest = self
            .history
            .front()
            .map_or(self.offset + 1, |s| s.publication.position.offset);
        let start = self.first_after(since);
        let publications: Vec<Arc<Publication>> = self
            .history
            .range(start..)
            .take(limit)
            .map(|s| s.publication.clone())
            .collect();
        let last_returned = publications.last().map_or(since, |p| p.position.offset);
        // No hole inside the page (see `first_after`).
        let contiguous = last_returned.saturating_sub(since) == publications.len() as u64;
        // Complete when nothing after `since` was lost and the page reaches
        // the stream's head. `since` may come from a client (u64::MAX).
        let complete = since.saturating_add(1) >= oldest
            && contiguous
            && last_returned >= self.offset.max(since);
        HistoryPage {
            position: self.position(),
            publications,
            complete: complete && since <= self.offset,
        }
    }

    /// Index in `history` of the first stored event after `since`, found
    /// without walking the history (a read holds the stream's lock).
    fn first_after(&self, since: u64) -> usize {
        let len = self.history.len();
        let Some(front) = self.history.front() else {
            return 0;
        };
        let oldest = front.publication.position.offset;
        if since < oldest {
            return 0;
        }
        // The stored run is contiguous (trimmed from the front only), so
        // the event after `since` sits at `since + 1 - oldest`; past the
        // newest, that is the end.
        let idx = usize::try_from(since - oldest + 1).map_or(len, |i| i.min(len));
        let offset_at = |i: usize| self.history[i].publication.position.offset;
        if (idx == 0 || offset_at(idx - 1) <= since) && (idx == len || offset_at(idx) > since) {
            return idx;
        }
        // A publish that stored nothing (a history size of 0 for that one
        // request) left a hole: offsets still increase, so search.
        self.history
            .partition_point(|s| s.publication.position.offset <= since)
    }

    /// Whether the stream can be forgotten: no history left (expired events
    /// are dropped first) and no local member. Forgetting it loses its
    /// offset; the broker then moves its epoch on (see `MemoryBroker`).
    pub(crate) fn expired(&mut self, now: Instant, acct: &Accounting) -> bool {
        self.drop_expired(now, acct);
        self.history.is_empty() && self.subscribers == 0
    }

    pub(crate) fn stored_events(&self) -> usize {
        self.history.len()
    }

    pub(crate) fn stored_bytes(&self) -> usize {
        self.bytes
    }
}
