//! Shared by the broker tests: nodes (a `RedisBroker` with its own clients
//! and a collecting sink) on a real Redis, and the conformance harness
//! (herald-testkit's `conformance`) of the Redis engine at a URL.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

/// The Redis engine at `url` (a single server or a Redis Cluster), for the
/// conformance scenarios.
pub fn redis_engine(url: &str) -> herald_testkit::conformance::Harness {
    let mut settings = herald_core::EngineSettings::new();
    settings.insert("redis_url".into(), url.into());
    settings.insert("node_heartbeat".into(), "1s".into());
    settings.insert("command_timeout".into(), "2s".into());
    herald_testkit::conformance::Harness::new(Arc::new(herald_broker_redis::RedisEngine), settings)
        .streams_are_listened_rooms()
}

use herald_broker_redis::{RedisBroker, RedisClients, RedisSettings};
use herald_core::broker::Writes;
use herald_core::{Broker, PresenceChange, PresenceSink, Publication, PublicationSink, RoomKey};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

// The room, request and waiting helpers are the conformance suite's (each
// test crate uses a different subset).
#[allow(unused_imports)]
pub use herald_testkit::conformance::{request, request_with, room, room_of, wait_until, MINUTE};

/// Collects what a broker delivers.
#[derive(Default)]
pub struct Collect {
    pub publications: Mutex<Vec<Arc<Publication>>>,
    pub presence: Mutex<Vec<PresenceChange>>,
    /// While set, `deliver` blocks (breaking the sink contract on purpose,
    /// to stall the reader).
    pub hold: AtomicBool,
    /// While set, `deliver` of this room blocks (as above, for one room).
    pub hold_room: Mutex<Option<RoomKey>>,
    /// While set, the writes of this room's deliveries block: a slow socket.
    pub hold_writes: Arc<Mutex<Option<RoomKey>>>,
    /// (room, offset) of every delivery whose writes ran, in order.
    pub written: Arc<Mutex<Vec<(RoomKey, u64)>>>,
}

/// Blocks while `held` says so, handing this worker's queued tasks to
/// another thread first: a blocked worker would otherwise sit on the
/// connection tasks the publishers wait for.
fn block_while(held: impl Fn() -> bool) {
    if held() {
        tokio::task::block_in_place(|| {
            while held() {
                std::thread::sleep(Duration::from_millis(1));
            }
        });
    }
}

impl PublicationSink for Collect {
    fn deliver(&self, publication: Arc<Publication>) -> Writes {
        block_while(|| self.hold.load(Ordering::Acquire));
        block_while(|| self.hold_room.lock().as_ref() == Some(&publication.room));
        let (room, offset) = (publication.room.clone(), publication.position.offset);
        self.publications.lock().push(publication);
        let (hold, written) = (self.hold_writes.clone(), self.written.clone());
        Writes::new(move || {
            block_while(|| hold.lock().as_ref() == Some(&room));
            written.lock().push((room, offset));
        })
    }
}

impl PresenceSink for Collect {
    fn changed(&self, change: &PresenceChange) {
        self.presence.lock().push(change.clone());
    }

    fn local_members(&self, _room: &RoomKey) -> Vec<herald_core::MemberRecord> {
        Vec::new()
    }
}

impl Collect {
    /// Offsets delivered for `room`, in delivery order.
    pub fn offsets(&self, room: &RoomKey) -> Vec<u64> {
        self.publications
            .lock()
            .iter()
            .filter(|p| &p.room == room)
            .map(|p| p.position.offset)
            .collect()
    }

    /// (epoch, offset) delivered for `room`, in delivery order.
    pub fn positions(&self, room: &RoomKey) -> Vec<(String, u64)> {
        self.publications
            .lock()
            .iter()
            .filter(|p| &p.room == room)
            .map(|p| (p.position.epoch.clone(), p.position.offset))
            .collect()
    }

    pub fn count(&self, room: &RoomKey) -> usize {
        self.offsets(room).len()
    }

    /// Offsets of `room` whose writes ran.
    pub fn written(&self, room: &RoomKey) -> Vec<u64> {
        let written = self.written.lock();
        written
            .iter()
            .filter(|(r, _)| r == room)
            .map(|(_, o)| *o)
            .collect()
    }
}

/// One "node": a broker with its own connections.
pub struct Node {
    pub broker: Arc<RedisBroker>,
    pub sink: Arc<Collect>,
    pub clients: RedisClients,
    connections: [fred::types::ConnectHandle; 2],
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Node {
    pub async fn start(url: &str, prefix: &str, node_id: &str) -> Self {
        Self::start_with_timeout(url, prefix, node_id, Duration::from_secs(2)).await
    }

    pub async fn start_with_timeout(
        url: &str,
        prefix: &str,
        node_id: &str,
        command_timeout: Duration,
    ) -> Self {
        let settings = RedisSettings {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            node_id: node_id.to_owned(),
            node_heartbeat: Duration::from_secs(1),
            command_timeout,
        };
        let clients = RedisClients::connect(&settings).expect("redis url");
        let sink = Arc::new(Collect::default());
        let broker = RedisBroker::new(clients.clone(), &settings, sink.clone(), sink.clone());
        let connections = clients.start();
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        broker.spawn(cancel.clone(), &tasks);
        let ready = broker.clone();
        wait_until("the broker connects", || ready.is_ready()).await;
        Self {
            broker,
            sink,
            clients,
            connections,
            cancel,
            tasks,
        }
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        self.tasks.close();
        tokio::time::timeout(Duration::from_secs(5), self.tasks.wait())
            .await
            .expect("the reader stops on cancel");
        self.clients.quit().await;
        for handle in self.connections {
            let closed = tokio::time::timeout(Duration::from_secs(5), handle).await;
            closed.expect("the connection tasks end after quit").ok();
        }
    }
}

static PREFIXES: AtomicU64 = AtomicU64::new(0);

/// A key prefix of its own for one test.
pub fn prefix(tag: &str) -> String {
    let n = PREFIXES.fetch_add(1, Ordering::Relaxed);
    format!("t{}-{tag}-{n}", std::process::id())
}
