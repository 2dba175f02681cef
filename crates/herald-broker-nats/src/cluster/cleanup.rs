//! Cleaning up after connections and nodes that are gone: purging records
//! and presence entries (with `member_left` for those a call removed), the
//! reaper of dead nodes, and leaving on shutdown.

use super::registry::MemberEntry;
use super::store::{list, purge, Buckets, Listed};
use super::users::Change;
use super::{nats_error, telemetry, NatsCluster};
use crate::names::untoken;
use crate::wire;
use async_nats::jetstream::kv::CreateErrorKind;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use herald_core::{BrokerError, ConnectionRecord, PresenceChange};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Registry writes in flight at once when purging many entries.
const PARALLEL: usize = 32;

impl NatsCluster {
    /// Removes records of `node_id` from their users' keys (with the
    /// user's lock when it names them), then their record keys.
    pub(super) async fn purge_records(
        &self,
        b: &Buckets,
        node_id: &str,
        records: &[ConnectionRecord],
    ) -> Result<(), BrokerError> {
        let work: Vec<_> = records
            .iter()
            .map(|rec| self.purge_record(b, node_id, rec))
            .collect();
        let results: Vec<Result<(), BrokerError>> = stream::iter(work)
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn purge_record(
        &self,
        b: &Buckets,
        node_id: &str,
        rec: &ConnectionRecord,
    ) -> Result<(), BrokerError> {
        let id = rec.connection_id.as_str();
        self.update_user(b, &rec.tenant, &rec.user_id, false, |doc| {
            // Only the entry of that node: the id may have been registered
            // again elsewhere.
            let ours = doc.conns.get(id).is_some_and(|c| c.node == node_id);
            if ours {
                doc.conns.remove(id);
            }
            let locked = doc.lock.as_deref() == Some(id) && !doc.conns.contains_key(id);
            if locked {
                doc.lock = None;
            }
            if ours || locked {
                Change::Write(())
            } else {
                Change::Keep(())
            }
        })
        .await?;
        if self.user_unflushed(&rec.tenant, &rec.user_id) {
            // The record stays until the user's event is out.
            return Err(BrokerError::Unavailable(
                "the user's webhook event could not be published yet".into(),
            ));
        }
        purge(&b.registry, &self.keys.conn(node_id, id), None).await?;
        if node_id == self.node_id {
            self.revisions.lock().remove(id);
            self.locks.lock().remove(id);
        }
        Ok(())
    }

    /// Deletes presence entries and publishes `member_left` for each one
    /// this call removed (a purge bounded by the entry's revision removes
    /// it once, so each leave goes out once even when two survivors purge
    /// the same node).
    pub(super) async fn purge_members(
        &self,
        b: &Buckets,
        node_id: &str,
        entries: &[Listed],
    ) -> Result<(), BrokerError> {
        let work: Vec<_> = entries
            .iter()
            .map(|entry| self.purge_member(b, node_id, entry))
            .collect();
        let results: Vec<Result<Option<PresenceChange>, BrokerError>> = stream::iter(work)
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        let mut announced = false;
        for result in results {
            let Some(change) = result? else { continue };
            let (headers, body) = wire::encode_presence(&change);
            self.clients
                .client
                .publish_with_headers(self.names.delivery_subject(&change.room), headers, body)
                .await
                .map_err(|e| nats_error("announcing member_left", e))?;
            announced = true;
        }
        if announced {
            tokio::time::timeout(self.command_timeout, self.clients.client.flush())
                .await
                .map_err(|_| nats_error("announcing member_left", "flush timed out"))?
                .map_err(|e| nats_error("announcing member_left", e))?;
        }
        Ok(())
    }

    /// Purges one presence entry; the change to announce if this call
    /// removed it.
    async fn purge_member(
        &self,
        b: &Buckets,
        node_id: &str,
        entry: &Listed,
    ) -> Result<Option<PresenceChange>, BrokerError> {
        let removed = purge(&b.registry, &entry.key, Some(entry.revision)).await?;
        if removed == 0 {
            return Ok(None);
        }
        let Ok(member) = serde_json::from_slice::<MemberEntry>(&entry.value) else {
            return Ok(None);
        };
        Ok(member.room_key().map(|room| PresenceChange {
            room,
            joined: false,
            user_id: member.member.user_id,
            connection_id: member.member.connection_id,
            node_id: node_id.to_owned(),
        }))
    }

    pub(super) async fn reaper_loop(self: Arc<Self>, cancel: CancellationToken) {
        let period = (self.heartbeat / 4).max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // After a start or an outage, every node's key may have expired
        // meanwhile: reaping waits until live nodes had two heartbeats to
        // renew theirs, so a survivor does not reap its live peers.
        let grace = self.heartbeat * 2;
        let mut reap_from: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            if self.left.load(Ordering::Acquire) || self.check().is_err() {
                reap_from = None;
                continue;
            }
            let from = *reap_from.get_or_insert_with(|| Instant::now() + grace);
            if Instant::now() < from {
                continue;
            }
            // Every request is bounded by the command timeout; this bounds a
            // round that reaps a large node (another survivor takes over
            // once the claim expires).
            let round = tokio::time::timeout(self.command_timeout * 30, self.reap_round());
            match round.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "reaper round failed"),
                Err(_) => tracing::debug!("reaper round timed out"),
            }
        }
    }

    /// Lists the nodes with entries and the live ones; reaps the others.
    async fn reap_round(&self) -> Result<(), BrokerError> {
        let b = self.buckets().await?;
        let wait = self.command_timeout;
        // Markers first: a node starting meanwhile has its node key before
        // its marker, so it shows as live.
        let markers = list(
            &self.clients.client,
            &b.registry,
            self.keys.all_enlisted(),
            wait,
        )
        .await?;
        let (live, _) = self.list_live(&b).await?;
        telemetry::nodes_alive(live.len());
        let dead: HashSet<String> = markers
            .iter()
            .filter_map(|m| m.key.strip_prefix("m.").and_then(untoken))
            .filter(|id| !live.contains(id) && *id != self.node_id)
            .collect();
        for id in dead {
            if let Err(e) = self.reap(&b, &id).await {
                tracing::warn!(node = %id, error = %e, "reaping a dead node failed");
            }
        }
        Ok(())
    }

    /// Cleans up after a dead node, unless another survivor is at it.
    async fn reap(&self, b: &Buckets, dead: &str) -> Result<(), BrokerError> {
        let claim = self.keys.node(dead);
        let value = Bytes::from(self.node_id.clone().into_bytes());
        match b.reapers.create(&claim, value).await {
            Ok(_) => {}
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => return Ok(()),
            Err(e) => return Err(nats_error("claiming a dead node", e)),
        }
        let result = self.reap_claimed(b, dead).await;
        // The claim expires on its own should this fail.
        purge(&b.reapers, &claim, None).await?;
        result
    }

    async fn reap_claimed(&self, b: &Buckets, dead: &str) -> Result<(), BrokerError> {
        // It may have come back since it was listed.
        let alive = b
            .nodes
            .entry(self.keys.node(dead))
            .await
            .map_err(|e| nats_error("checking a node", e))?;
        if alive.is_some() {
            return Ok(());
        }
        let records = self.own_entries(b, dead).await?;
        // What the dead node's connections would have said on closing,
        // durable before their records go (ids derived from them: a
        // second reaper's are the same events).
        let lost: Vec<_> = records
            .0
            .iter()
            .flat_map(|r| self.lost_connection_events(r))
            .collect();
        self.publish_events(&lost).await?;
        self.purge_members(b, dead, &records.1).await?;
        self.purge_records(b, dead, &records.0).await?;
        self.unlist_node(b, dead).await?;
        // Last: should the node still be alive after all, its next
        // heartbeat finds its marker gone and registers everything again.
        purge(&b.registry, &self.keys.enlisted(dead), None).await?;
        telemetry::node_reaped();
        tracing::info!(node = %dead, connections = records.0.len(), "reaped a dead node");
        Ok(())
    }

    /// A node's connection records and presence entries.
    async fn own_entries(
        &self,
        b: &Buckets,
        node: &str,
    ) -> Result<(Vec<ConnectionRecord>, Vec<Listed>), BrokerError> {
        let wait = self.command_timeout;
        let client = &self.clients.client;
        let (conns_filter, members_filter) =
            (self.keys.node_conns(node), self.keys.node_members(node));
        let (conns, members) = tokio::try_join!(
            list(client, &b.registry, &conns_filter, wait),
            list(client, &b.registry, &members_filter, wait)
        )?;
        let records = conns
            .iter()
            .filter_map(|e| serde_json::from_slice(&e.value).ok())
            .collect();
        Ok((records, members))
    }

    /// [`herald_core::Cluster::leave`]: what a survivor would do after this
    /// node died, done now; the heartbeat stops registering.
    pub(super) async fn leave_cluster(&self) {
        let _serial = self.beat.lock().await;
        self.left.store(true, Ordering::Release);
        let result = tokio::time::timeout(self.command_timeout * 4, self.remove_own_entries())
            .await
            .unwrap_or_else(|_| Err(BrokerError::Unavailable("timed out".into())));
        match result {
            Ok(()) => tracing::info!("left the cluster"),
            Err(e) => {
                tracing::warn!(error = %e, "leaving the cluster failed; survivors will reap this node")
            }
        }
    }

    async fn remove_own_entries(&self) -> Result<(), BrokerError> {
        let b = self.buckets().await?;
        let (records, members) = self.own_entries(&b, &self.node_id).await?;
        self.purge_members(&b, &self.node_id, &members).await?;
        self.purge_records(&b, &self.node_id, &records).await?;
        // Locks of sessions whose record is gone already.
        let locks: Vec<(String, (herald_core::Tenant, String))> =
            self.locks.lock().drain().collect();
        for (id, (tenant, user)) in locks {
            self.update_user(&b, &tenant, &user, false, |doc| {
                if doc.lock.as_deref() == Some(id.as_str()) {
                    doc.lock = None;
                    Change::Write(())
                } else {
                    Change::Keep(())
                }
            })
            .await?;
        }
        self.unlist_own_rooms(&b).await?;
        purge(&b.nodes, &self.keys.node(&self.node_id), None).await?;
        purge(&b.registry, &self.keys.enlisted(&self.node_id), None).await?;
        Ok(())
    }
}
