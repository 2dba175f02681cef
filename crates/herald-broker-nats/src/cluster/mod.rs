//! The cluster registry on JetStream key-value buckets (see
//! [`NatsCluster`]). One file per concern: `store` (buckets, keys, listing
//! and marker-free deletes), `registry` (connections, memberships and the
//! views), `users` (a user's key and the per-user policy), `control` (commands between nodes), `liveness` (heartbeat,
//! re-registration, lock renewal, sweep), `cleanup` (purging, the reaper,
//! leaving), `transitions` (webhook events of user and room transitions,
//! and of a dead node's connections); its metrics are the kit's
//! (`herald_engine_kit::telemetry`).

mod cleanup;
mod control;
mod liveness;
mod registry;
mod store;
mod transitions;
mod users;

use crate::names::Names;
use crate::{NatsClients, NatsOutbox, NatsSettings};
use async_trait::async_trait;
use herald_core::{
    BrokerError, Cluster, ClusterAdmission, ClusterNode, ConnectionRecord, ConnectionRef, HookSet,
    MemberRecord, NodeFigures, PerUserPolicy, RoomKey, Tenant,
};
use herald_engine_kit::telemetry;
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use store::{BucketSpec, Buckets, Keys};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Close code for a connection replaced by a newer one (the contract's 4010).
const SESSION_REPLACED: u16 = 4010;

/// The cluster-wide registry on JetStream key-value buckets: nodes,
/// connections per user and per node, presence, exclusive-session locks,
/// and the control subjects.
///
/// What lives where (keys from `store::Keys`, every id one base64url token):
/// - bucket `<prefix>-nodes` (history 1, `max_age` 1.5 heartbeats): key
///   `<node>` → the node's [`NodeFigures`], put every heartbeat. A node whose
///   key expired is dead; the server's clock decides, so skew between the
///   nodes' clocks cannot declare a live node dead.
/// - bucket `<prefix>-registry` (history 1, no expiry):
///   - `u.<tenant>.<user>` → the user's connections (id → node, connected
///     at) and exclusive lock holder: the per-user policy is applied by
///     compare-and-set on this key's revision, so it holds cluster-wide.
///   - `c.<node>.<connection>` → the [`ConnectionRecord`] with its rooms:
///     what a node holds, listed by a survivor when it dies.
///   - `p.<room>.<node>.<connection>` → the member (rooms with presence).
///   - `m.<node>` → the node registered entries: the reaper compares these
///     with the live node keys to find the dead.
/// - bucket `<prefix>-reapers` (`max_age` 4 heartbeats): `<node>` → the
///   survivor cleaning up after that dead node (taken with `create`).
/// - with webhooks on: `u.<tenant>.<user>` also carries its transitions'
///   events until they are published, and `r.<room>` (only with `room.*`
///   events enabled) lists the nodes with members in the room (see
///   `transitions`).
/// - subjects `<prefix>.control.<node>` and `<prefix>.control._` (every
///   node): JSON commands between nodes (see `control`).
pub struct NatsCluster {
    clients: NatsClients,
    names: Names,
    keys: Keys,
    node_id: String,
    heartbeat: Duration,
    command_timeout: Duration,
    replicas: usize,
    /// The buckets, once opened; `None` until then and after a failure that
    /// says they may be gone (they are opened, or made, again).
    buckets: RwLock<Option<Arc<Buckets>>>,
    /// Serializes opening the buckets.
    opening: tokio::sync::Mutex<()>,
    /// The node served, known from [`NatsCluster::spawn`] on.
    node: OnceLock<Arc<dyn ClusterNode>>,
    /// Local connections holding their user's exclusive lock: connection id
    /// → (tenant, user). Checked every heartbeat.
    locks: Mutex<HashMap<String, (Tenant, String)>>,
    /// The user keys this node last wrote, with their revision: the guess
    /// its next change of that key starts from (see `users`).
    hints: Mutex<HashMap<String, (users::UserDoc, u64)>>,
    /// Revision of each local connection's record key, for the
    /// compare-and-set of `joined`/`left` without reading it first.
    revisions: Mutex<HashMap<String, u64>>,
    /// Set by [`Cluster::leave`]: the heartbeat must not register again.
    left: AtomicBool,
    /// This node's keys were written at least once since the buckets opened.
    enlisted: AtomicBool,
    /// This node's marker was missing and was written again (by the
    /// heartbeat or an admission): the heartbeat registers everything again.
    marker_written: AtomicBool,
    /// The control subjects are subscribed.
    control_live: AtomicBool,
    /// Serializes a heartbeat's re-registration with `leave`.
    beat: tokio::sync::Mutex<()>,
    /// The live node ids last listed, and when.
    live: Mutex<Option<(Instant, HashSet<String>)>>,
    /// When this process's registry started (ms): entries of this node id
    /// that connected earlier belong to a previous process.
    started_at: u64,
    /// The webhook kinds enabled; the registry emits the `user.*` and
    /// `room.*` ones and a dead node's, into `outbox`.
    hooks: HookSet,
    /// Where the registry's events go; `None`: webhooks off.
    outbox: Option<Arc<NatsOutbox>>,
    /// This node's members per room (kept only with `room.*` events on).
    rooms: Mutex<HashMap<RoomKey, transitions::LocalRoom>>,
    /// Serialize this node's writes of one room's key.
    room_locks: Vec<tokio::sync::Mutex<()>>,
    /// Users whose key holds events this node failed to publish.
    unflushed_users: Mutex<HashSet<(Tenant, String)>>,
}

impl NatsCluster {
    /// A registry for the node of `settings`, without webhooks.
    pub fn new(clients: NatsClients, settings: &NatsSettings) -> Arc<Self> {
        Self::with_hooks(clients, settings, HookSet::empty(), None)
    }

    /// A registry for the node of `settings` that emits the kinds of
    /// `hooks` it is responsible for (`user.*`, `room.*`, and a dead
    /// node's `connection.closed` and `member.left`) into `outbox`.
    pub fn with_hooks(
        clients: NatsClients,
        settings: &NatsSettings,
        hooks: HookSet,
        outbox: Option<Arc<NatsOutbox>>,
    ) -> Arc<Self> {
        telemetry::describe();
        let outbox = outbox.filter(|_| !hooks.is_empty());
        let names = Names::new(&settings.prefix);
        Arc::new(Self {
            clients,
            keys: Keys::new(names.clone()),
            names,
            node_id: settings.node_id.clone(),
            // A zero period would make every loop spin.
            heartbeat: settings.node_heartbeat.max(Duration::from_millis(100)),
            command_timeout: settings.command_timeout.max(Duration::from_millis(100)),
            replicas: settings.replicas,
            buckets: RwLock::new(None),
            opening: tokio::sync::Mutex::new(()),
            node: OnceLock::new(),
            locks: Mutex::new(HashMap::new()),
            hints: Mutex::new(HashMap::new()),
            revisions: Mutex::new(HashMap::new()),
            left: AtomicBool::new(false),
            enlisted: AtomicBool::new(false),
            marker_written: AtomicBool::new(false),
            control_live: AtomicBool::new(false),
            beat: tokio::sync::Mutex::new(()),
            live: Mutex::new(None),
            started_at: now_ms(),
            hooks,
            outbox,
            rooms: Mutex::new(HashMap::new()),
            room_locks: (0..transitions::ROOM_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            unflushed_users: Mutex::new(HashSet::new()),
        })
    }

    /// Starts the heartbeat, the reaper and the control reader for `node`;
    /// they stop when `cancel` fires.
    pub fn spawn(
        self: &Arc<Self>,
        node: Arc<dyn ClusterNode>,
        cancel: CancellationToken,
        tasks: &TaskTracker,
    ) {
        if self.node.set(node.clone()).is_err() {
            tracing::warn!("cluster registry spawned twice; keeping the first node");
            return;
        }
        tasks.spawn(self.clone().heartbeat_loop(node.clone(), cancel.clone()));
        tasks.spawn(self.clone().reaper_loop(cancel.clone()));
        tasks.spawn(self.clone().control_loop(node, cancel));
    }

    /// The room's members on every node (rooms with presence on).
    pub async fn presence(&self, room: &RoomKey) -> Result<Vec<MemberRecord>, BrokerError> {
        self.list_presence(room).await
    }

    /// Fails fast while the connection is down, instead of waiting for the
    /// command timeout.
    fn check(&self) -> Result<(), BrokerError> {
        if self.clients.is_connected() {
            Ok(())
        } else {
            Err(BrokerError::Unavailable("nats is not connected".into()))
        }
    }

    /// The buckets, opened (or made) on first use and after they were lost.
    async fn buckets(&self) -> Result<Arc<Buckets>, BrokerError> {
        self.check()?;
        if let Some(b) = self.buckets.read().clone() {
            return Ok(b);
        }
        let _one = self.opening.lock().await;
        if let Some(b) = self.buckets.read().clone() {
            return Ok(b);
        }
        let spec = BucketSpec {
            replicas: self.replicas,
            node_life: self.dead_after(),
            claim_life: self.heartbeat * 4,
        };
        let opened = tokio::time::timeout(
            self.command_timeout * 3,
            Buckets::ensure(&self.clients.jetstream, &self.names, &spec),
        )
        .await
        .map_err(|_| BrokerError::Unavailable("opening the registry buckets timed out".into()))??;
        let opened = Arc::new(opened);
        *self.buckets.write() = Some(opened.clone());
        Ok(opened)
    }

    /// Forgets the buckets after an error that may mean they are gone (NATS
    /// restarted without its store): the next call opens them again.
    fn lost_buckets(&self) {
        *self.buckets.write() = None;
        self.enlisted.store(false, Ordering::Release);
        self.forget_guesses();
    }

    /// Drops the remembered revisions: after an outage the store may have
    /// lost them, and a new store numbers its revisions from 1 again.
    fn forget_guesses(&self) {
        self.hints.lock().clear();
        self.revisions.lock().clear();
    }

    /// A node silent this long is dead.
    fn dead_after(&self) -> Duration {
        self.heartbeat * 3 / 2
    }
}

/// Milliseconds since the Unix epoch, by this machine's clock.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A NATS failure: anything about reaching NATS or JetStream answers
/// `unavailable` (callers answer 503 and retry).
fn nats_error(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("nats registry, {what}: {e}"))
}

fn json_error(e: serde_json::Error) -> BrokerError {
    BrokerError::Internal(format!("registry JSON: {e}"))
}

#[async_trait]
impl Cluster for NatsCluster {
    async fn admit(
        &self,
        record: &ConnectionRecord,
        policy: PerUserPolicy,
        max_per_user: usize,
    ) -> Result<ClusterAdmission, BrokerError> {
        self.admit_record(record, policy, max_per_user).await
    }

    async fn would_refuse(
        &self,
        tenant: &Tenant,
        user_id: &str,
        max_per_user: usize,
    ) -> Result<bool, BrokerError> {
        self.user_count(tenant, user_id)
            .await
            .map(|n| n >= max_per_user)
    }

    async fn remove(&self, record: &ConnectionRecord) -> Result<(), BrokerError> {
        self.remove_record(record).await
    }

    async fn joined(
        &self,
        room: &RoomKey,
        record: &ConnectionRecord,
        presence: bool,
    ) -> Result<(), BrokerError> {
        self.membership(room, record, presence, true).await
    }

    async fn left(
        &self,
        room: &RoomKey,
        record: &ConnectionRecord,
        presence: bool,
    ) -> Result<(), BrokerError> {
        self.membership(room, record, presence, false).await
    }

    async fn user_connections(
        &self,
        tenant: &Tenant,
        user_id: &str,
    ) -> Result<Vec<ConnectionRecord>, BrokerError> {
        self.list_user(tenant, user_id).await
    }

    async fn nodes(&self) -> Result<Vec<NodeFigures>, BrokerError> {
        self.list_nodes().await
    }

    async fn disconnect_user(
        &self,
        tenant: &Tenant,
        user_id: &str,
        code: u16,
    ) -> Result<usize, BrokerError> {
        self.disconnect(tenant, user_id, code).await
    }

    async fn close_connections(
        &self,
        targets: &[ConnectionRef],
        code: u16,
    ) -> Result<(), BrokerError> {
        self.close_targets(targets, code).await
    }

    async fn send_direct(
        &self,
        target: &herald_core::DirectTarget,
        message: &herald_core::DirectMessage,
    ) -> Result<Option<usize>, BrokerError> {
        self.direct(target, message).await
    }

    fn is_ready(&self) -> bool {
        self.clients.is_connected()
            && self.buckets.read().is_some()
            && self.control_live.load(Ordering::Acquire)
    }

    async fn leave(&self) {
        self.leave_cluster().await;
    }
}
