//! The node's side of a cluster: registering connections and room
//! memberships with the cluster engine, answering its callbacks, and the
//! cluster-wide views the HTTP API serves (connections, presence, stats,
//! disconnect). Without a cluster engine every view is the node's own.

use crate::conn::{Connection, ConnectionInfo};
use crate::error::NodeError;
use crate::node::{BrokerSummary, Inner, Node, NodeStats, NodeSummary};
use herald_core::{
    ClusterAdmission, ClusterNode, ConnectionRecord, ConnectionRef, DirectMessage, DirectTarget,
    NodeFigures, PresenceChange, RoomKey, Tenant,
};
use herald_protocol::{CloseCode, MemberSummary};
use std::sync::{Arc, OnceLock, Weak};

/// The registry record of a local connection, with its current rooms.
pub(crate) fn record(node_id: &str, conn: &Connection) -> ConnectionRecord {
    let info = conn.info(node_id);
    ConnectionRecord {
        connection_id: info.connection_id,
        tenant: conn.tenant.clone(),
        user_id: conn.user_id.to_string(),
        node_id: info.node_id,
        transport: conn.transport.name.to_owned(),
        rooms: info.rooms,
        connected_at: info.connected_at,
    }
}

/// What the cluster engine calls back into. It holds the node weakly: the
/// engine belongs to the node, and a strong handle would keep both alive.
/// It is handed to the engine before the node exists and filled once it
/// does ([`Node::start`]); until then every callback finds nothing.
#[derive(Clone)]
pub(crate) struct LateHandle {
    node: Arc<OnceLock<Weak<Inner>>>,
    /// Reported in the figures before the node exists (it has nothing yet).
    node_id: Arc<str>,
}

impl LateHandle {
    /// A handle for the node `node_id`, not filled yet.
    pub(crate) fn new(node_id: &str) -> Self {
        Self {
            node: Arc::default(),
            node_id: Arc::from(node_id),
        }
    }

    /// Points the handle at `node` (once; later calls do nothing).
    pub(crate) fn fill(&self, node: &Node) {
        let _ = self.node.set(Arc::downgrade(&node.inner));
    }

    fn upgrade(&self) -> Option<Arc<Inner>> {
        self.node.get()?.upgrade()
    }
}

impl ClusterNode for LateHandle {
    fn close_connection(&self, connection_id: &str, code: u16) -> bool {
        let (Some(inner), Some(code)) = (self.upgrade(), CloseCode::from_code(code)) else {
            return false;
        };
        inner
            .registry
            .get(connection_id)
            .is_some_and(|c| c.close(code))
    }

    fn close_user(&self, tenant: &Tenant, user_id: &str, code: u16) -> usize {
        let (Some(inner), Some(code)) = (self.upgrade(), CloseCode::from_code(code)) else {
            return 0;
        };
        let conns = inner.registry.of_user(tenant, user_id);
        for c in &conns {
            c.close(code);
        }
        conns.len()
    }

    fn snapshot(&self) -> Vec<(ConnectionRecord, Vec<(String, bool)>)> {
        let Some(inner) = self.upgrade() else {
            return Vec::new();
        };
        inner
            .registry
            .all()
            .iter()
            .map(|c| {
                let record = record(&inner.node_id, c);
                let rooms = c
                    .rooms()
                    .lock()
                    .iter()
                    .map(|r| {
                        let presence = inner.namespaces.for_room(r).presence;
                        (r.to_string(), presence)
                    })
                    .collect();
                (record, rooms)
            })
            .collect()
    }

    fn deliver(&self, target: &DirectTarget, message: &DirectMessage) -> usize {
        self.upgrade().map_or(0, |inner| {
            crate::direct::deliver_local(&inner, target, message)
        })
    }

    fn figures(&self) -> NodeFigures {
        self.upgrade().map_or_else(
            || NodeFigures {
                node_id: self.node_id.to_string(),
                ..NodeFigures::default()
            },
            |n| NodeFigures {
                node_id: n.node_id.to_string(),
                connections: n.registry.len(),
                users: n.registry.users(),
                rooms: n.rooms.len(),
            },
        )
    }
}

impl Node {
    /// The callbacks the cluster engine needs (see [`ClusterNode`]); give
    /// it to the engine once the node exists.
    pub fn cluster_handle(&self) -> Arc<dyn ClusterNode> {
        let handle = LateHandle::new(&self.inner.node_id);
        handle.fill(self);
        Arc::new(handle)
    }

    /// Registers `conn` cluster-wide under the per-user policy and closes
    /// whatever it displaced; refuses it when the user is over the limit or
    /// the registry cannot be reached.
    pub(crate) async fn cluster_admit(&self, conn: &Arc<Connection>) -> Result<(), CloseCode> {
        let Some(cluster) = &self.inner.cluster else {
            return Ok(());
        };
        let limits = &self.inner.limits;
        let rec = record(&self.inner.node_id, conn);
        let admission = cluster
            .admit(
                &rec,
                limits.per_user_policy,
                limits.max_connections_per_user.max(1),
            )
            .await;
        match admission {
            Ok(ClusterAdmission::Admitted(displaced)) => {
                self.close_displaced(displaced).await;
                Ok(())
            }
            Ok(ClusterAdmission::Refused) => Err(CloseCode::TooManyConnections),
            Err(e) => {
                tracing::warn!(error = %e, "cluster registry unreachable: connection refused");
                Err(CloseCode::TryAgainLater)
            }
        }
    }

    async fn close_displaced(&self, displaced: Vec<ConnectionRef>) {
        if displaced.is_empty() {
            return;
        }
        let Some(cluster) = &self.inner.cluster else {
            return;
        };
        let code = CloseCode::SessionReplaced.code();
        if let Err(e) = cluster.close_connections(&displaced, code).await {
            tracing::warn!(error = %e, "could not reach displaced connections");
        }
    }

    /// Forgets a connection cluster-wide (its session ended); `record`
    /// still lists the rooms it was in, so its presence entries go too.
    pub(crate) async fn cluster_remove(&self, record: &ConnectionRecord) {
        if let Some(cluster) = &self.inner.cluster {
            if let Err(e) = cluster.remove(record).await {
                tracing::warn!(error = %e, connection = %record.connection_id, "registry removal failed");
            }
        }
    }

    /// The registry record of a local connection.
    pub(crate) fn record_of(&self, conn: &Connection) -> ConnectionRecord {
        record(&self.inner.node_id, conn)
    }

    /// Records a join or a leave cluster-wide; the membership itself is
    /// local already.
    pub(crate) async fn cluster_membership(
        &self,
        key: &RoomKey,
        conn: &Connection,
        presence: bool,
        joined: bool,
    ) {
        let Some(cluster) = &self.inner.cluster else {
            return;
        };
        let rec = record(&self.inner.node_id, conn);
        let result = if joined {
            cluster.joined(key, &rec, presence).await
        } else {
            cluster.left(key, &rec, presence).await
        };
        if let Err(e) = result {
            tracing::warn!(room = %key, error = %e, joined, "registry update failed");
        }
    }

    /// Tells the other nodes' members of a presence room about a join or a
    /// leave (this node's members were told by [`crate::rooms::Rooms`]).
    pub(crate) async fn announce_presence(&self, key: &RoomKey, conn: &Connection, joined: bool) {
        let change = PresenceChange {
            room: key.clone(),
            joined,
            user_id: conn.user_id.to_string(),
            connection_id: conn.id.to_string(),
            node_id: self.inner.node_id.to_string(),
        };
        if let Err(e) = self.inner.presence.announce(&change).await {
            tracing::warn!(room = %key, error = %e, "presence announcement failed");
        }
    }

    /// Members of `room` on every node.
    pub async fn presence(&self, room: &RoomKey) -> Result<Vec<MemberSummary>, NodeError> {
        Ok(self
            .inner
            .presence
            .members(room)
            .await?
            .into_iter()
            .map(|m| MemberSummary {
                user_id: m.user_id,
                connection_id: m.connection_id,
                node_id: m.node_id,
            })
            .collect())
    }

    /// Closes every connection of `user`, on every node, with 4013; returns
    /// how many there were.
    pub async fn disconnect_user(&self, tenant: &Tenant, user: &str) -> Result<usize, NodeError> {
        let code = CloseCode::DisconnectedByApi;
        let Some(cluster) = &self.inner.cluster else {
            let conns = self.inner.registry.of_user(tenant, user);
            for c in &conns {
                c.close(code);
            }
            return Ok(conns.len());
        };
        Ok(cluster.disconnect_user(tenant, user, code.code()).await?)
    }

    /// The connections of `user` on every node.
    pub async fn user_connections(
        &self,
        tenant: &Tenant,
        user: &str,
    ) -> Result<Vec<ConnectionInfo>, NodeError> {
        let Some(cluster) = &self.inner.cluster else {
            return Ok(self
                .inner
                .registry
                .of_user(tenant, user)
                .iter()
                .map(|c| c.info(&self.inner.node_id))
                .collect());
        };
        let mut list: Vec<ConnectionInfo> = cluster
            .user_connections(tenant, user)
            .await?
            .into_iter()
            .map(ConnectionInfo::from_record)
            .collect();
        list.sort_by_key(|c| c.connected_at);
        Ok(list)
    }

    /// Whether a new connection of this identity would be refused by the
    /// per-user `reject` policy (cluster-wide in a cluster).
    pub async fn would_refuse_user(&self, identity: &herald_core::Identity) -> bool {
        let tenant = Tenant::from_option(identity.tenant.as_deref());
        let limits = &self.inner.limits;
        if limits.per_user_policy != crate::PerUserPolicy::Reject {
            return false;
        }
        match &self.inner.cluster {
            None => self
                .inner
                .registry
                .would_refuse(&tenant, &identity.user_id, limits),
            // An unreachable registry refuses later, in `open_session`.
            Some(cluster) => cluster
                .would_refuse(
                    &tenant,
                    &identity.user_id,
                    limits.max_connections_per_user.max(1),
                )
                .await
                .unwrap_or(false),
        }
    }

    /// Figures for `/api/v1/stats`: every node's, and their totals.
    pub async fn stats(&self) -> Result<NodeStats, NodeError> {
        let here = NodeSummary {
            node_id: self.inner.node_id.to_string(),
            connections: self.inner.registry.len(),
            users: self.inner.registry.users(),
            rooms: self.inner.rooms.len(),
        };
        let mut nodes = vec![here];
        if let Some(cluster) = &self.inner.cluster {
            for f in cluster.nodes().await? {
                if f.node_id != *self.inner.node_id {
                    nodes.push(NodeSummary {
                        node_id: f.node_id,
                        connections: f.connections,
                        users: f.users,
                        rooms: f.rooms,
                    });
                }
            }
        }
        let b = self.inner.broker.stats();
        Ok(NodeStats {
            connections: nodes.iter().map(|n| n.connections).sum(),
            users: nodes.iter().map(|n| n.users).sum(),
            rooms: nodes.iter().map(|n| n.rooms).sum(),
            nodes,
            broker: BrokerSummary {
                kind: self.inner.broker.kind(),
                streams: b.streams,
                history_events: b.stored_events,
                history_bytes: b.stored_bytes,
            },
        })
    }

    /// Leaves the cluster (on shutdown, after draining).
    pub async fn leave_cluster(&self) {
        if let Some(cluster) = &self.inner.cluster {
            cluster.leave().await;
        }
    }
}
