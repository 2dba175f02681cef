//! One room's stream: epoch, last offset and bounded history.

use herald_core::broker::HistoryPage;
use herald_core::{HistoryPolicy, Publication};
use herald_protocol::StreamPosition;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fixed overhead counted per stored event besides its strings and payload.
const EVENT_OVERHEAD: usize = std::mem::size_of::<Publication>() + 16;

struct Stored {
    publication: Arc<Publication>,
    expires_at: Instant,
    bytes: usize,
}

pub(crate) struct RoomStream {
    epoch: String,
    offset: u64,
    history: VecDeque<Stored>,
    bytes: usize,
    last_used: Instant,
}

impl RoomStream {
    pub(crate) fn new() -> Self {
        Self {
            // A fresh random epoch per stream life: after a restart or an
            // expiry every client can tell its old positions are void.
            epoch: format!("{:016x}", rand::random::<u64>()),
            offset: 0,
            history: VecDeque::new(),
            bytes: 0,
            last_used: Instant::now(),
        }
    }

    pub(crate) fn position(&self) -> StreamPosition {
        StreamPosition::new(self.epoch.clone(), self.offset)
    }

    pub(crate) fn next_position(&mut self) -> StreamPosition {
        self.offset += 1;
        self.last_used = Instant::now();
        self.position()
    }

    pub(crate) fn store(&mut self, publication: Arc<Publication>, policy: HistoryPolicy) {
        let now = Instant::now();
        self.drop_expired(now);
        if policy.size == 0 || policy.ttl.is_zero() {
            return;
        }
        let bytes = EVENT_OVERHEAD
            + publication.data.get().len()
            + publication.event.len()
            + publication.event_id.len()
            + publication.position.epoch.len();
        self.history.push_back(Stored {
            publication,
            expires_at: now + policy.ttl,
            bytes,
        });
        self.bytes += bytes;
        while self.history.len() > policy.size {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(s) = self.history.pop_front() {
            self.bytes -= s.bytes;
        }
    }

    fn drop_expired(&mut self, now: Instant) {
        while self.history.front().is_some_and(|s| s.expires_at <= now) {
            self.pop_front();
        }
    }

    pub(crate) fn read(&mut self, since: u64, limit: usize, now: Instant) -> HistoryPage {
        self.drop_expired(now);
        let oldest = self
            .history
            .front()
            .map_or(self.offset + 1, |s| s.publication.position.offset);
        let publications: Vec<Arc<Publication>> = self
            .history
            .iter()
            .filter(|s| s.publication.position.offset > since)
            .take(limit)
            .map(|s| s.publication.clone())
            .collect();
        let last_returned = publications.last().map_or(since, |p| p.position.offset);
        // Complete when nothing after `since` was lost and the page reaches
        // the stream's head. `since` may come from a client (u64::MAX).
        let complete = since.saturating_add(1) >= oldest && last_returned >= self.offset.max(since);
        HistoryPage {
            position: self.position(),
            publications,
            complete: complete && since <= self.offset,
        }
    }

    /// Whether the stream can be forgotten: nothing stored and idle long
    /// enough. Forgetting it starts a new epoch on next use.
    pub(crate) fn expired(&mut self, now: Instant, idle: Duration) -> bool {
        self.drop_expired(now);
        self.history.is_empty() && now.duration_since(self.last_used) >= idle
    }

    pub(crate) fn stored_events(&self) -> usize {
        self.history.len()
    }

    pub(crate) fn stored_bytes(&self) -> usize {
        self.bytes
    }
}
