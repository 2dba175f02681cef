//! Connections, memberships and the cluster-wide views read from them.

use super::store::{list, purge, Buckets};
use super::users::{admit_into, Change, UserConn, UserDoc, CAS_ATTEMPTS};
use super::{json_error, nats_error, NatsCluster};
use crate::names::untoken;
use async_nats::jetstream::kv::{Operation, UpdateErrorKind};
use bytes::Bytes;
use futures_util::future::join_all;
use herald_core::{
    BrokerError, ClusterAdmission, ConnectionRecord, MemberRecord, NodeFigures, PerUserPolicy,
    RoomKey, RoomName, Tenant,
};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// A presence entry's value: the member and its room (so a survivor can
/// announce `member_left` without decoding the key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct MemberEntry {
    #[serde(flatten)]
    pub(super) member: MemberRecord,
    pub(super) tenant: Tenant,
    pub(super) room: String,
}

impl MemberEntry {
    pub(super) fn room_key(&self) -> Option<RoomKey> {
        RoomName::parse(&self.room)
            .ok()
            .map(|name| RoomKey::new(self.tenant.clone(), name))
    }
}

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

/// The presence entry of a record in a room.
pub(super) fn member_value(
    record: &ConnectionRecord,
    room: &RoomKey,
) -> Result<Bytes, BrokerError> {
    let entry = MemberEntry {
        member: MemberRecord {
            user_id: record.user_id.clone(),
            connection_id: record.connection_id.clone(),
            node_id: record.node_id.clone(),
        },
        tenant: record.tenant.clone(),
        room: room.name.as_str().to_owned(),
    };
    serde_json::to_vec(&entry)
        .map(Bytes::from)
        .map_err(json_error)
}

pub(super) fn record_value(record: &ConnectionRecord) -> Result<Bytes, BrokerError> {
    serde_json::to_vec(record)
        .map(Bytes::from)
        .map_err(json_error)
}

impl NatsCluster {
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
        let b = self.buckets().await?;
        // Listed before its first entry: a node that admits before its
        // first heartbeat is visible at once, and reapable should it die.
        if !self.enlisted.load(Ordering::Acquire) {
            self.enlist(&b, None).await?;
        }
        let id = record.connection_id.as_str();
        // The node's key first: whatever fails after this, it lets the
        // sweep (or the reaper) clean the user's key too.
        let conn_key = self.keys.conn(&self.node_id, id);
        let rev = b
            .registry
            .put(&conn_key, record_value(record)?)
            .await
            .map_err(|e| nats_error("writing a connection", e))?;
        self.revisions.lock().insert(id.to_owned(), rev);
        let entry = UserConn {
            node: self.node_id.clone(),
            at: record.connected_at,
        };
        // Most users have no other connection: without a better guess,
        // try creating the key first.
        let decided = self
            .update_user(&b, &record.tenant, &record.user_id, true, |doc| {
                admit_into(doc, id, &entry, policy, max_per_user)
            })
            .await?;
        let Some(displaced) = decided else {
            // Nothing was written for the user: the node's key goes too.
            self.revisions.lock().remove(id);
            if let Err(e) = purge(&b.registry, &conn_key, None).await {
                tracing::debug!(error = %e, "refused connection left in the node's keys");
            }
            return Ok(ClusterAdmission::Refused);
        };
        if policy == PerUserPolicy::Exclusive {
            self.locks.lock().insert(
                id.to_owned(),
                (record.tenant.clone(), record.user_id.clone()),
            );
        }
        Ok(ClusterAdmission::Admitted(displaced))
    }

    /// How many connections the registry lists for a user.
    pub(super) async fn user_count(
        &self,
        tenant: &Tenant,
        user: &str,
    ) -> Result<usize, BrokerError> {
        let b = self.buckets().await?;
        let (doc, _) = self
            .read_doc::<UserDoc>(&b, &self.keys.user(tenant, user))
            .await?;
        Ok(doc.conns.len())
    }

    /// [`herald_core::Cluster::remove`].
    pub(super) async fn remove_record(&self, record: &ConnectionRecord) -> Result<(), BrokerError> {
        let b = self.buckets().await?;
        let id = record.connection_id.as_str();
        let user = self.update_user(&b, &record.tenant, &record.user_id, false, |doc| {
            let had = doc.conns.remove(id).is_some();
            let locked = doc.lock.as_deref() == Some(id);
            if locked {
                doc.lock = None;
            }
            if had || locked {
                Change::Write(())
            } else {
                Change::Keep(())
            }
        });
        let members = rooms_of(record).into_iter().map(|room| {
            let key = self.keys.member(&room, &self.node_id, id);
            let b = &b;
            async move { purge(&b.registry, &key, None).await }
        });
        let (user, members) = tokio::join!(user, join_all(members));
        user?;
        for m in members {
            m?;
        }
        for room in rooms_of(record) {
            self.room_membership(&b, &room, id, false).await?;
        }
        if self.user_unflushed(&record.tenant, &record.user_id) {
            // The record stays until the user's event is out: whoever
            // cleans it up (the sweep, or a reaper) publishes it first.
            return Err(BrokerError::Unavailable(
                "the user's webhook event could not be published yet".into(),
            ));
        }
        // The node's key last: while it is there, the sweep can still
        // finish a removal that failed half-way.
        purge(&b.registry, &self.keys.conn(&self.node_id, id), None).await?;
        self.revisions.lock().remove(id);
        self.locks.lock().remove(id);
        Ok(())
    }

    /// Rewrites a local connection's record while it is registered (a
    /// removed connection must not come back); returns whether it was.
    async fn rewrite(&self, b: &Buckets, record: &ConnectionRecord) -> Result<bool, BrokerError> {
        let id = record.connection_id.as_str();
        let key = self.keys.conn(&self.node_id, id);
        let value = record_value(record)?;
        let mut known = self.revisions.lock().get(id).copied();
        for _ in 0..CAS_ATTEMPTS {
            let rev = match known.take() {
                Some(rev) => rev,
                None => match b.registry.entry(key.as_str()).await {
                    Ok(Some(e)) if e.operation == Operation::Put => e.revision,
                    Ok(_) => return Ok(false),
                    Err(e) => return Err(nats_error("reading a connection", e)),
                },
            };
            match b.registry.update(&key, value.clone(), rev).await {
                Ok(new) => {
                    self.revisions.lock().insert(id.to_owned(), new);
                    return Ok(true);
                }
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(nats_error("writing a connection", e)),
            }
        }
        Err(BrokerError::Unavailable(format!(
            "registry key {key}: still changing after {CAS_ATTEMPTS} attempts"
        )))
    }

    /// [`herald_core::Cluster::joined`] and [`herald_core::Cluster::left`].
    pub(super) async fn membership(
        &self,
        room: &RoomKey,
        record: &ConnectionRecord,
        presence: bool,
        joined: bool,
    ) -> Result<(), BrokerError> {
        let b = self.buckets().await?;
        let member_key = self.keys.member(room, &self.node_id, &record.connection_id);
        if joined {
            let registered = self.rewrite(&b, record).await?;
            if registered && presence {
                b.registry
                    .put(&member_key, member_value(record, room)?)
                    .await
                    .map_err(|e| nats_error("writing a member", e))?;
            }
            if registered {
                self.room_membership(&b, room, &record.connection_id, true)
                    .await?;
            }
            return Ok(());
        }
        // A displaced or removed connection may still leave: its member
        // entry goes whatever became of its record.
        let gone = async {
            if presence {
                purge(&b.registry, &member_key, None).await.map(drop)
            } else {
                Ok(())
            }
        };
        let (rewritten, gone) = tokio::join!(self.rewrite(&b, record), gone);
        rewritten?;
        gone?;
        self.room_membership(&b, room, &record.connection_id, false)
            .await
    }

    /// Live node ids, this node's included (it answers, so it lives, even
    /// before its first heartbeat), among `nodes`. The last listing (a
    /// quarter heartbeat old at most) answers when it knows them all; a
    /// node it does not know may have started since, so that asks again.
    pub(super) async fn live_among<'a>(
        &self,
        b: &Buckets,
        nodes: impl Iterator<Item = &'a str> + Clone,
    ) -> Result<HashSet<String>, BrokerError> {
        let fresh = self.heartbeat / 4;
        if let Some((at, set)) = self.live.lock().as_ref() {
            if at.elapsed() < fresh && nodes.clone().all(|n| set.contains(n)) {
                return Ok(set.clone());
            }
        }
        Ok(self.list_live(b).await?.0)
    }

    /// Lists the nodes bucket: live ids (cached for `live_nodes`) and the
    /// figures each published.
    pub(super) async fn list_live(
        &self,
        b: &Buckets,
    ) -> Result<(HashSet<String>, Vec<NodeFigures>), BrokerError> {
        let listed = list(&self.clients.client, &b.nodes, "*", self.command_timeout).await?;
        let mut ids = HashSet::new();
        let mut figures = Vec::new();
        for entry in listed {
            let Some(id) = untoken(&entry.key) else {
                continue;
            };
            let mut f: NodeFigures = serde_json::from_slice(&entry.value).unwrap_or_default();
            f.node_id = id.clone();
            figures.push(f);
            ids.insert(id);
        }
        ids.insert(self.node_id.clone());
        *self.live.lock() = Some((Instant::now(), ids.clone()));
        Ok((ids, figures))
    }

    /// [`herald_core::Cluster::user_connections`].
    pub(super) async fn list_user(
        &self,
        tenant: &Tenant,
        user: &str,
    ) -> Result<Vec<ConnectionRecord>, BrokerError> {
        let b = self.buckets().await?;
        let user_key = self.keys.user(tenant, user);
        let (doc, _) = self.read_doc::<UserDoc>(&b, &user_key).await?;
        let live = self
            .live_among(&b, doc.conns.values().map(|c| c.node.as_str()))
            .await?;
        let reads = doc
            .conns
            .iter()
            .filter(|(_, c)| live.contains(&c.node))
            .map(|(id, c)| {
                let key = self.keys.conn(&c.node, id);
                let b = &b;
                async move { b.registry.get(key).await }
            });
        let mut list = Vec::new();
        for read in join_all(reads).await {
            let value = read.map_err(|e| nats_error("reading a connection", e))?;
            // A record already gone belongs to a removal in flight.
            if let Some(r) = value.and_then(|v| serde_json::from_slice::<ConnectionRecord>(&v).ok())
            {
                list.push(r);
            }
        }
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
        let b = self.buckets().await?;
        let filter = self.keys.room_members(room);
        let listed = list(
            &self.clients.client,
            &b.registry,
            &filter,
            self.command_timeout,
        )
        .await?;
        let mut members: Vec<MemberRecord> = listed
            .iter()
            .filter_map(|e| serde_json::from_slice::<MemberEntry>(&e.value).ok())
            .map(|e| e.member)
            .collect();
        let live = self
            .live_among(&b, members.iter().map(|m| m.node_id.as_str()))
            .await?;
        members.retain(|m| live.contains(&m.node_id));
        members.sort_by(|a, b| (&a.user_id, &a.connection_id).cmp(&(&b.user_id, &b.connection_id)));
        Ok(members)
    }

    /// [`herald_core::Cluster::nodes`].
    pub(super) async fn list_nodes(&self) -> Result<Vec<NodeFigures>, BrokerError> {
        let b = self.buckets().await?;
        let (_, mut figures) = self.list_live(&b).await?;
        if let Some(node) = self.node.get() {
            // This node's own figures, fresh rather than a heartbeat old.
            figures.retain(|f| f.node_id != self.node_id);
            let mut own = node.figures();
            own.node_id = self.node_id.clone();
            figures.push(own);
        } else if !figures.iter().any(|f| f.node_id == self.node_id) {
            figures.push(NodeFigures {
                node_id: self.node_id.clone(),
                ..NodeFigures::default()
            });
        }
        figures.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(figures)
    }
}
