//! Idempotency keys remembered per tenant for a fixed time.

use herald_core::{RoomName, Tenant};
use herald_protocol::StreamPosition;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub(crate) type Key = (Tenant, String);

/// Keys live at least `min_ttl`, and as long as the room's history, so a
/// retry within the history window still finds its first outcome.
pub(crate) struct IdempotencyCache {
    min_ttl: Duration,
    entries: Mutex<HashMap<Key, (RoomName, StreamPosition, Instant)>>,
}

impl IdempotencyCache {
    pub(crate) fn new(min_ttl: Duration) -> Self {
        Self {
            min_ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The room and position of the first publish with `key`.
    pub(crate) fn get(&self, key: &Key) -> Option<(RoomName, StreamPosition)> {
        let entries = self.entries.lock();
        entries
            .get(key)
            .filter(|(_, _, expires)| *expires > Instant::now())
            .map(|(room, p, _)| (room.clone(), p.clone()))
    }

    pub(crate) fn insert(
        &self,
        key: Key,
        room: RoomName,
        position: StreamPosition,
        history_ttl: Duration,
    ) {
        let expires = Instant::now() + self.min_ttl.max(history_ttl);
        self.entries.lock().insert(key, (room, position, expires));
    }

    pub(crate) fn sweep(&self, now: Instant) {
        self.entries
            .lock()
            .retain(|_, (_, _, expires)| *expires > now);
    }
}
