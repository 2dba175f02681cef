//! The cluster registry over Redis (see [`RedisCluster`]). One file per
//! concern: `registry` (connections and the views), `control` (the command
//! channel), `liveness` (heartbeat, re-registration, lock renewal, sweep),
//! `cleanup` (purging, the reaper, leaving), `scripts` (Lua).

mod cleanup;
mod control;
mod liveness;
mod registry;
mod scripts;

use crate::hooks::RedisHooks;
use crate::keys::Keys;
use crate::{RedisClients, RedisSettings};
use async_trait::async_trait;
use herald_core::{
    BrokerError, Cluster, ClusterAdmission, ClusterNode, ConnectionRecord, ConnectionRef,
    MemberRecord, NodeFigures, PerUserPolicy, RoomKey, Tenant,
};
use herald_engine_kit::telemetry;
use parking_lot::Mutex;
use scripts::Scripts;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Close code for a connection replaced by a newer one (the contract's 4010).
const SESSION_REPLACED: u16 = 4010;

/// The cluster-wide registry: nodes, connections per user and per node,
/// presence, exclusive-session locks, and the control channel.
///
/// What lives where (names from [`Keys`]):
/// - `nodes()`: ZSET node id → last heartbeat (the clock of the server
///   holding it, ms); `node_figures(id)`: the node's [`NodeFigures`] JSON,
///   expiring after three heartbeats.
/// - `user_connections(tenant, user)`: hash connection id → record JSON,
///   the per-user count the admission script holds atomically;
///   `user_lock(..)`, in the same slot, names the connection holding an
///   `exclusive` session (TTL three heartbeats, renewed every heartbeat).
/// - `node_connections(id)`: the same records per node, for cleanup.
/// - `room_presence(room)`: hash connection id → [`MemberRecord`] JSON.
/// - `control_channel()`: JSON commands between nodes, plain PUBLISH:
///   `{"op":"close","node","conn","code"}` (an empty `node` means whichever
///   node holds it), `{"op":"disconnect_user","tenant","user","code","from"}`
///   and `{"op":"direct","node","target","message"}` (a direct message for
///   the target's connections on `node`).
///
/// The node stays the authority. Its heartbeat re-registers everything
/// from [`ClusterNode::snapshot`] when Redis forgot the node (flushed,
/// restarted, or a survivor wrongly reaped it), and every tenth heartbeat
/// drops this node's entries for connections it no longer holds. A node
/// silent for 1.5 heartbeats counts as dead: reads skip its entries, and a
/// survivor (checking every quarter heartbeat) removes them, publishing
/// `member_left` for its members.
pub struct RedisCluster {
    clients: RedisClients,
    keys: Keys,
    node_id: String,
    heartbeat: Duration,
    scripts: Scripts,
    /// The node served, known from [`RedisCluster::spawn`] on.
    node: OnceLock<Arc<dyn ClusterNode>>,
    /// Local connections holding their user's exclusive lock: connection id
    /// → (tenant, user). Renewed every heartbeat.
    locks: Mutex<HashMap<String, (Tenant, String)>>,
    /// Set by [`Cluster::leave`]: the heartbeat must not register again.
    left: AtomicBool,
    /// The nodes set listed this node at least once: its entries are
    /// visible to the others and a reaper can find them.
    enlisted: AtomicBool,
    /// The control channel is subscribed on the current subscriber
    /// connection: until then a disconnect or a displacement sent by
    /// another node would not reach this one, so the node is not ready.
    control_live: AtomicBool,
    /// Serializes a heartbeat's re-registration with `leave`.
    beat: tokio::sync::Mutex<()>,
    /// When this process's registry started (ms): entries of this node id
    /// that connected earlier belong to a previous process.
    started_at: u64,
    /// The webhook transitions, when `webhooks.events` asks for any the
    /// engine reports (see [`crate::hooks`]); `None` costs nothing.
    hooks: Option<Arc<RedisHooks>>,
}

impl RedisCluster {
    /// A registry over `clients`.
    pub fn new(clients: RedisClients, settings: &RedisSettings) -> Arc<Self> {
        Self::with_hooks(clients, settings, None)
    }

    /// A registry over `clients` that reports webhook transitions to
    /// `hooks` (taken only when it tracks any: [`RedisHooks::tracking`]).
    pub fn with_hooks(
        clients: RedisClients,
        settings: &RedisSettings,
        hooks: Option<Arc<RedisHooks>>,
    ) -> Arc<Self> {
        telemetry::describe();
        Arc::new(Self {
            clients,
            keys: Keys::new(&settings.prefix),
            node_id: settings.node_id.clone(),
            // A zero period would make every loop spin.
            heartbeat: settings.node_heartbeat.max(Duration::from_millis(100)),
            scripts: Scripts::new(),
            node: OnceLock::new(),
            locks: Mutex::new(HashMap::new()),
            left: AtomicBool::new(false),
            enlisted: AtomicBool::new(false),
            control_live: AtomicBool::new(false),
            beat: tokio::sync::Mutex::new(()),
            started_at: now_ms(),
            hooks: hooks.filter(|h| h.tracking()),
        })
    }

    /// Starts the heartbeat, the reaper, the control-channel reader and the
    /// exclusive-lock renewal for `node`; they stop when `cancel` fires.
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

    /// Fails fast while the command connection is down, instead of queueing
    /// behind fred's reconnect until the command timeout.
    fn check(&self) -> Result<(), BrokerError> {
        if fred::interfaces::ClientLike::is_connected(&self.clients.commands) {
            Ok(())
        } else {
            Err(BrokerError::Unavailable("redis is not connected".into()))
        }
    }

    /// A node silent this long is dead.
    fn dead_after(&self) -> Duration {
        self.heartbeat * 3 / 2
    }

    /// TTL of exclusive locks and of node figures: a few heartbeats.
    fn lease(&self) -> Duration {
        self.heartbeat * 3
    }
}

/// Milliseconds since the Unix epoch, by this machine's clock.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn millis(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

/// Maps a fred error: anything about reaching Redis is `Unavailable`
/// (callers answer 503 and retry); anything else is a bug or a bad reply.
pub(crate) fn redis_error(e: fred::error::Error) -> BrokerError {
    use fred::error::ErrorKind as K;
    const TRANSIENT: [&str; 6] = [
        "LOADING",
        "TRYAGAIN",
        "BUSY",
        "MASTERDOWN",
        "READONLY",
        "CLUSTERDOWN",
    ];
    match e.kind() {
        K::Parse | K::Protocol | K::InvalidArgument | K::InvalidCommand | K::NotFound => {
            BrokerError::Internal(e.to_string())
        }
        K::Unknown if !TRANSIENT.iter().any(|p| e.details().starts_with(p)) => {
            BrokerError::Internal(e.to_string())
        }
        _ => BrokerError::Unavailable(e.to_string()),
    }
}

fn json_error(e: serde_json::Error) -> BrokerError {
    BrokerError::Internal(format!("registry JSON: {e}"))
}

#[async_trait]
impl Cluster for RedisCluster {
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
        self.clients.is_connected() && self.control_live.load(Ordering::Acquire)
    }

    async fn leave(&self) {
        self.leave_cluster().await;
    }
}
