//! Cluster-wide webhook transitions: `user.online`/`user.offline` on a
//! user's key, `room.occupied`/`room.vacated` on a room's key, exactly once
//! per transition although NATS has no transaction spanning a key-value
//! write and a stream publish.
//!
//! The event is written into the key by the compare-and-set that makes the
//! transition (a `pending` list in the document), so the transition and its
//! event are one write. Then the event is published to the outbox stream
//! (`Nats-Msg-Id` = its id) and a second compare-and-set takes it out of
//! the key. Should the publish fail, or the node die between the two
//! writes, the event stays in the key and whoever next touches the key
//! publishes it (with the same id) before taking it out: the next write of
//! the user or room on any node, this node's heartbeat (it remembers what
//! it failed to publish), or a survivor reaping the dead node (a user key
//! with a pending event still has the connection record that led there,
//! which the reaper walks; room keys are listed whole). A retry within the
//! stream's duplicate window is stored once; later, the receiver dedups by
//! the same id. Nothing is lost, nothing goes out under two ids.
//!
//! Rooms: each node keeps its members per room in memory and lists itself
//! in the room's key (`r.<room>`: the nodes with members, and pending
//! events) only on its own 0 → 1 and 1 → 0, so a join that does not change
//! that costs no shared write. The room is occupied while any node is
//! listed. Kept only when `room.occupied` or `room.vacated` is enabled.

use super::store::{list, purge, Buckets};
use super::users::{Change, CAS_ATTEMPTS};
use super::{json_error, nats_error, NatsCluster};
use crate::hooks::metrics;
use async_nats::jetstream::kv::{Operation, UpdateErrorKind};
use bytes::Bytes;
use herald_core::{BrokerError, HookEvent, HookKind, RoomKey, RoomName, Tenant};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::hash::{Hash, Hasher};

/// Locks serializing this node's writes of one room's key (by hash).
pub(super) const ROOM_LOCKS: usize = 64;

/// A registry document that carries events waiting to be published.
pub(super) trait PendingDoc: Serialize + DeserializeOwned + Default {
    /// The events written with the transition, not yet taken out.
    fn pending(&mut self) -> &mut Vec<HookEvent>;
    /// Whether the key can go.
    fn is_empty(&self) -> bool;
}

/// A room's key: the nodes with members there.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct RoomDoc {
    #[serde(default)]
    pub(super) nodes: BTreeSet<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) pending: Vec<HookEvent>,
}

impl PendingDoc for RoomDoc {
    fn pending(&mut self) -> &mut Vec<HookEvent> {
        &mut self.pending
    }

    fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.pending.is_empty()
    }
}

/// This node's members of one room.
#[derive(Debug, Default)]
pub(super) struct LocalRoom {
    members: HashSet<String>,
    /// The room's key lists this node.
    listed: bool,
}

/// The transition a change of "has members" makes, if any.
fn transition(had: bool, has: bool) -> Option<bool> {
    (had != has).then_some(has)
}

impl NatsCluster {
    /// Whether the registry emits `kind`.
    pub(super) fn emits(&self, kind: HookKind) -> bool {
        self.outbox.is_some() && self.hooks.contains(kind)
    }

    /// Whether room keys are kept.
    pub(super) fn tracks_rooms(&self) -> bool {
        self.emits(HookKind::RoomOccupied) || self.emits(HookKind::RoomVacated)
    }

    /// The event of a user's transition (`now_online`), if enabled.
    pub(super) fn user_event(
        &self,
        tenant: &Tenant,
        user: &str,
        now_online: bool,
    ) -> Option<HookEvent> {
        if now_online && self.emits(HookKind::UserOnline) {
            Some(HookEvent::user_online(tenant, user))
        } else if !now_online && self.emits(HookKind::UserOffline) {
            Some(HookEvent::user_offline(tenant, user))
        } else {
            None
        }
    }

    /// Publishes events to the outbox, in order.
    pub(super) async fn publish_events(&self, events: &[HookEvent]) -> Result<(), BrokerError> {
        match &self.outbox {
            Some(outbox) if !events.is_empty() => {
                tokio::time::timeout(self.command_timeout * 2, outbox.publish(events))
                    .await
                    .map_err(|_| nats_error("publishing webhook events", "timed out"))?
            }
            _ => Ok(()),
        }
    }

    /// Publishes a key's pending events, then takes them out of the key.
    pub(super) async fn flush<D: PendingDoc>(
        &self,
        b: &Buckets,
        key: &str,
        pending: &[HookEvent],
    ) -> Result<(), BrokerError> {
        self.publish_events(pending).await?;
        let ids: HashSet<&str> = pending.iter().map(|e| e.id.as_str()).collect();
        self.cas_doc::<D, ()>(b, key, |doc| {
            let before = doc.pending().len();
            doc.pending().retain(|e| !ids.contains(e.id.as_str()));
            if doc.pending().len() == before {
                Change::Keep(())
            } else {
                Change::Write(())
            }
        })
        .await
        .map(drop)
    }

    /// Reads a document key: the document (default when absent or
    /// unreadable) and its revision.
    pub(super) async fn read_doc<D: PendingDoc>(
        &self,
        b: &Buckets,
        key: &str,
    ) -> Result<(D, Option<u64>), BrokerError> {
        let entry = b
            .registry
            .entry(key)
            .await
            .map_err(|e| nats_error("reading a registry key", e))?;
        Ok(match entry {
            None => (D::default(), None),
            Some(e) if e.operation != Operation::Put => (D::default(), Some(e.revision)),
            Some(e) => match serde_json::from_slice(&e.value) {
                Ok(doc) => (doc, Some(e.revision)),
                Err(err) => {
                    tracing::warn!(key, error = %err, "unreadable registry entry replaced");
                    (D::default(), Some(e.revision))
                }
            },
        })
    }

    /// Applies `change` to a document key by compare-and-set (read, decide,
    /// write on the revision read; again on a conflict). An empty document
    /// is purged rather than written. Returns the answer and the events
    /// pending in the document as left.
    pub(super) async fn cas_doc<D: PendingDoc, T>(
        &self,
        b: &Buckets,
        key: &str,
        mut change: impl FnMut(&mut D) -> Change<T>,
    ) -> Result<(T, Vec<HookEvent>), BrokerError> {
        for _ in 0..CAS_ATTEMPTS {
            let (mut doc, revision) = self.read_doc::<D>(b, key).await?;
            let answer = match change(&mut doc) {
                Change::Keep(answer) => return Ok((answer, doc.pending().clone())),
                Change::Write(answer) => answer,
            };
            let written = if doc.is_empty() {
                match revision {
                    None => true,
                    Some(rev) => purge(&b.registry, key, Some(rev)).await? > 0,
                }
            } else {
                let value = Bytes::from(serde_json::to_vec(&doc).map_err(json_error)?);
                match b.registry.update(key, value, revision.unwrap_or(0)).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => false,
                    Err(e) => return Err(nats_error("writing a registry key", e)),
                }
            };
            if written {
                return Ok((answer, doc.pending().clone()));
            }
        }
        Err(BrokerError::Unavailable(format!(
            "registry key {key}: still changing after {CAS_ATTEMPTS} attempts"
        )))
    }

    /// Publishes what a user's key holds pending; on failure remembers the
    /// user for the heartbeat and answers the error.
    pub(super) async fn flush_user(
        &self,
        b: &Buckets,
        tenant: &Tenant,
        user: &str,
        pending: &[HookEvent],
    ) -> Result<(), BrokerError> {
        let key = self.keys.user(tenant, user);
        let flushed = self.flush::<super::users::UserDoc>(b, &key, pending).await;
        // The doc changed under the hint; the next write reads it.
        self.hints.lock().remove(&key);
        let who = (tenant.clone(), user.to_owned());
        match flushed {
            Ok(()) => {
                self.unflushed_users.lock().remove(&who);
                Ok(())
            }
            Err(e) => {
                tracing::debug!(error = %e, "webhook event of a user kept for a retry");
                self.unflushed_users.lock().insert(who);
                Err(e)
            }
        }
    }

    /// Whether a user's key may still hold events this node failed to
    /// publish (its connection record must stay until they are out).
    pub(super) fn user_unflushed(&self, tenant: &Tenant, user: &str) -> bool {
        self.unflushed_users
            .lock()
            .contains(&(tenant.clone(), user.to_owned()))
    }

    /// The heartbeat's retry of events this node failed to publish.
    pub(super) async fn retry_unflushed(&self, b: &Buckets) -> Result<(), BrokerError> {
        let users: Vec<(Tenant, String)> = self.unflushed_users.lock().iter().cloned().collect();
        for (tenant, user) in users {
            let key = self.keys.user(&tenant, &user);
            let (mut doc, _) = self.read_doc::<super::users::UserDoc>(b, &key).await?;
            let pending = std::mem::take(doc.pending());
            if pending.is_empty() {
                self.unflushed_users.lock().remove(&(tenant, user));
            } else {
                metrics::pending_retried();
                self.flush_user(b, &tenant, &user, &pending).await?;
            }
        }
        if self.tracks_rooms() {
            self.sync_dirty_rooms(b).await?;
        }
        Ok(())
    }

    fn room_lock(&self, room: &RoomKey) -> &tokio::sync::Mutex<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        room.hash(&mut h);
        &self.room_locks[(h.finish() as usize) % self.room_locks.len()]
    }

    /// A local connection joined (or left) a room: lists or unlists this
    /// node in the room's key when that changes whether it has members.
    pub(super) async fn room_membership(
        &self,
        b: &Buckets,
        room: &RoomKey,
        connection_id: &str,
        joined: bool,
    ) -> Result<(), BrokerError> {
        if !self.tracks_rooms() {
            return Ok(());
        }
        {
            let mut rooms = self.rooms.lock();
            let local = rooms.entry(room.clone()).or_default();
            if joined {
                local.members.insert(connection_id.to_owned());
            } else {
                local.members.remove(connection_id);
            }
        }
        self.sync_room(b, room).await
    }

    /// Brings the room's key in line with this node's members (under the
    /// room's lock, so two syncs of one room do not cross).
    async fn sync_room(&self, b: &Buckets, room: &RoomKey) -> Result<(), BrokerError> {
        let _one = self.room_lock(room).lock().await;
        let (want, listed) = match self.rooms.lock().get(room) {
            Some(r) => (!r.members.is_empty(), r.listed),
            None => return Ok(()),
        };
        if want != listed {
            self.set_listed(b, room, &self.node_id, want).await?;
        }
        let mut rooms = self.rooms.lock();
        if let Some(r) = rooms.get_mut(room) {
            r.listed = want;
            if !want && r.members.is_empty() {
                rooms.remove(room);
            }
        }
        Ok(())
    }

    /// Lists (or unlists) `node` in a room's key, with the room's
    /// transition, then publishes what the key holds pending.
    async fn set_listed(
        &self,
        b: &Buckets,
        room: &RoomKey,
        node: &str,
        listed: bool,
    ) -> Result<(), BrokerError> {
        let key = self.keys.room(room);
        let (_, pending) = self
            .cas_doc::<RoomDoc, ()>(b, &key, |doc| {
                let had = !doc.nodes.is_empty();
                let changed = if listed {
                    doc.nodes.insert(node.to_owned())
                } else {
                    doc.nodes.remove(node)
                };
                if !changed {
                    return Change::Keep(());
                }
                match transition(had, !doc.nodes.is_empty()) {
                    Some(true) if self.emits(HookKind::RoomOccupied) => {
                        doc.pending.push(HookEvent::room_occupied(room));
                    }
                    Some(false) if self.emits(HookKind::RoomVacated) => {
                        doc.pending.push(HookEvent::room_vacated(room));
                    }
                    _ => {}
                }
                Change::Write(())
            })
            .await?;
        if !pending.is_empty() {
            self.flush::<RoomDoc>(b, &key, &pending).await?;
        }
        Ok(())
    }

    /// Rooms whose key does not say what this node has (a failed write).
    async fn sync_dirty_rooms(&self, b: &Buckets) -> Result<(), BrokerError> {
        let dirty: Vec<RoomKey> = self
            .rooms
            .lock()
            .iter()
            .filter(|(_, r)| r.members.is_empty() == r.listed)
            .map(|(k, _)| k.clone())
            .collect();
        for room in dirty {
            self.sync_room(b, &room).await?;
        }
        Ok(())
    }

    /// After NATS lost the registry: every room is listed again.
    pub(super) fn rooms_unlisted(&self) {
        for r in self.rooms.lock().values_mut() {
            r.listed = false;
        }
    }

    /// Every room key: `(room, document)`.
    async fn room_docs(&self, b: &Buckets) -> Result<Vec<(RoomKey, RoomDoc)>, BrokerError> {
        let listed = list(
            &self.clients.client,
            &b.registry,
            self.keys.all_rooms(),
            self.command_timeout,
        )
        .await?;
        Ok(listed
            .into_iter()
            .filter_map(|e| {
                let token = e.key.strip_prefix("r.")?;
                let (tenant, name) = crate::names::room_of_token(token)?;
                let name = RoomName::parse(&name).ok()?;
                let tenant = Tenant::from_option((!tenant.is_empty()).then_some(tenant.as_str()));
                let doc = serde_json::from_slice::<RoomDoc>(&e.value).ok()?;
                Some((RoomKey::new(tenant, name), doc))
            })
            .collect())
    }

    /// Unlists `node` from every room key naming it (a dead node, or this
    /// node's previous process), and publishes events left pending in room
    /// keys. `own`: only rooms where this node has no members now.
    pub(super) async fn unlist_node(&self, b: &Buckets, node: &str) -> Result<(), BrokerError> {
        if !self.tracks_rooms() {
            return Ok(());
        }
        let own = node == self.node_id;
        for (room, mut doc) in self.room_docs(b).await? {
            if doc.nodes.contains(node) {
                if own {
                    let _one = self.room_lock(&room).lock().await;
                    if self
                        .rooms
                        .lock()
                        .get(&room)
                        .is_some_and(|r| r.listed || !r.members.is_empty())
                    {
                        continue;
                    }
                    self.set_listed(b, &room, node, false).await?;
                } else {
                    self.set_listed(b, &room, node, false).await?;
                }
            } else if !doc.pending.is_empty() {
                metrics::pending_retried();
                let key = self.keys.room(&room);
                self.flush::<RoomDoc>(b, &key, &std::mem::take(&mut doc.pending))
                    .await?;
            }
        }
        Ok(())
    }

    /// On leaving: this node's rooms are unlisted.
    pub(super) async fn unlist_own_rooms(&self, b: &Buckets) -> Result<(), BrokerError> {
        if !self.tracks_rooms() {
            return Ok(());
        }
        let rooms: Vec<RoomKey> = {
            let mut rooms = self.rooms.lock();
            for r in rooms.values_mut() {
                r.members.clear();
            }
            rooms.keys().cloned().collect()
        };
        for room in rooms {
            self.sync_room(b, &room).await?;
        }
        Ok(())
    }

    /// The events a dead node's connection would have produced on closing:
    /// `member.left` per room it was in, then `connection.closed` (1006,
    /// `node_lost`). Ids are derived from the connection (and room), so a
    /// second reaper (or the node itself) produces the same ones.
    pub(super) fn lost_connection_events(
        &self,
        record: &herald_core::ConnectionRecord,
    ) -> Vec<HookEvent> {
        let mut out = Vec::new();
        if self.emits(HookKind::MemberLeft) {
            for room in super::registry::rooms_of(record) {
                let mut e = HookEvent::member_left(&room, record);
                e.id = format!("{}.left.{}", record.connection_id, room.name.as_str());
                out.push(e);
            }
        }
        if self.emits(HookKind::ConnectionClosed) {
            out.push(HookEvent::connection_closed(
                record,
                herald_core::hooks::NODE_LOST_CODE,
                herald_core::hooks::NODE_LOST_REASON,
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_change_of_having_members_is_a_transition() {
        assert_eq!(transition(false, true), Some(true));
        assert_eq!(transition(true, false), Some(false));
        assert_eq!(transition(true, true), None);
        assert_eq!(transition(false, false), None);
    }

    #[test]
    fn a_room_doc_with_pending_events_is_not_empty() {
        let mut doc = RoomDoc::default();
        assert!(PendingDoc::is_empty(&doc));
        doc.pending
            .push(HookEvent::user_online(&Tenant::default_tenant(), "u"));
        assert!(!PendingDoc::is_empty(&doc));
        let json = serde_json::to_string(&doc).expect("json");
        let back: RoomDoc = serde_json::from_str(&json).expect("parses");
        assert_eq!(back.pending.len(), 1);
        assert_eq!(back.pending[0].id, doc.pending[0].id);
    }
}
