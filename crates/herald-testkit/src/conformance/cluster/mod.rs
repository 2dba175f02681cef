//! The cluster registry conformance suite: the [`herald_core::Cluster`]
//! contract (per-user policies across nodes, control commands, presence,
//! stats, liveness and the reaper) as scenarios over any registry.
//!
//! An engine's test crate implements [`ClusterBackend`] (a started server,
//! how to build a registry node on it, and the hooks that are backend
//! specific: looking into the store, killing and restarting the server)
//! and runs every function of [`registry`] and [`liveness`] once, one
//! `#[tokio::test]` each. Tests of what only one backend has (Redis
//! Cluster, JetStream restarts) stay in the engine's own files, on the
//! same support ([`TestNode`], [`FakeNode`]).

pub mod liveness;
pub mod registry;

use herald_core::{
    BrokerError, Cluster, ClusterAdmission, ClusterNode, ConnectionRecord, DirectMessage,
    DirectTarget, MemberRecord, NodeFigures, PerUserPolicy, PresenceChange, RoomKey, RoomName,
    Tenant,
};
use parking_lot::Mutex;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A registry backend under test: one started server per scenario.
pub trait ClusterBackend: Send + Sync + 'static {
    /// The engine's registry.
    type Registry: Cluster;
    /// Heartbeat of the nodes under test.
    const HEARTBEAT: Duration;

    /// A registry for node `id` under key prefix `prefix`, connected to the
    /// server (its tasks not spawned yet).
    fn registry(&self, prefix: &str, id: &str) -> impl Future<Output = Arc<Self::Registry>> + Send;
    /// Spawns the registry's tasks for `node` (the engine's `spawn`).
    fn spawn(
        registry: &Arc<Self::Registry>,
        node: Arc<dyn ClusterNode>,
        cancel: CancellationToken,
        tasks: &TaskTracker,
    );
    /// The room's members (the engine's `presence`).
    fn presence(
        registry: &Self::Registry,
        room: &RoomKey,
    ) -> impl Future<Output = Result<Vec<MemberRecord>, BrokerError>> + Send;

    /// Who holds the user's exclusive lock, as the store says.
    fn lock(&self, prefix: &str, user: &str) -> impl Future<Output = Option<String>> + Send;
    /// Sets the user's lock holder in the store, as another node would.
    fn set_lock(&self, prefix: &str, user: &str, holder: &str) -> impl Future<Output = ()> + Send;
    /// Whether the store holds no connection of the user (the entry is
    /// gone, not just hidden).
    fn user_gone(&self, prefix: &str, user: &str) -> impl Future<Output = bool> + Send;
    /// How many connection entries the store holds for `node`.
    fn node_connections(&self, prefix: &str, node: &str) -> impl Future<Output = usize> + Send;
    /// Whether the store holds nothing of `node` (its liveness entry and
    /// its connections).
    fn node_gone(&self, prefix: &str, node: &str) -> impl Future<Output = bool> + Send;
    /// The presence changes announced on `room` from now on, as nodes
    /// receive them (listening once this returns).
    fn watch(
        &self,
        prefix: &str,
        room: &RoomKey,
    ) -> impl Future<Output = mpsc::UnboundedReceiver<PresenceChange>> + Send;

    /// Kills the server (connections drop).
    fn kill(&mut self);
    /// Starts the killed server again, with its store where it keeps one.
    fn revive(&mut self);
    /// Restarts the server without its store: everything is forgotten.
    fn forget_everything(&mut self) -> impl Future<Output = ()> + Send;
}

/// A unique key prefix per scenario (letters, digits and `_` only, so it
/// fits every backend's names).
pub fn prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "ht_{test}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A connection as the node's snapshot gives it: record, rooms (presence).
pub type Held = (ConnectionRecord, Vec<(String, bool)>);

/// The node side, faked: holds connections (record + rooms with their
/// presence flag) and records every close it is asked for.
#[derive(Default)]
pub struct FakeNode {
    /// The node's id.
    pub id: String,
    /// The connections it holds.
    pub conns: Mutex<Vec<Held>>,
    /// Every close asked of it: connection id and close code.
    pub closed: Mutex<Vec<(String, u16)>>,
    /// Every direct message delivered to a held connection: connection id
    /// and the message's event id.
    pub delivered: Mutex<Vec<(String, String)>>,
}

impl FakeNode {
    /// A node `id` holding nothing.
    pub fn new(id: &str) -> Arc<Self> {
        Arc::new(Self {
            id: id.into(),
            ..Self::default()
        })
    }

    /// Holds a connection locally (as the node's registry would).
    pub fn hold(&self, record: &ConnectionRecord, rooms: &[(&str, bool)]) {
        let mut conns = self.conns.lock();
        conns.retain(|(r, _)| r.connection_id != record.connection_id);
        conns.push((
            record.clone(),
            rooms.iter().map(|(r, p)| ((*r).to_owned(), *p)).collect(),
        ));
    }

    /// Every close asked so far.
    pub fn closed(&self) -> Vec<(String, u16)> {
        self.closed.lock().clone()
    }

    /// Whether `id` was closed with `code`.
    pub fn was_closed(&self, id: &str, code: u16) -> bool {
        self.closed
            .lock()
            .iter()
            .any(|(c, k)| c == id && *k == code)
    }
}

impl ClusterNode for FakeNode {
    fn close_connection(&self, connection_id: &str, code: u16) -> bool {
        let mut conns = self.conns.lock();
        let before = conns.len();
        conns.retain(|(r, _)| r.connection_id != connection_id);
        let here = conns.len() < before;
        if here {
            self.closed.lock().push((connection_id.to_owned(), code));
        }
        here
    }

    fn close_user(&self, tenant: &Tenant, user_id: &str, code: u16) -> usize {
        let mut conns = self.conns.lock();
        let mut closed = self.closed.lock();
        let before = conns.len();
        conns.retain(|(r, _)| {
            let theirs = r.tenant == *tenant && r.user_id == user_id;
            if theirs {
                closed.push((r.connection_id.clone(), code));
            }
            !theirs
        });
        before - conns.len()
    }

    fn deliver(&self, target: &DirectTarget, message: &DirectMessage) -> usize {
        let conns = self.conns.lock();
        let mut delivered = self.delivered.lock();
        let mut n = 0;
        for (r, _) in conns.iter() {
            if target.names(&r.tenant, &r.user_id, &r.connection_id) {
                delivered.push((r.connection_id.clone(), message.event_id.clone()));
                n += 1;
            }
        }
        n
    }

    fn snapshot(&self) -> Vec<Held> {
        self.conns.lock().clone()
    }

    fn figures(&self) -> NodeFigures {
        let conns = self.conns.lock();
        let mut users: Vec<&str> = conns.iter().map(|(r, _)| r.user_id.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        NodeFigures {
            node_id: self.id.clone(),
            connections: conns.len(),
            users: users.len(),
            rooms: 0,
        }
    }
}

/// One node of the cluster under test.
pub struct TestNode<B: ClusterBackend> {
    /// The node's id.
    pub id: String,
    /// Its registry.
    pub cluster: Arc<B::Registry>,
    /// The node side.
    pub fake: Arc<FakeNode>,
    /// Stops the registry's tasks.
    pub cancel: CancellationToken,
    /// The registry's tasks.
    pub tasks: TaskTracker,
}

impl<B: ClusterBackend> TestNode<B> {
    /// Builds the registry on `backend` and spawns its tasks.
    pub async fn start(backend: &B, prefix: &str, id: &str) -> Self {
        let node = Self::unspawned(backend, prefix, id).await;
        B::spawn(
            &node.cluster,
            node.fake.clone(),
            node.cancel.clone(),
            &node.tasks,
        );
        node
    }

    /// Builds the registry without spawning its tasks.
    pub async fn unspawned(backend: &B, prefix: &str, id: &str) -> Self {
        Self {
            id: id.into(),
            cluster: backend.registry(prefix, id).await,
            fake: FakeNode::new(id),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Stops the tasks (as a crash would: no `leave`).
    pub async fn stop(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// The room's members, through this node's registry.
    pub async fn presence(&self, room: &RoomKey) -> Result<Vec<MemberRecord>, BrokerError> {
        B::presence(&self.cluster, room).await
    }

    /// Admits a connection as the node does: it holds the connection
    /// locally while the registry decides, and lets go when refused.
    pub async fn connect(
        &self,
        record: &ConnectionRecord,
        policy: PerUserPolicy,
        max: usize,
    ) -> Result<ClusterAdmission, BrokerError> {
        self.fake.hold(record, &[]);
        let result = self.cluster.admit(record, policy, max).await;
        if !matches!(result, Ok(ClusterAdmission::Admitted(_))) {
            self.fake
                .conns
                .lock()
                .retain(|(r, _)| r.connection_id != record.connection_id);
        }
        result
    }

    /// A record of a connection on this node.
    pub fn record(&self, conn: &str, user: &str, connected_at: u64) -> ConnectionRecord {
        record(&self.id, conn, user, connected_at)
    }

    /// Admits a connection of `user` on this node (exclusive), holds it and
    /// joins it to `name` with presence; returns the record as the
    /// registry has it.
    pub async fn admit_in_room(&self, conn: &str, user: &str, name: &str) -> ConnectionRecord {
        let mut rec = self.record(conn, user, now_ms());
        let admitted = self.connect(&rec, PerUserPolicy::Exclusive, 5).await;
        assert_eq!(
            admitted.expect("admit"),
            ClusterAdmission::Admitted(Vec::new())
        );
        rec.rooms.push(name.into());
        self.cluster
            .joined(&room(name), &rec, true)
            .await
            .expect("join");
        self.fake.hold(&rec, &[(name, true)]);
        rec
    }
}

/// A record of connection `conn` of `user` (tenant `acme`) on `node`.
pub fn record(node: &str, conn: &str, user: &str, connected_at: u64) -> ConnectionRecord {
    ConnectionRecord {
        connection_id: conn.into(),
        tenant: acme(),
        user_id: user.into(),
        node_id: node.into(),
        transport: "websocket".into(),
        rooms: Vec::new(),
        connected_at,
    }
}

/// Room `name` of tenant `acme`.
pub fn room(name: &str) -> RoomKey {
    RoomKey::new(acme(), RoomName::parse(name).expect("room name"))
}

/// The tenant every scenario uses.
pub fn acme() -> Tenant {
    Tenant::from_option(Some("acme"))
}

/// Polls `check` until it holds or `within` passes; returns whether it held.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
