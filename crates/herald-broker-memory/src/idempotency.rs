//! Idempotency keys remembered per tenant for a fixed time.

use herald_core::Tenant;
use herald_protocol::StreamPosition;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub(crate) type Key = (Tenant, String);

/// Keys live at least `min_ttl`, and as long as the room's history, so a
/// retry within the history window still finds its first outcome.
pub(crate) struct IdempotencyCache {
    min_ttl: Duration,
    entries: Mutex<HashMap<Key, (StreamPosition, Instant)>>,
}

impl IdempotencyCache {
    pub(crate) fn new(min_ttl: Duration) -> Self {
        Self {
            min_ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn get(&self, key: &Key) -> Option<StreamPosition> {
        let entries = self.entries.lock();
        entries
            .get(key)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(p, _)| p.clone())
    }

    pub(crate) fn insert(&self, key: Key, position: StreamPosition, history_ttl: Duration) {
        let expires = Instant::now() + self.min_ttl.max(history_ttl);
        self.entries.lock().insert(key, (position, expires));
    }

    pub(crate) fn sweep(&self, now: Instant) {
        self.entries.lock().retain(|_, (_, expires)| *expires > now);
    }
}
