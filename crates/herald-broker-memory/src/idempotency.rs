//! Idempotency keys remembered per tenant for a fixed time.

use herald_core::Tenant;
use herald_protocol::StreamPosition;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub(crate) type Key = (Tenant, String);

pub(crate) struct IdempotencyCache {
    ttl: Duration,
    entries: Mutex<HashMap<Key, (StreamPosition, Instant)>>,
}

impl IdempotencyCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn get(&self, key: &Key) -> Option<StreamPosition> {
        let entries = self.entries.lock();
        entries
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(p, _)| p.clone())
    }

    pub(crate) fn insert(&self, key: Key, position: StreamPosition) {
        self.entries.lock().insert(key, (position, Instant::now()));
    }

    pub(crate) fn sweep(&self, now: Instant) {
        self.entries
            .lock()
            .retain(|_, (_, at)| now.duration_since(*at) < self.ttl);
    }
}
