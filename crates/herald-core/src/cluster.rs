//! The cluster contract: what nodes share beyond rooms' streams.
//!
//! A single node needs none of this: its own registry is the whole truth.
//! In a cluster (`broker.kind = "redis"`), a [`Cluster`] engine keeps a
//! shared registry of nodes and connections so that per-user limits,
//! presence, the connections list, stats and disconnects hold cluster-wide,
//! and it carries commands ("close this connection") between nodes.
//!
//! The node stays the authority for its own connections: it registers them
//! here, and the engine calls back into the [`ClusterNode`] it was given to
//! close local connections, to re-register everything after the shared
//! store was lost, to read the node's own figures for its heartbeat, and
//! to deliver direct messages ([`DirectMessage`]) to local connections.

use crate::{BrokerError, RoomKey, Tenant};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// What happens when a user opens more than `max_connections_per_user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PerUserPolicy {
    /// Refuse the new connection (HTTP 429 at upgrade, close 4029 otherwise).
    #[default]
    Reject,
    /// Admit it and close the user's oldest connection with 4010.
    EvictOldest,
    /// One connection per user: a new one closes every older one with 4010.
    Exclusive,
}

/// One connection as the cluster registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionRecord {
    /// Connection id (unique cluster-wide).
    pub connection_id: String,
    /// Tenant of the user.
    pub tenant: Tenant,
    /// The token's `sub`.
    pub user_id: String,
    /// Node holding the connection.
    pub node_id: String,
    /// `websocket` or `sse`.
    pub transport: String,
    /// Joined rooms (names, without the tenant).
    pub rooms: Vec<String>,
    /// When it connected, ms since the Unix epoch.
    pub connected_at: u64,
}

/// A connection somewhere in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConnectionRef {
    /// Node holding it; empty when the registry does not know (an
    /// exclusive lock whose holder has no record): every node checks.
    pub node_id: String,
    /// Its id.
    pub connection_id: String,
}

/// The answer to [`Cluster::admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterAdmission {
    /// Admitted; these older connections of the user (on any node) were
    /// displaced and must be closed with 4010. The engine already removed
    /// them from the registry.
    Admitted(Vec<ConnectionRef>),
    /// Refused: the user is at `max_connections_per_user` under `reject`.
    Refused,
}

/// One node's figures, as published in its heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFigures {
    /// Node id.
    pub node_id: String,
    /// Open connections.
    pub connections: usize,
    /// Distinct users connected.
    pub users: usize,
    /// Rooms with local members.
    pub rooms: usize,
}

/// One member of a room, cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The member's user.
    pub user_id: String,
    /// Its connection.
    pub connection_id: String,
    /// Node holding the connection.
    pub node_id: String,
}

/// Whom a direct message is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "snake_case")]
pub enum DirectTarget {
    /// One connection, by its (cluster-wide unique) id.
    Connection {
        /// The connection id.
        connection_id: String,
        /// When set, the connection must belong to this tenant (another
        /// tenant's connection is not found).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant: Option<Tenant>,
    },
    /// Every connection of one user.
    User {
        /// The user's tenant.
        tenant: Tenant,
        /// The user id.
        user_id: String,
    },
}

impl DirectTarget {
    /// Whether the connection of `tenant`, `user_id`, `connection_id` is
    /// one the target names.
    pub fn names(&self, tenant: &Tenant, user_id: &str, connection_id: &str) -> bool {
        match self {
            Self::Connection {
                connection_id: id,
                tenant: t,
            } => id == connection_id && t.as_ref().is_none_or(|t| t == tenant),
            Self::User {
                tenant: t,
                user_id: u,
            } => t == tenant && u == user_id,
        }
    }
}

/// An event sent to a connection or a user outside any room (an `event`
/// frame with `room: null`): in no stream, so not resumable.
#[derive(Debug, Clone)]
pub struct DirectMessage {
    /// Event name (subject to the connections' event filters).
    pub event: String,
    /// Payload, verbatim JSON.
    pub data: Box<RawValue>,
    /// When it was accepted, ms since the Unix epoch.
    pub ts: u64,
    /// Unique id of the message.
    pub event_id: String,
}

/// What the cluster engine may ask of the node it serves.
pub trait ClusterNode: Send + Sync + 'static {
    /// Closes the local connection `connection_id` with `code` (a close code
    /// of the contract); returns whether it was here.
    fn close_connection(&self, connection_id: &str, code: u16) -> bool;

    /// Closes every local connection of a user with `code`; returns how many.
    fn close_user(&self, tenant: &Tenant, user_id: &str, code: u16) -> usize;

    /// Every local connection with its rooms and, per room, whether presence
    /// is on there: used to register again after the shared store lost them.
    fn snapshot(&self) -> Vec<(ConnectionRecord, Vec<(String, bool)>)>;

    /// This node's own figures, for its heartbeat.
    fn figures(&self) -> NodeFigures;

    /// Queues `message` for the local connections `target` names (those
    /// whose event filter takes it); returns how many connections it
    /// named here, filtered or not.
    fn deliver(&self, target: &DirectTarget, message: &DirectMessage) -> usize;
}

/// A cluster engine (see the module docs). Every call that reaches the
/// shared store can fail with [`BrokerError::Unavailable`]; callers answer
/// 503 and carry on.
#[async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// Registers a new connection under the per-user policy, atomically with
    /// the user's cluster-wide count. `exclusive` also takes the user's lock,
    /// which is renewed while the connection lives and whose loss closes it.
    async fn admit(
        &self,
        record: &ConnectionRecord,
        policy: PerUserPolicy,
        max_per_user: usize,
    ) -> Result<ClusterAdmission, BrokerError>;

    /// Whether a new connection of the user would be refused under `reject`.
    async fn would_refuse(
        &self,
        tenant: &Tenant,
        user_id: &str,
        max_per_user: usize,
    ) -> Result<bool, BrokerError>;

    /// Forgets a connection (idempotent), with its presence entries.
    async fn remove(&self, record: &ConnectionRecord) -> Result<(), BrokerError>;

    /// Records that `record` joined `room` (its record's `rooms` already
    /// lists it); with `presence`, adds it to the room's member list.
    async fn joined(
        &self,
        room: &RoomKey,
        record: &ConnectionRecord,
        presence: bool,
    ) -> Result<(), BrokerError>;

    /// Records that `record` left `room` (its `rooms` no longer lists it).
    async fn left(
        &self,
        room: &RoomKey,
        record: &ConnectionRecord,
        presence: bool,
    ) -> Result<(), BrokerError>;

    /// The user's connections on every node.
    async fn user_connections(
        &self,
        tenant: &Tenant,
        user_id: &str,
    ) -> Result<Vec<ConnectionRecord>, BrokerError>;

    /// Every live node's figures, this node's included.
    async fn nodes(&self) -> Result<Vec<NodeFigures>, BrokerError>;

    /// Closes every connection of the user on every node with `code`;
    /// returns how many the registry listed.
    async fn disconnect_user(
        &self,
        tenant: &Tenant,
        user_id: &str,
        code: u16,
    ) -> Result<usize, BrokerError>;

    /// Closes connections on whatever node holds them.
    async fn close_connections(
        &self,
        targets: &[ConnectionRef],
        code: u16,
    ) -> Result<(), BrokerError>;

    /// Sends a direct message to `target` on whatever node holds it: the
    /// local connections at once, the others through the control channel.
    /// Returns how many connections the registry listed for the target:
    /// `Some(1)` for a connection it knows, `None` for one it does not;
    /// `Some(n)` for a user (0 when none is connected).
    async fn send_direct(
        &self,
        target: &DirectTarget,
        message: &DirectMessage,
    ) -> Result<Option<usize>, BrokerError>;

    /// Whether the shared store is reachable (readiness).
    fn is_ready(&self) -> bool;

    /// Leaves the cluster on shutdown: removes this node and its entries.
    async fn leave(&self);
}
