//! The engine conformance suite: the [`herald_core::Broker`] and
//! [`herald_core::Presence`] contracts as scenarios that take any engine
//! through its [`EngineFactory`], the way a node starts it.
//!
//! An engine's test crate builds a [`Harness`] (the factory and the
//! `[broker]` settings that make several nodes share one backend) and runs
//! every function of [`scenarios`] once, one `#[tokio::test]` each. A
//! scenario needing several nodes on one backend declares it
//! ([`Needs::MultiNode`]) and is skipped, saying why, for an engine that
//! serves one node; every other scenario must pass on every engine.

pub mod cluster;
pub mod scenarios;

use herald_core::{
    Broker, EngineContext, EngineFactory, EngineSettings, EngineShutdown, HistoryPolicy,
    MemberRecord, NoPublishTarget, NodeFigures, Presence, PresenceChange, PresenceSink,
    Publication, PublicationSink, PublishRequest, RoomKey, RoomName, Tenant,
};
use parking_lot::Mutex;
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// An engine under test: its factory and the settings its nodes share.
pub struct Harness {
    factory: Arc<dyn EngineFactory>,
    settings: EngineSettings,
    streams_are_listened_rooms: bool,
}

/// What a scenario needs beyond one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// Two nodes sharing the engine's backend.
    MultiNode,
}

impl Harness {
    /// Nodes of `factory` started with `settings` (the `[broker]` table; a
    /// fresh `prefix` is set per scenario so scenarios sharing a backend
    /// do not see each other).
    pub fn new(factory: Arc<dyn EngineFactory>, settings: EngineSettings) -> Self {
        Self {
            factory,
            settings,
            streams_are_listened_rooms: false,
        }
    }

    /// The engine reports the rooms a node listens to as
    /// [`herald_core::BrokerStats::streams`] (history lives elsewhere),
    /// which the scenarios then check too.
    pub fn streams_are_listened_rooms(mut self) -> Self {
        self.streams_are_listened_rooms = true;
        self
    }

    /// Whether several nodes can share the engine's backend.
    pub fn multi_node(&self) -> bool {
        self.factory.capabilities().multi_node
    }

    /// Whether the engine can run a scenario needing `needs`; when not,
    /// prints why the scenario is skipped.
    pub fn supports(&self, scenario: &str, needs: Needs) -> bool {
        let ok = match needs {
            Needs::MultiNode => self.factory.capabilities().multi_node,
        };
        if !ok {
            println!(
                "conformance: `{scenario}` skipped for the `{}` engine: it needs {needs:?} \
                 (several nodes sharing one backend) and this engine serves one node",
                self.factory.kind()
            );
        }
        ok
    }

    /// Starts `n` nodes (`node-a`, `node-b`...) sharing one backend under a
    /// prefix of their own; an engine serving one node gets one node
    /// whatever `n` is (scenarios then play every role with it).
    pub async fn nodes(&self, tag: &str, n: usize) -> Vec<TestNode> {
        let n = if self.factory.capabilities().multi_node {
            n
        } else {
            1
        };
        let mut settings = self.settings.clone();
        settings.insert("prefix".into(), prefix(tag).into());
        let mut nodes = Vec::new();
        for i in 0..n {
            let id = format!("node-{}", (b'a' + i as u8) as char);
            nodes.push(TestNode::start(self.factory.as_ref(), settings.clone(), &id).await);
        }
        nodes
    }

    fn streams_are_listened(&self) -> bool {
        self.streams_are_listened_rooms
    }
}

static PREFIXES: AtomicU64 = AtomicU64::new(0);

/// A key prefix of its own for one scenario.
pub fn prefix(tag: &str) -> String {
    let n = PREFIXES.fetch_add(1, Ordering::Relaxed);
    format!("t{}-{tag}-{n}", std::process::id())
}

/// One node's engine, with sinks that collect what it hands the node.
pub struct TestNode {
    /// The node's id.
    pub id: String,
    /// The engine's broker.
    pub broker: Arc<dyn Broker>,
    /// The engine's presence.
    pub presence: Arc<dyn Presence>,
    /// What the engine delivered.
    pub sink: Arc<Collect>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    shutdown: Option<EngineShutdown>,
}

impl TestNode {
    async fn start(factory: &dyn EngineFactory, settings: EngineSettings, id: &str) -> Self {
        let sink = Arc::new(Collect::default());
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let engine = factory
            .start(EngineContext {
                node_id: id.to_owned(),
                cancel: cancel.clone(),
                tasks: tasks.clone(),
                sink: sink.clone(),
                presence_sink: sink.clone(),
                node: Arc::new(NoNode(id.to_owned())),
                publish: Arc::new(NoPublishTarget),
                history_budget: 0,
                settings,
                hooks: herald_core::HookSet::empty(),
            })
            .expect("the engine starts");
        let broker = engine.broker.clone();
        wait_until("the engine is ready", || broker.is_ready()).await;
        Self {
            id: id.to_owned(),
            broker: engine.broker,
            presence: engine.presence,
            sink,
            cancel,
            tasks,
            shutdown: engine.shutdown,
        }
    }

    /// Stops the engine's tasks, then runs its shutdown step.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tasks.close();
        tokio::time::timeout(Duration::from_secs(5), self.tasks.wait())
            .await
            .expect("the engine's tasks stop on cancel");
        if let Some(shutdown) = self.shutdown {
            tokio::time::timeout(Duration::from_secs(5), shutdown)
                .await
                .expect("the engine shuts down");
        }
    }
}

/// A node with no connections, for the engine's cluster callbacks.
struct NoNode(String);

impl herald_core::ClusterNode for NoNode {
    fn close_connection(&self, _: &str, _: u16) -> bool {
        false
    }
    fn close_user(&self, _: &Tenant, _: &str, _: u16) -> usize {
        0
    }
    fn snapshot(&self) -> Vec<(herald_core::ConnectionRecord, Vec<(String, bool)>)> {
        Vec::new()
    }
    fn deliver(&self, _: &herald_core::DirectTarget, _: &herald_core::DirectMessage) -> usize {
        0
    }
    fn figures(&self) -> NodeFigures {
        NodeFigures {
            node_id: self.0.clone(),
            ..NodeFigures::default()
        }
    }
}

/// Collects what an engine delivers, and plays the node's local members.
#[derive(Default)]
pub struct Collect {
    /// Publications, in delivery order.
    pub publications: Mutex<Vec<Arc<Publication>>>,
    /// Presence changes from other nodes, in order.
    pub presence: Mutex<Vec<PresenceChange>>,
    /// The node's own members, as [`PresenceSink::local_members`] answers.
    pub local: Mutex<Vec<(RoomKey, MemberRecord)>>,
}

impl PublicationSink for Collect {
    fn deliver(&self, publication: Arc<Publication>) -> herald_core::broker::Writes {
        self.publications.lock().push(publication);
        herald_core::broker::Writes::none()
    }
}

impl PresenceSink for Collect {
    fn changed(&self, change: &PresenceChange) {
        self.presence.lock().push(change.clone());
    }

    fn local_members(&self, room: &RoomKey) -> Vec<MemberRecord> {
        self.local
            .lock()
            .iter()
            .filter(|(r, _)| r == room)
            .map(|(_, m)| m.clone())
            .collect()
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

    /// How many publications of `room` were delivered.
    pub fn count(&self, room: &RoomKey) -> usize {
        self.offsets(room).len()
    }
}

/// A room of the default tenant.
pub fn room(name: &str) -> RoomKey {
    room_of(None, name)
}

/// A room of `tenant`.
pub fn room_of(tenant: Option<&str>, name: &str) -> RoomKey {
    RoomKey::new(
        Tenant::from_option(tenant),
        RoomName::parse(name).expect("room"),
    )
}

/// A publish of `{}` keeping `size` events for `ttl`.
pub fn request(room: &RoomKey, size: usize, ttl: Duration) -> PublishRequest {
    request_with(room, "{}", size, ttl)
}

/// A publish of `data` keeping `size` events for `ttl`.
pub fn request_with(room: &RoomKey, data: &str, size: usize, ttl: Duration) -> PublishRequest {
    PublishRequest {
        room: room.clone(),
        event: "e".into(),
        data: RawValue::from_string(data.into()).expect("raw json"),
        from: None,
        exclude_connection: None,
        idempotency_key: None,
        history: HistoryPolicy {
            size,
            ttl,
            max_bytes: 0,
        },
        trace: None,
        critical: false,
        conflation_key: None,
    }
}

/// Polls `check` every 10 ms; panics naming `what` after 10 s.
pub async fn wait_until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// History long enough for any scenario.
pub const MINUTE: Duration = Duration::from_secs(60);
