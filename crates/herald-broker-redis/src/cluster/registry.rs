//! Connections, memberships and the cluster-wide views read from them.

use super::{json_error, millis, redis_error, RedisCluster};
use crate::hooks::Farewell;
use fred::interfaces::{HashesInterface, KeysInterface};
use fred::types::Value;
use herald_core::{
    BrokerError, ClusterAdmission, ConnectionRecord, ConnectionRef, MemberRecord, NodeFigures,
    PerUserPolicy, RoomKey, RoomName, Tenant,
};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

/// The rooms a record lists, as keys of its tenant (names that do not
/// parse cannot have entries and are skipped).
pub(super) fn rooms_of(record: &ConnectionRecord) -> Vec<RoomKey> {
    record
        .rooms
        .iter()
        .filter_map(|name| RoomName::parse(name).ok())
        .map(|name| RoomKey::new(record.tenant.clone(), name))
        .collect()
}

/// A room of a snapshot or record, as a key of the connection's tenant.
pub(super) fn room_key(rec: &ConnectionRecord, room: &str) -> Option<RoomKey> {
    herald_core::RoomName::parse(room)
        .ok()
        .map(|name| RoomKey::new(rec.tenant.clone(), name))
}

/// The presence entry of a record.
pub(super) fn member_json(record: &ConnectionRecord) -> Result<String, BrokerError> {
    serde_json::to_string(&MemberRecord {
        user_id: record.user_id.clone(),
        connection_id: record.connection_id.clone(),
        node_id: record.node_id.clone(),
    })
    .map_err(json_error)
}

/// One entry the admit script displaced: a record's JSON, or `#<id>` for
/// a lock holder the registry had no record of (its node is unknown: the
/// close goes to every node).
fn displaced_ref(item: &str) -> Option<ConnectionRef> {
    if let Some(id) = item.strip_prefix('#') {
        return Some(ConnectionRef {
            node_id: String::new(),
            connection_id: id.to_owned(),
        });
    }
    match serde_json::from_str::<ConnectionRecord>(item) {
        Ok(r) => Some(ConnectionRef {
            node_id: r.node_id,
            connection_id: r.connection_id,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "unreadable connection record displaced");
            None
        }
    }
}

fn policy_name(policy: PerUserPolicy) -> &'static str {
    match policy {
        PerUserPolicy::Reject => "reject",
        PerUserPolicy::EvictOldest => "evict_oldest",
        PerUserPolicy::Exclusive => "exclusive",
    }
}

impl RedisCluster {
    /// [`herald_core::Cluster::admit`].
    pub(super) async fn admit_record(
        &self,
        record: &ConnectionRecord,
        policy: PerUserPolicy,
        max_per_user: usize,
    ) -> Result<ClusterAdmission, BrokerError> {
        self.check()?;
        if self.left.load(Ordering::Acquire) {
            return Err(BrokerError::Unavailable(
                "this node left the cluster".into(),
            ));
        }
        let c = &self.clients.commands;
        let id = record.connection_id.as_str();
        let json = serde_json::to_string(record).map_err(json_error)?;
        let node_key = self.keys.node_connections(&self.node_id);
        // Listed before its first entry: a node that admits before its
        // first heartbeat is visible at once, and reapable should it die.
        if !self.enlisted.load(Ordering::Acquire) {
            self.enlist().await?;
        }
        // The node's hash first: whatever fails after this, the entry left
        // there lets the sweep (or the reaper) clean the user's hash too.
        c.hset::<(), _, _>(&node_key, (id, json.as_str()))
            .await
            .map_err(redis_error)?;
        let keys = vec![
            self.keys.user_connections(&record.tenant, &record.user_id),
            self.keys.user_lock(&record.tenant, &record.user_id),
        ];
        let args = vec![
            id.to_owned(),
            json,
            policy_name(policy).to_owned(),
            max_per_user.to_string(),
            millis(self.lease()),
        ];
        let reply: Vec<String> = self
            .scripts
            .admit
            .run(c, keys, args)
            .await
            .map_err(redis_error)?;
        if reply.first().map(String::as_str) != Some("ok") {
            // The script wrote nothing: the node's entry must go too.
            if let Err(e) = c.hdel::<(), _, _>(&node_key, id).await {
                tracing::debug!(error = %e, "refused connection left in the node hash");
            }
            return Ok(ClusterAdmission::Refused);
        }
        if let Some(hooks) = &self.hooks {
            // Should this fail, the entries written above stay until the
            // sweep purges them (the node refuses the connection).
            hooks.opened(record).await?;
        }
        if policy == PerUserPolicy::Exclusive {
            self.locks.lock().insert(
                id.to_owned(),
                (record.tenant.clone(), record.user_id.clone()),
            );
        }
        let displaced = reply[1..].iter().filter_map(|s| displaced_ref(s)).collect();
        Ok(ClusterAdmission::Admitted(displaced))
    }

    /// How many connections the registry lists for a user.
    pub(super) async fn user_count(
        &self,
        tenant: &Tenant,
        user: &str,
    ) -> Result<usize, BrokerError> {
        self.check()?;
        let key = self.keys.user_connections(tenant, user);
        self.clients
            .commands
            .hlen::<usize, _>(key)
            .await
            .map_err(redis_error)
    }

    /// [`herald_core::Cluster::remove`].
    pub(super) async fn remove_record(&self, record: &ConnectionRecord) -> Result<(), BrokerError> {
        self.check()?;
        let c = &self.clients.commands;
        let id = record.connection_id.as_str();
        let pipe = c.pipeline();
        let user_key = self.keys.user_connections(&record.tenant, &record.user_id);
        pipe.hdel::<(), _, _>(user_key, id)
            .await
            .map_err(redis_error)?;
        for room in rooms_of(record) {
            pipe.hdel::<(), _, _>(self.keys.room_presence(&room), id)
                .await
                .map_err(redis_error)?;
        }
        pipe.all::<Value>().await.map_err(redis_error)?;
        if let Some(hooks) = &self.hooks {
            hooks
                .closed(record, &rooms_of(record), Farewell::Quiet)
                .await?;
        }
        // The node's entry last: while it is there, the sweep can still
        // finish a removal that failed half-way.
        c.hdel::<(), _, _>(self.keys.node_connections(&self.node_id), id)
            .await
            .map_err(redis_error)?;
        let lock = self.locks.lock().remove(id);
        if let Some((tenant, user)) = lock {
            let key = self.keys.user_lock(&tenant, &user);
            self.scripts
                .release_lock
                .run::<i64>(c, vec![key], vec![id.to_owned()])
                .await
                .map_err(redis_error)?;
        }
        Ok(())
    }

    /// [`herald_core::Cluster::joined`] and [`herald_core::Cluster::left`].
    pub(super) async fn membership(
        &self,
        room: &RoomKey,
        record: &ConnectionRecord,
        presence: bool,
        joined: bool,
    ) -> Result<(), BrokerError> {
        self.check()?;
        let c = &self.clients.commands;
        let id = record.connection_id.as_str();
        let json = serde_json::to_string(record).map_err(json_error)?;
        let user_key = self.keys.user_connections(&record.tenant, &record.user_id);
        let registered: i64 = self
            .scripts
            .rewrite
            .run(c, vec![user_key], vec![id.to_owned(), json.clone()])
            .await
            .map_err(redis_error)?;
        let presence_key = self.keys.room_presence(room);
        if registered == 1 {
            c.hset::<(), _, _>(
                self.keys.node_connections(&self.node_id),
                (id, json.as_str()),
            )
            .await
            .map_err(redis_error)?;
            if presence && joined {
                c.hset::<(), _, _>(presence_key.as_str(), (id, member_json(record)?.as_str()))
                    .await
                    .map_err(redis_error)?;
            }
            if let (true, Some(hooks)) = (joined, &self.hooks) {
                hooks.joined(room, record).await?;
            }
        }
        if let (false, Some(hooks)) = (joined, &self.hooks) {
            hooks.left(room, record).await?;
        }
        // A displaced or removed connection may still leave: its member
        // entry goes whatever became of its record.
        if presence && !joined {
            c.hdel::<(), _, _>(presence_key, id)
                .await
                .map_err(redis_error)?;
        }
        Ok(())
    }

    /// Live node ids and dead ones (silent for 1.5 heartbeats), by the
    /// clock of the server holding the nodes set.
    pub(super) async fn nodes_by_age(&self) -> Result<(Vec<String>, Vec<String>), BrokerError> {
        let mut reply: Vec<String> = self
            .scripts
            .nodes_by_age
            .run(
                &self.clients.commands,
                vec![self.keys.nodes()],
                vec![millis(self.dead_after())],
            )
            .await
            .map_err(redis_error)?;
        let live = reply
            .first()
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n < reply.len())
            .ok_or_else(|| BrokerError::Internal("bad reply listing nodes".into()))?;
        let mut dead = reply.split_off(live + 1);
        reply.remove(0);
        dead.retain(|id| !id.is_empty());
        Ok((reply, dead))
    }

    /// Live node ids, this node's included (it answers, so it lives, even
    /// before its first heartbeat).
    async fn live_nodes(&self) -> Result<HashSet<String>, BrokerError> {
        let (live, _) = self.nodes_by_age().await?;
        let mut set: HashSet<String> = live.into_iter().collect();
        set.insert(self.node_id.clone());
        Ok(set)
    }

    /// [`herald_core::Cluster::user_connections`].
    pub(super) async fn list_user(
        &self,
        tenant: &Tenant,
        user: &str,
    ) -> Result<Vec<ConnectionRecord>, BrokerError> {
        self.check()?;
        let live = self.live_nodes().await?;
        let all: HashMap<String, String> = self
            .clients
            .commands
            .hgetall(self.keys.user_connections(tenant, user))
            .await
            .map_err(redis_error)?;
        let mut list: Vec<ConnectionRecord> = all
            .values()
            .filter_map(|json| serde_json::from_str::<ConnectionRecord>(json).ok())
            .filter(|r| live.contains(&r.node_id))
            .collect();
        list.sort_by(|a, b| {
            (a.connected_at, &a.connection_id).cmp(&(b.connected_at, &b.connection_id))
        });
        Ok(list)
    }

    /// [`herald_core::Cluster::presence`].
    pub(super) async fn list_presence(
        &self,
        room: &RoomKey,
    ) -> Result<Vec<MemberRecord>, BrokerError> {
        self.check()?;
        let live = self.live_nodes().await?;
        let all: HashMap<String, String> = self
            .clients
            .commands
            .hgetall(self.keys.room_presence(room))
            .await
            .map_err(redis_error)?;
        let mut list: Vec<MemberRecord> = all
            .values()
            .filter_map(|json| serde_json::from_str::<MemberRecord>(json).ok())
            .filter(|m| live.contains(&m.node_id))
            .collect();
        list.sort_by(|a, b| (&a.user_id, &a.connection_id).cmp(&(&b.user_id, &b.connection_id)));
        Ok(list)
    }

    /// [`herald_core::Cluster::nodes`].
    pub(super) async fn list_nodes(&self) -> Result<Vec<NodeFigures>, BrokerError> {
        self.check()?;
        let c = &self.clients.commands;
        let mut ids: Vec<String> = self.live_nodes().await?.into_iter().collect();
        ids.sort();
        let others: Vec<&String> = match self.node.get() {
            Some(_) => ids.iter().filter(|id| **id != self.node_id).collect(),
            None => ids.iter().collect(),
        };
        let mut figures = Vec::with_capacity(ids.len());
        if !others.is_empty() {
            let pipe = c.pipeline();
            for id in &others {
                pipe.get::<(), _>(self.keys.node_figures(id))
                    .await
                    .map_err(redis_error)?;
            }
            let replies = match pipe.all::<Value>().await.map_err(redis_error)? {
                Value::Array(v) => v,
                one => vec![one],
            };
            for (id, reply) in others.iter().zip(replies) {
                let f = reply
                    .as_str()
                    .and_then(|s| serde_json::from_str::<NodeFigures>(&s).ok())
                    .unwrap_or_else(|| NodeFigures {
                        node_id: (*id).clone(),
                        ..NodeFigures::default()
                    });
                figures.push(f);
            }
        }
        if let Some(node) = self.node.get() {
            let mut own = node.figures();
            own.node_id = self.node_id.clone();
            figures.push(own);
        }
        figures.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(figures)
    }
}
