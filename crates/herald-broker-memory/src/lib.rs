//! The embedded in-memory broker: one node, no outside service.
//!
//! Each room's stream lives behind its own mutex, held while the offset is
//! assigned, the event stored and handed to the sink, which makes publish
//! atomic per room and keeps delivery in offset order (the [`Broker`]
//! contract): the sink queues the frame on every recipient's connection
//! under that lock, so each connection's queue is in offset order. The
//! socket writes the sink hands back ([`Writes`]) run after the lock is let
//! go, on the publishing task (a large room's in chunks on the runtime's
//! workers), so a room's next publish never waits behind socket writes.
//!
//! Only `publish` and `subscribe` create a room's stream; reads of an
//! unknown room answer offset 0 in the engine's current epoch. A stream
//! without history and without local members is dropped by the next
//! [`MemoryBroker::sweep`] (or at once when its last member leaves).
//! Dropping a stream that had published events moves the engine's epoch
//! on, under the lock of the room's shard, so the room's next stream can
//! never reuse the epoch of its old offsets.
//!
//! History is bounded per room (events, age and bytes: [`HistoryPolicy`])
//! and node-wide ([`MemoryBroker::with_history_budget`]), oldest events
//! trimmed first.

#![warn(missing_docs)]

mod budget;
mod factory;
mod idempotency;
mod outbox;
mod stream;

pub use factory::{MemoryEngine, SWEEP_INTERVAL};
pub use outbox::{MemoryOutbox, DEFAULT_OUTBOX_CAPACITY};

use async_trait::async_trait;
use budget::Accounting;
use herald_core::broker::{BrokerStats, HistoryPage, Writes};
#[cfg(doc)]
use herald_core::HistoryPolicy;
use herald_core::{
    Broker, BrokerError, Publication, PublicationSink, PublishOutcome, PublishRequest, RoomKey,
};
use herald_engine_kit::telemetry::{register_commands, Command};
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
    /// The epoch new streams start in (and reads of unknown rooms report).
    epoch: Mutex<Arc<str>>,
    /// Node-wide history byte budget; 0 for none.
    history_budget: usize,
    acct: Accounting,
    /// Held by the one publish trimming to the node-wide budget; the others
    /// do not queue behind it.
    trimming: Mutex<()>,
}

/// The engine's timed commands (`herald_broker_command_duration_seconds
/// {engine="memory"}`): in-process, so they show lock waits and the
/// queueing to local members, not a network.
static PUBLISH: Command = Command::new("memory", "publish");
static HISTORY: Command = Command::new("memory", "history");

fn new_epoch() -> Arc<str> {
    // Random per engine life: after a restart every client can tell its old
    // positions are void.
    format!("{:016x}", rand::random::<u64>()).into()
}

impl MemoryBroker {
    /// A broker delivering to `sink`, without a node-wide history budget.
    pub fn new(sink: Arc<dyn PublicationSink>) -> Self {
        register_commands(&[&PUBLISH, &HISTORY]);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            sink,
            idempotency: IdempotencyCache::new(IDEMPOTENCY_TTL),
            epoch: Mutex::new(new_epoch()),
            history_budget: 0,
            acct: Accounting::default(),
            trimming: Mutex::new(()),
        }
    }

    /// Bounds the history of all rooms together to about `bytes` (0: no
    /// bound): past it, the oldest events of any room are trimmed until
    /// the total is back at 7/8 of it (`limits.history_total_bytes`).
    pub fn with_history_budget(mut self, bytes: usize) -> Self {
        self.history_budget = bytes;
        self
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
            .or_insert_with(|| Arc::new(Mutex::new(RoomStream::new(self.epoch.lock().clone()))))
            .clone()
    }

    /// The position a reader of a room without a stream is told.
    fn empty_position(&self) -> StreamPosition {
        StreamPosition::new(self.epoch.lock().to_string(), 0)
    }

    /// Called with the shard of a just dropped stream still locked, so its
    /// room cannot get a new stream in between: moves the engine's epoch on
    /// when the dropped stream had events in it, so no later stream of that
    /// room reuses (epoch, offset) pairs its clients saw.
    fn forget(&self, stream: &mut RoomStream) {
        stream.removed = true;
        let mut epoch = self.epoch.lock();
        if stream.offset() > 0 && Arc::ptr_eq(stream.epoch(), &epoch) {
            *epoch = new_epoch();
        }
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

    /// Drops streams with no history left (expired events go first) and no
    /// local member, and expired idempotency keys. Called periodically by
    /// the node.
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            shard.lock().retain(|_, s| {
                let mut s = s.lock();
                let drop = s.expired(now, &self.acct);
                if drop {
                    self.forget(&mut s);
                }
                !drop
            });
        }
        self.idempotency.sweep(now);
    }

    /// Trims to the node-wide budget when the total is past it.
    fn enforce_budget(&self) {
        if self.history_budget == 0 || self.acct.bytes() <= self.history_budget {
            return;
        }
        let Some(_trimming) = self.trimming.try_lock() else {
            return;
        };
        let streams: Vec<_> = self
            .shards
            .iter()
            .flat_map(|shard| shard.lock().values().cloned().collect::<Vec<_>>())
            .collect();
        budget::trim_to_budget(streams, self.history_budget, &self.acct);
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
        let started = Instant::now();
        let (outcome, writes) = self.publish_locked(request, idem);
        PUBLISH.record(started.elapsed(), outcome.is_ok());
        // The room's lock is released: now write the sockets.
        writes.run();
        self.enforce_budget();
        outcome
    }

    async fn subscribe(&self, room: &RoomKey) -> Result<(), BrokerError> {
        // Every publication already reaches the one local sink; the count
        // keeps the stream (and its offset) while the room has members.
        // Counted under the shard lock, so the sweep cannot drop the stream
        // between the lookup and the count.
        let mut shard = self.shard(room).lock();
        let stream = shard
            .entry(room.clone())
            .or_insert_with(|| Arc::new(Mutex::new(RoomStream::new(self.epoch.lock().clone()))));
        stream.lock().subscribe();
        Ok(())
    }

    async fn unsubscribe(&self, room: &RoomKey) -> Result<(), BrokerError> {
        let mut shard = self.shard(room).lock();
        let Some(stream) = shard.get(room).cloned() else {
            return Ok(());
        };
        let mut s = stream.lock();
        s.unsubscribe();
        // The last member gone and nothing to replay: forget the room now
        // rather than at the next sweep.
        if s.expired(Instant::now(), &self.acct) {
            self.forget(&mut s);
            drop(s);
            shard.remove(room);
        }
        Ok(())
    }

    async fn position(&self, room: &RoomKey) -> Result<StreamPosition, BrokerError> {
        Ok(match self.existing(room) {
            Some(stream) => stream.lock().position(),
            None => self.empty_position(),
        })
    }

    async fn history(
        &self,
        room: &RoomKey,
        since: u64,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        let Some(stream) = self.existing(room) else {
            return Ok(HistoryPage {
                position: self.empty_position(),
                publications: Vec::new(),
                complete: since == 0,
            });
        };
        let started = Instant::now();
        let page = stream.lock().read(since, limit, started, &self.acct);
        HISTORY.record(started.elapsed(), true);
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
        stats.trimmed = self.acct.trims();
        stats
    }
}

impl MemoryBroker {
    /// Publish under the room's lock (see the module doc); returns the
    /// socket writes to run once the lock is released.
    fn publish_locked(
        &self,
        request: PublishRequest,
        idem: Option<idempotency::Key>,
    ) -> (Result<PublishOutcome, BrokerError>, Writes) {
        loop {
            let arc = self.stream(&request.room);
            let mut stream = arc.lock();
            // A stream the sweep dropped after we looked it up is stale:
            // its offsets died with it. Look again.
            if stream.removed {
                continue;
            }
            return self.publish_in(&mut stream, request, idem);
        }
    }

    fn publish_in(
        &self,
        stream: &mut RoomStream,
        request: PublishRequest,
        idem: Option<idempotency::Key>,
    ) -> (Result<PublishOutcome, BrokerError>, Writes) {
        // Checked again under the room lock so two concurrent retries with
        // one key cannot both publish.
        if let Some(outcome) = self.earlier(&idem, &request.room) {
            return (outcome, Writes::none());
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
            encoded: Default::default(),
            trace: request.trace,
            critical: request.critical,
            conflation_key: request.conflation_key,
            policy: Default::default(),
        });
        stream.store(publication.clone(), request.history, &self.acct);
        if let Some(key) = idem {
            let room = publication.room.name.clone();
            self.idempotency
                .insert(key, room, position.clone(), request.history.ttl);
        }
        let writes = self.sink.deliver(publication);
        let outcome = Ok(PublishOutcome {
            position,
            duplicate: false,
        });
        (outcome, writes)
    }
}

#[cfg(test)]
mod tests;
