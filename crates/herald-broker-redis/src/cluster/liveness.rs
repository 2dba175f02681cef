//! Keeping the registry true over time: the heartbeat, with the
//! re-registration after Redis lost this node, the exclusive-lock renewal
//! and the sweep of this node's stale entries.

use super::registry::{member_json, room_key};
use super::{json_error, millis, now_ms, redis_error, telemetry, RedisCluster, SESSION_REPLACED};
use crate::hooks::Farewell;
use fred::interfaces::{HashesInterface, KeysInterface};
use fred::types::{Expiration, Value};
use herald_core::{BrokerError, ClusterNode, ConnectionRecord};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Commands per pipeline when registering many entries.
const BATCH: usize = 512;
/// Locks per renewal script call (when they share a slot).
const LOCK_BATCH: usize = 128;
/// Every this many heartbeats, the node's own entries are checked against
/// what it holds.
const SWEEP_EVERY: u64 = 10;

/// One connection of a snapshot: its record and rooms (name, presence).
type Entry = (ConnectionRecord, Vec<(String, bool)>);

/// What the heartbeat remembers between beats.
#[derive(Default)]
struct BeatState {
    /// The nodes set listed this node at least once.
    registered: bool,
    /// Redis lost this node's entries; set until they are all written back.
    reregister: bool,
    /// Successful beats so far.
    beats: u64,
    /// The last beat failed (log once per outage, not once per beat).
    failing: bool,
}

impl RedisCluster {
    pub(super) async fn heartbeat_loop(
        self: Arc<Self>,
        node: Arc<dyn ClusterNode>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.heartbeat);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut state = BeatState::default();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            if self.left.load(Ordering::Acquire) {
                break;
            }
            let result = match self.check() {
                Ok(()) => self.beat(&*node, &mut state).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) if state.failing => {
                    state.failing = false;
                    tracing::info!("cluster heartbeat restored");
                }
                Ok(()) => {}
                Err(e) if !state.failing => {
                    state.failing = true;
                    tracing::warn!(error = %e, "cluster heartbeat failed");
                }
                Err(e) => tracing::debug!(error = %e, "cluster heartbeat failed"),
            }
        }
    }

    async fn beat(&self, node: &dyn ClusterNode, st: &mut BeatState) -> Result<(), BrokerError> {
        let _serial = self.beat.lock().await;
        if self.left.load(Ordering::Acquire) {
            return Ok(());
        }
        let c = &self.clients.commands;
        let added = self.enlist().await?;
        if added && st.registered {
            // Redis was flushed or restarted, or a survivor took this node
            // for dead: write everything back from what the node holds.
            tracing::info!("cluster registry lost this node: registering its connections again");
            st.reregister = true;
        }
        st.registered = true;
        if st.reregister {
            self.reregister(node).await?;
            st.reregister = false;
        }
        let figures = serde_json::to_string(&node.figures()).map_err(json_error)?;
        let ttl = Expiration::PX(self.lease().as_millis() as i64);
        c.set::<(), _, _>(
            self.keys.node_figures(&self.node_id),
            figures,
            Some(ttl),
            None,
            false,
        )
        .await
        .map_err(redis_error)?;
        self.renew_locks(node).await?;
        // The first beat clears what a previous process of this id left.
        if st.beats.is_multiple_of(SWEEP_EVERY) {
            self.sweep(node).await?;
        }
        st.beats += 1;
        Ok(())
    }

    /// Scores this node in the nodes set with the server's time; returns
    /// whether it was not listed.
    pub(super) async fn enlist(&self) -> Result<bool, BrokerError> {
        let added: i64 = self
            .scripts
            .heartbeat
            .run(
                &self.clients.commands,
                vec![self.keys.nodes()],
                vec![self.node_id.clone()],
            )
            .await
            .map_err(redis_error)?;
        self.enlisted.store(true, Ordering::Release);
        Ok(added == 1)
    }

    /// Writes every connection of the node back, then writes again whatever
    /// changed locally while the first pass was on its way.
    async fn reregister(&self, node: &dyn ClusterNode) -> Result<(), BrokerError> {
        let first = node.snapshot();
        self.register(&first).await?;
        let second = node.snapshot();
        let before: HashMap<&str, &Entry> = first
            .iter()
            .map(|e| (e.0.connection_id.as_str(), e))
            .collect();
        let now: HashSet<&str> = second.iter().map(|e| e.0.connection_id.as_str()).collect();
        let changed: Vec<Entry> = second
            .iter()
            .filter(|e| before.get(e.0.connection_id.as_str()) != Some(e))
            .cloned()
            .collect();
        self.register(&changed).await?;
        // Rooms a changed connection left meanwhile: drop their entries.
        let mut left = Vec::new();
        for (rec, rooms) in &changed {
            if let Some((_, old)) = before.get(rec.connection_id.as_str()) {
                for (room, _) in old.iter().filter(|r| !rooms.iter().any(|n| n.0 == r.0)) {
                    left.push((rec.clone(), room.clone()));
                }
            }
        }
        if let Some(hooks) = &self.hooks {
            for (rec, room) in &left {
                if let Some(key) = room_key(rec, room) {
                    hooks.left(&key, rec).await?;
                }
            }
        }
        let pipe = self.clients.commands.pipeline();
        for (rec, room) in &left {
            if let Some(key) = room_key(rec, room) {
                pipe.hdel::<(), _, _>(self.keys.room_presence(&key), rec.connection_id.as_str())
                    .await
                    .map_err(redis_error)?;
            }
        }
        if !left.is_empty() {
            pipe.all::<Value>().await.map_err(redis_error)?;
        }
        let gone: Vec<ConnectionRecord> = first
            .iter()
            .filter(|e| !now.contains(e.0.connection_id.as_str()))
            .map(|e| e.0.clone())
            .collect();
        // Closed by this node, which reported them.
        self.purge(&self.node_id, &gone, false, &|_| Farewell::Quiet)
            .await?;
        self.forget_in_node_hash(&gone).await
    }

    /// Writes connections into the user and node hashes and their presence
    /// entries.
    async fn register(&self, entries: &[Entry]) -> Result<(), BrokerError> {
        let node_key = self.keys.node_connections(&self.node_id);
        for chunk in entries.chunks(BATCH) {
            let pipe = self.clients.commands.pipeline();
            for (rec, rooms) in chunk {
                let id = rec.connection_id.as_str();
                let json = serde_json::to_string(rec).map_err(json_error)?;
                let user_key = self.keys.user_connections(&rec.tenant, &rec.user_id);
                pipe.hset::<(), _, _>(user_key, (id, json.as_str()))
                    .await
                    .map_err(redis_error)?;
                pipe.hset::<(), _, _>(node_key.as_str(), (id, json.as_str()))
                    .await
                    .map_err(redis_error)?;
                let member = member_json(rec)?;
                for (room, _) in rooms.iter().filter(|r| r.1) {
                    if let Some(key) = room_key(rec, room) {
                        pipe.hset::<(), _, _>(self.keys.room_presence(&key), (id, member.as_str()))
                            .await
                            .map_err(redis_error)?;
                    }
                }
            }
            pipe.all::<Value>().await.map_err(redis_error)?;
            if let Some(hooks) = &self.hooks {
                // Its transitions, should Redis have lost them too (after
                // a flush the sets are empty; after a wrong reap they say
                // offline): `online`/`offline` keep alternating.
                for (rec, rooms) in chunk {
                    let keys: Vec<_> = rooms.iter().filter_map(|r| room_key(rec, &r.0)).collect();
                    hooks.restore(rec, &keys).await?;
                }
            }
        }
        Ok(())
    }

    /// Renews the locks of local exclusive sessions; closes (4010) those
    /// whose lock another connection took, even if the close command sent
    /// by the taker's node never arrived.
    async fn renew_locks(&self, node: &dyn ClusterNode) -> Result<(), BrokerError> {
        let held: Vec<(String, String)> = self
            .locks
            .lock()
            .iter()
            .map(|(id, (tenant, user))| (id.clone(), self.keys.user_lock(tenant, user)))
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        // One script call covers keys of one slot only.
        let mut groups: BTreeMap<u16, Vec<(String, String)>> = BTreeMap::new();
        for (id, key) in held {
            let slot = if self.clients.clustered {
                fred::util::redis_keyslot(key.as_bytes())
            } else {
                0
            };
            groups.entry(slot).or_default().push((id, key));
        }
        let mut lost = Vec::new();
        for group in groups.values() {
            for chunk in group.chunks(LOCK_BATCH) {
                let keys = chunk.iter().map(|(_, k)| k.clone()).collect();
                let mut args = vec![millis(self.lease())];
                args.extend(chunk.iter().map(|(id, _)| id.clone()));
                let kept: Vec<i64> = self
                    .scripts
                    .renew_locks
                    .run(&self.clients.commands, keys, args)
                    .await
                    .map_err(redis_error)?;
                for ((id, _), k) in chunk.iter().zip(kept) {
                    if k == 0 {
                        lost.push(id.clone());
                    }
                }
            }
        }
        for id in lost {
            if self.locks.lock().remove(&id).is_some() {
                telemetry::lock_lost();
                tracing::info!(connection = %id, "exclusive lock taken over: closing the session");
                node.close_connection(&id, SESSION_REPLACED);
            }
        }
        Ok(())
    }

    /// Drops this node's entries for connections it no longer holds: a
    /// removal that failed half-way, an admission whose reply was lost, or
    /// a previous process of the same node id.
    async fn sweep(&self, node: &dyn ClusterNode) -> Result<(), BrokerError> {
        let node_key = self.keys.node_connections(&self.node_id);
        let all: HashMap<String, String> = self
            .clients
            .commands
            .hgetall(node_key.as_str())
            .await
            .map_err(redis_error)?;
        if all.is_empty() {
            return Ok(());
        }
        let held: HashSet<String> = node
            .snapshot()
            .into_iter()
            .map(|(r, _)| r.connection_id)
            .collect();
        // Young entries may belong to an admission still in flight.
        let young = now_ms().saturating_sub(self.heartbeat.as_millis() as u64);
        let mut stale = Vec::new();
        let mut unreadable = Vec::new();
        for (id, json) in all {
            match serde_json::from_str::<ConnectionRecord>(&json) {
                Ok(r) if held.contains(&r.connection_id) => {}
                Ok(r) if r.connected_at < self.started_at || r.connected_at < young => {
                    stale.push(r)
                }
                Ok(_) => {}
                Err(_) => unreadable.push(id),
            }
        }
        if !stale.is_empty() {
            tracing::info!(
                entries = stale.len(),
                "dropping stale registry entries of this node"
            );
        }
        // A previous process of this node id never reported its closes;
        // this process's own connections it reported as they closed.
        let started_at = self.started_at;
        self.purge(&self.node_id, &stale, true, &move |r| {
            if r.connected_at < started_at {
                Farewell::Lost
            } else {
                Farewell::Quiet
            }
        })
        .await?;
        self.forget_in_node_hash(&stale).await?;
        if !unreadable.is_empty() {
            self.clients
                .commands
                .hdel::<(), _, _>(node_key, unreadable)
                .await
                .map_err(redis_error)?;
        }
        Ok(())
    }
}
