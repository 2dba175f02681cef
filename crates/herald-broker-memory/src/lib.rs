//! The embedded in-memory broker: one node, no outside service.
//!
//! Each room's stream lives behind its own mutex, held while the offset is
//! assigned, the event stored and handed to the sink, which makes publish
//! atomic per room and keeps delivery in offset order (the [`Broker`]
//! contract). The sink only queues, so the lock is held for microseconds.

#![warn(missing_docs)]

mod idempotency;
mod stream;

use async_trait::async_trait;
use herald_core::broker::{BrokerStats, HistoryPage};
use herald_core::{
    Broker, BrokerError, Publication, PublicationSink, PublishOutcome, PublishRequest, RoomKey,
};
use herald_protocol::StreamPosition;
use idempotency::IdempotencyCache;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stream::RoomStream;

/// How long an idempotency key is remembered at least (longer in rooms
/// whose history lives longer).
pub const IDEMPOTENCY_TTL: Duration = Duration::from_secs(300);

/// Number of independently locked shards of the room map.
const SHARDS: usize = 64;

type Shard = Mutex<HashMap<RoomKey, Arc<Mutex<RoomStream>>>>;

/// The in-memory broker engine.
pub struct MemoryBroker {
    shards: Box<[Shard]>,
    sink: Arc<dyn PublicationSink>,
    idempotency: IdempotencyCache,
}

impl MemoryBroker {
    /// A broker delivering to `sink`.
    pub fn new(sink: Arc<dyn PublicationSink>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            sink,
            idempotency: IdempotencyCache::new(IDEMPOTENCY_TTL),
        }
    }

    fn shard(&self, room: &RoomKey) -> &Shard {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::hash::DefaultHasher::new();
        room.hash(&mut hasher);
        &self.shards[(hasher.finish() as usize) % SHARDS]
    }

    fn stream(&self, room: &RoomKey) -> Arc<Mutex<RoomStream>> {
        let mut shard = self.shard(room).lock();
        shard
            .entry(room.clone())
            .or_insert_with(|| Arc::new(Mutex::new(RoomStream::new())))
            .clone()
    }

    fn existing(&self, room: &RoomKey) -> Option<Arc<Mutex<RoomStream>>> {
        self.shard(room).lock().get(room).cloned()
    }

    /// The outcome of an earlier publish with the same idempotency key: its
    /// position, or a conflict when that publish went to another room.
    fn earlier(
        &self,
        key: &Option<idempotency::Key>,
        room: &RoomKey,
    ) -> Option<Result<PublishOutcome, BrokerError>> {
        let (first_room, position) = self.idempotency.get(key.as_ref()?)?;
        Some(if first_room == room.name {
            Ok(PublishOutcome {
                position,
                duplicate: true,
            })
        } else {
            Err(BrokerError::IdempotencyConflict {
                room: first_room.to_string(),
            })
        })
    }

    /// Drops streams that hold no events and were idle for `idle`, and
    /// expired idempotency keys. Called periodically by the node.
    pub fn sweep(&self, idle: Duration) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            shard.lock().retain(|_, s| !s.lock().expired(now, idle));
        }
        self.idempotency.sweep(now);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn new_event_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

#[async_trait]
impl Broker for MemoryBroker {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn publish(&self, request: PublishRequest) -> Result<PublishOutcome, BrokerError> {
        let idem = request
            .idempotency_key
            .as_ref()
            .map(|k| (request.room.tenant.clone(), k.clone()));
        if let Some(outcome) = self.earlier(&idem, &request.room) {
            return outcome;
        }
        let stream = self.stream(&request.room);
        let mut stream = stream.lock();
        // Checked again under the room lock so two concurrent retries with
        // one key cannot both publish.
        if let Some(outcome) = self.earlier(&idem, &request.room) {
            return outcome;
        }
        let position = stream.next_position();
        let publication = Arc::new(Publication {
            room: request.room,
            position: position.clone(),
            event: request.event,
            data: request.data,
            ts: now_ms(),
            event_id: new_event_id(),
            from: request.from,
            exclude_connection: request.exclude_connection,
            accepted_at: Some(Instant::now()),
        });
        stream.store(publication.clone(), request.history);
        if let Some(key) = idem {
            let room = publication.room.name.clone();
            self.idempotency
                .insert(key, room, position.clone(), request.history.ttl);
        }
        self.sink.deliver(publication);
        Ok(PublishOutcome {
            position,
            duplicate: false,
        })
    }

    async fn subscribe(&self, _room: &RoomKey) -> Result<(), BrokerError> {
        // Every publication already reaches the one local sink.
        Ok(())
    }

    async fn unsubscribe(&self, _room: &RoomKey) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn position(&self, room: &RoomKey) -> Result<StreamPosition, BrokerError> {
        Ok(self.stream(room).lock().position())
    }

    async fn history(
        &self,
        room: &RoomKey,
        since: u64,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        let Some(stream) = self.existing(room) else {
            return Ok(HistoryPage {
                position: self.stream(room).lock().position(),
                publications: Vec::new(),
                complete: since == 0,
            });
        };
        let page = stream.lock().read(since, limit, Instant::now());
        Ok(page)
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn stats(&self) -> BrokerStats {
        let mut stats = BrokerStats::default();
        for shard in self.shards.iter() {
            for stream in shard.lock().values() {
                let s = stream.lock();
                stats.streams += 1;
                stats.stored_events += s.stored_events();
                stats.stored_bytes += s.stored_bytes();
            }
        }
        stats
    }
}

#[cfg(test)]
mod tests;
