//! Cleaning up after connections and nodes that are gone: purging records
//! (with `member_left` for the presence entries that go), the reaper of
//! dead nodes, and leaving on shutdown.

use super::registry::rooms_of;
use super::{millis, redis_error, telemetry, RedisCluster};
use crate::hooks::Farewell;
use crate::wire;
use fred::clients::Client;
use fred::interfaces::{HashesInterface, KeysInterface, PubsubInterface, SortedSetsInterface};
use fred::types::{Expiration, SetOptions, Value};
use herald_core::{BrokerError, ConnectionRecord, PresenceChange, RoomKey};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Records per pipeline when purging.
const BATCH: usize = 512;

impl RedisCluster {
    pub(super) async fn forget_in_node_hash(
        &self,
        records: &[ConnectionRecord],
    ) -> Result<(), BrokerError> {
        let node_key = self.keys.node_connections(&self.node_id);
        for chunk in records.chunks(BATCH) {
            let ids: Vec<String> = chunk.iter().map(|r| r.connection_id.clone()).collect();
            self.clients
                .commands
                .hdel::<(), _, _>(node_key.as_str(), ids)
                .await
                .map_err(redis_error)?;
        }
        Ok(())
    }

    /// Removes records of `node_id` from their users' hashes and their
    /// rooms' presence; with `announce`, publishes `member_left` for every
    /// presence entry this call removed (so each leave goes out once, even
    /// when two survivors purge the same node). With webhooks on, reports
    /// each record's transitions, and what `farewell` says of it.
    pub(super) async fn purge(
        &self,
        node_id: &str,
        records: &[ConnectionRecord],
        announce: bool,
        farewell: &(dyn Fn(&ConnectionRecord) -> Farewell + Sync),
    ) -> Result<(), BrokerError> {
        let c = &self.clients.commands;
        for chunk in records.chunks(BATCH) {
            let pipe = c.pipeline();
            let mut members: Vec<(&ConnectionRecord, RoomKey)> = Vec::new();
            // Every user-hash HDEL first, then the presence ones: the reply
            // loop below relies on that order.
            for rec in chunk {
                let user_key = self.keys.user_connections(&rec.tenant, &rec.user_id);
                pipe.hdel::<(), _, _>(user_key, rec.connection_id.as_str())
                    .await
                    .map_err(redis_error)?;
            }
            for rec in chunk {
                for room in rooms_of(rec) {
                    pipe.hdel::<(), _, _>(
                        self.keys.room_presence(&room),
                        rec.connection_id.as_str(),
                    )
                    .await
                    .map_err(redis_error)?;
                    members.push((rec, room));
                }
            }
            let results = pipe.try_all::<i64>().await;
            let mut removed = Vec::new();
            for (i, result) in results.into_iter().enumerate() {
                let n = result.map_err(redis_error)?;
                // The presence replies follow the chunk's user-hash replies.
                if let Some(member) = i.checked_sub(chunk.len()).and_then(|j| members.get(j)) {
                    if n > 0 {
                        removed.push(member);
                    }
                }
            }
            if announce && !removed.is_empty() {
                self.announce_left(c, node_id, &removed).await?;
            }
            if let Some(hooks) = &self.hooks {
                // One script per record: its events and its transitions
                // are one step, reported once however often it is purged.
                for rec in chunk {
                    hooks.closed(rec, &rooms_of(rec), farewell(rec)).await?;
                }
            }
        }
        Ok(())
    }

    async fn announce_left(
        &self,
        c: &Client,
        node_id: &str,
        removed: &[&(&ConnectionRecord, RoomKey)],
    ) -> Result<(), BrokerError> {
        let pipe = c.pipeline();
        for (rec, room) in removed {
            let message = wire::encode_presence(&PresenceChange {
                room: room.clone(),
                joined: false,
                user_id: rec.user_id.clone(),
                connection_id: rec.connection_id.clone(),
                node_id: node_id.to_owned(),
            });
            let channel = self.keys.room_channel(room);
            // Room channels are sharded channels (SSUBSCRIBE) on a single
            // server too, so that one code path serves both deployments.
            pipe.spublish::<(), _, _>(channel, message)
                .await
                .map_err(redis_error)?;
        }
        pipe.all::<Value>().await.map_err(redis_error)?;
        Ok(())
    }

    pub(super) async fn reaper_loop(self: Arc<Self>, cancel: CancellationToken) {
        let period = (self.heartbeat / 4).max(Duration::from_millis(100));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            if self.left.load(Ordering::Acquire) || self.check().is_err() {
                continue;
            }
            let dead = match self.nodes_by_age().await {
                Ok((live, dead)) => {
                    telemetry::nodes_alive(live.len());
                    dead
                }
                Err(e) => {
                    tracing::debug!(error = %e, "listing nodes failed");
                    continue;
                }
            };
            for id in dead.iter().filter(|id| **id != self.node_id) {
                if let Err(e) = self.reap(id).await {
                    tracing::warn!(node = %id, error = %e, "reaping a dead node failed");
                }
            }
        }
    }

    /// Cleans up after a dead node, unless another survivor is at it.
    async fn reap(&self, dead: &str) -> Result<(), BrokerError> {
        let c = &self.clients.commands;
        let lock = self.keys.node_reaper(dead);
        let ttl = Expiration::PX((self.heartbeat * 4).as_millis() as i64);
        let taken: Value = c
            .set(
                lock.as_str(),
                self.node_id.as_str(),
                Some(ttl),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(redis_error)?;
        if taken.is_null() {
            return Ok(());
        }
        // It may have come back, or been reaped, since it was listed.
        let still_dead: i64 = self
            .scripts
            .node_is_dead
            .run(
                c,
                vec![self.keys.nodes()],
                vec![dead.to_owned(), millis(self.dead_after())],
            )
            .await
            .map_err(redis_error)?;
        if still_dead == 1 {
            let node_key = self.keys.node_connections(dead);
            let all: HashMap<String, String> =
                c.hgetall(node_key.as_str()).await.map_err(redis_error)?;
            let records: Vec<ConnectionRecord> = all
                .values()
                .filter_map(|json| serde_json::from_str(json).ok())
                .collect();
            self.purge(dead, &records, true, &|_| Farewell::Lost)
                .await?;
            c.del::<(), _>(vec![node_key, self.keys.node_figures(dead)])
                .await
                .map_err(redis_error)?;
            // Last: should the node still be alive after all, its next
            // heartbeat finds itself gone and registers everything again.
            c.zrem::<(), _, _>(self.keys.nodes(), dead)
                .await
                .map_err(redis_error)?;
            telemetry::node_reaped();
            tracing::info!(node = %dead, connections = records.len(), "reaped a dead node");
        }
        c.del::<(), _>(lock).await.map_err(redis_error)?;
        Ok(())
    }

    /// [`herald_core::Cluster::leave`]: what a survivor would do after this
    /// node died, done now; the heartbeat stops registering.
    pub(super) async fn leave_cluster(&self) {
        let _serial = self.beat.lock().await;
        self.left.store(true, Ordering::Release);
        let result = match self.check() {
            Ok(()) => self.remove_own_entries().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => tracing::info!("left the cluster"),
            Err(e) => {
                tracing::warn!(error = %e, "leaving the cluster failed; survivors will reap this node")
            }
        }
    }

    async fn remove_own_entries(&self) -> Result<(), BrokerError> {
        let c = &self.clients.commands;
        let node_key = self.keys.node_connections(&self.node_id);
        let all: HashMap<String, String> =
            c.hgetall(node_key.as_str()).await.map_err(redis_error)?;
        let records: Vec<ConnectionRecord> = all
            .values()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect();
        // Entries still here were not removed through their sessions (the
        // drain ran out of time, or a removal failed): report them as a
        // reaper would. A close the node did report has the same id, and
        // a membership it removed is no longer in the room's set.
        self.purge(&self.node_id, &records, true, &|_| Farewell::Lost)
            .await?;
        let locks: Vec<(String, (herald_core::Tenant, String))> =
            self.locks.lock().drain().collect();
        for (id, (tenant, user)) in locks {
            self.scripts
                .release_lock
                .run::<i64>(c, vec![self.keys.user_lock(&tenant, &user)], vec![id])
                .await
                .map_err(redis_error)?;
        }
        c.del::<(), _>(vec![node_key, self.keys.node_figures(&self.node_id)])
            .await
            .map_err(redis_error)?;
        c.zrem::<(), _, _>(self.keys.nodes(), self.node_id.as_str())
            .await
            .map_err(redis_error)?;
        Ok(())
    }
}
