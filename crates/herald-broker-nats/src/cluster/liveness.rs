//! Keeping the registry true over time: the heartbeat, with the
//! re-registration after NATS lost this node, the exclusive-lock check and
//! the sweep of this node's stale entries.

use super::registry::{member_value, record_value};
use super::store::{list, Buckets};
use super::users::{Change, UserConn};
use super::{json_error, nats_error, now_ms, telemetry, NatsCluster, SESSION_REPLACED};
use async_nats::jetstream::kv::CreateErrorKind;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use herald_core::{BrokerError, ClusterNode, ConnectionRecord, NodeFigures, RoomName, Tenant};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Registry writes in flight at once when registering many entries.
const PARALLEL: usize = 32;
/// Every this many heartbeats, the node's own entries are checked against
/// what it holds.
const SWEEP_EVERY: u64 = 10;

/// One connection of a snapshot: its record and rooms (name, presence).
pub(super) type Entry = (ConnectionRecord, Vec<(String, bool)>);

/// What the heartbeat remembers between beats.
#[derive(Default)]
struct BeatState {
    /// This node's marker was written at least once.
    registered: bool,
    /// NATS lost this node's entries; set until they are all written back.
    reregister: bool,
    /// Successful beats so far.
    beats: u64,
    /// The last beat failed (log once per outage, not once per beat).
    failing: bool,
}

impl NatsCluster {
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
                Ok(()) => {
                    let beat = self.beat(&*node, &mut state);
                    // Every request is bounded by the command timeout; this
                    // bounds a beat that registers a large node again.
                    match tokio::time::timeout(self.command_timeout * 30, beat).await {
                        Ok(r) => r,
                        Err(_) => Err(BrokerError::Unavailable("heartbeat timed out".into())),
                    }
                }
                Err(e) => {
                    self.forget_guesses();
                    Err(e)
                }
            };
            match result {
                Ok(()) if state.failing => {
                    state.failing = false;
                    tracing::info!("cluster heartbeat restored");
                }
                Ok(()) => {}
                Err(e) => {
                    // The buckets may be gone (NATS restarted without its
                    // store): the next beat opens, or makes, them again.
                    if self.check().is_ok() {
                        self.lost_buckets();
                    }
                    if state.failing {
                        tracing::debug!(error = %e, "cluster heartbeat failed");
                    } else {
                        state.failing = true;
                        tracing::warn!(error = %e, "cluster heartbeat failed");
                    }
                }
            }
        }
    }

    async fn beat(&self, node: &dyn ClusterNode, st: &mut BeatState) -> Result<(), BrokerError> {
        crate::commands::HEARTBEAT
            .time(self.beat_untimed(node, st))
            .await
    }

    async fn beat_untimed(
        &self,
        node: &dyn ClusterNode,
        st: &mut BeatState,
    ) -> Result<(), BrokerError> {
        let _serial = self.beat.lock().await;
        if self.left.load(Ordering::Acquire) {
            return Ok(());
        }
        let b = self.buckets().await?;
        self.enlist(&b, Some(node.figures())).await?;
        // Whichever call wrote the marker (an admission may come first).
        let added = self.marker_written.swap(false, Ordering::AcqRel);
        if added && st.registered {
            // NATS lost its store, or a survivor took this node for dead:
            // write everything back from what the node holds.
            tracing::info!("cluster registry lost this node: registering its connections again");
            st.reregister = true;
        }
        st.registered = true;
        if st.reregister {
            self.reregister(&b, node).await?;
            st.reregister = false;
        }
        self.check_locks(&b, node).await?;
        if self.outbox.is_some() {
            self.retry_unflushed(&b).await?;
        }
        // The first beat clears what a previous process of this id left.
        if st.beats.is_multiple_of(SWEEP_EVERY) {
            self.sweep(&b, node).await?;
        }
        st.beats += 1;
        Ok(())
    }

    /// Renews this node's key in the nodes bucket (with its figures), then
    /// makes sure its marker exists; when the marker was missing (the
    /// node's entries were lost or reaped), says so to the next heartbeat.
    pub(super) async fn enlist(
        &self,
        b: &Buckets,
        figures: Option<NodeFigures>,
    ) -> Result<(), BrokerError> {
        let mut figures = figures.unwrap_or_default();
        figures.node_id = self.node_id.clone();
        let value = Bytes::from(serde_json::to_vec(&figures).map_err(json_error)?);
        // Alive first, marked second: a reaper never sees the marker of a
        // starting node without its node key (and checks again anyway).
        b.nodes
            .put(self.keys.node(&self.node_id), value)
            .await
            .map_err(|e| nats_error("heartbeat", e))?;
        let marker = Bytes::from(self.node_id.clone().into_bytes());
        match b
            .registry
            .create(self.keys.enlisted(&self.node_id), marker)
            .await
        {
            Ok(_) => self.marker_written.store(true, Ordering::Release),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(nats_error("heartbeat", e)),
        }
        self.enlisted.store(true, Ordering::Release);
        Ok(())
    }

    /// Writes every connection of the node back, then writes again whatever
    /// changed locally while the first pass was on its way.
    async fn reregister(&self, b: &Buckets, node: &dyn ClusterNode) -> Result<(), BrokerError> {
        // Room keys may be lost too: listed again by the heartbeat's retry.
        self.rooms_unlisted();
        let first = node.snapshot();
        self.register(b, &first).await?;
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
        self.register(b, &changed).await?;
        // Presence in rooms a changed connection left meanwhile goes.
        let mut left = Vec::new();
        for (rec, rooms) in &changed {
            if let Some((_, old)) = before.get(rec.connection_id.as_str()) {
                for (room, _) in old.iter().filter(|r| !rooms.iter().any(|n| n.0 == r.0)) {
                    if let Ok(name) = RoomName::parse(room) {
                        let key = herald_core::RoomKey::new(rec.tenant.clone(), name);
                        left.push(self.keys.member(&key, &self.node_id, &rec.connection_id));
                    }
                }
            }
        }
        for key in left {
            super::store::purge(&b.registry, &key, None).await?;
        }
        let gone: Vec<ConnectionRecord> = first
            .iter()
            .filter(|e| !now.contains(e.0.connection_id.as_str()))
            .map(|e| e.0.clone())
            .collect();
        self.purge_records(b, &self.node_id, &gone).await
    }

    /// Writes connections: their record, their user's entry (and lock, when
    /// this node holds it and nobody else took it), their presence entries.
    async fn register(&self, b: &Buckets, entries: &[Entry]) -> Result<(), BrokerError> {
        let work: Vec<_> = entries
            .iter()
            .map(|(rec, rooms)| self.register_one(b, rec, rooms))
            .collect();
        let results: Vec<Result<(), BrokerError>> = stream::iter(work)
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn register_one(
        &self,
        b: &Buckets,
        rec: &ConnectionRecord,
        rooms: &[(String, bool)],
    ) -> Result<(), BrokerError> {
        let id = rec.connection_id.as_str();
        let rev = b
            .registry
            .put(self.keys.conn(&self.node_id, id), record_value(rec)?)
            .await
            .map_err(|e| nats_error("registering a connection", e))?;
        self.revisions.lock().insert(id.to_owned(), rev);
        let locked = self.locks.lock().contains_key(id);
        let entry = UserConn {
            node: self.node_id.clone(),
            at: rec.connected_at,
        };
        self.update_user(b, &rec.tenant, &rec.user_id, false, |doc| {
            doc.conns.insert(id.to_owned(), entry.clone());
            if locked && doc.lock.is_none() {
                doc.lock = Some(id.to_owned());
            }
            Change::Write(())
        })
        .await?;
        for (room, _) in rooms.iter().filter(|r| r.1) {
            let Ok(name) = RoomName::parse(room) else {
                continue;
            };
            let key = herald_core::RoomKey::new(rec.tenant.clone(), name);
            b.registry
                .put(
                    self.keys.member(&key, &self.node_id, id),
                    member_value(rec, &key)?,
                )
                .await
                .map_err(|e| nats_error("registering a member", e))?;
        }
        Ok(())
    }

    /// Checks the locks of local exclusive sessions: takes back a lock
    /// nobody holds (NATS lost it), and closes (4010) the sessions whose
    /// lock another connection took, even if the close command sent by the
    /// taker's node never arrived.
    async fn check_locks(&self, b: &Buckets, node: &dyn ClusterNode) -> Result<(), BrokerError> {
        let held: Vec<(String, (Tenant, String))> = self
            .locks
            .lock()
            .iter()
            .map(|(id, who)| (id.clone(), who.clone()))
            .collect();
        let work: Vec<_> = held
            .iter()
            .map(|(id, (tenant, user))| self.check_lock(b, id, tenant, user))
            .collect();
        let results: Vec<_> = stream::iter(work)
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        for result in results {
            let (id, kept) = result?;
            if !kept && self.locks.lock().remove(id.as_str()).is_some() {
                telemetry::lock_lost();
                tracing::info!(connection = %id, "exclusive lock taken over: closing the session");
                node.close_connection(id, SESSION_REPLACED);
            }
        }
        Ok(())
    }

    /// Whether connection `id` still holds the lock in user key `key`
    /// (taking it when nobody does).
    async fn check_lock<'a>(
        &self,
        b: &Buckets,
        id: &'a String,
        tenant: &Tenant,
        user: &str,
    ) -> Result<(&'a String, bool), BrokerError> {
        let kept = self
            .update_user(b, tenant, user, false, |doc| match doc.lock.as_deref() {
                Some(holder) if holder == id => Change::Keep(true),
                Some(_) => Change::Keep(false),
                None => {
                    doc.lock = Some(id.clone());
                    Change::Write(true)
                }
            })
            .await?;
        Ok((id, kept))
    }

    /// Drops this node's entries for connections it no longer holds: a
    /// removal that failed half-way, an admission whose reply was lost, or
    /// a previous process of the same node id.
    async fn sweep(&self, b: &Buckets, node: &dyn ClusterNode) -> Result<(), BrokerError> {
        let wait = self.command_timeout;
        let client = &self.clients.client;
        let conns_filter = self.keys.node_conns(&self.node_id);
        let members_filter = self.keys.node_members(&self.node_id);
        // Members first: a member listed has its record written before it
        // (admission precedes joins), so the records listed next show it
        // unless it is really gone.
        let members = list(client, &b.registry, &members_filter, wait).await?;
        let conns = list(client, &b.registry, &conns_filter, wait).await?;
        if conns.is_empty() && members.is_empty() {
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
        let mut known = HashSet::new();
        for entry in &conns {
            match serde_json::from_slice::<ConnectionRecord>(&entry.value) {
                Ok(r) => {
                    known.insert(r.connection_id.clone());
                    if !held.contains(&r.connection_id)
                        && (r.connected_at < self.started_at || r.connected_at < young)
                    {
                        stale.push(r);
                    }
                }
                Err(_) => {
                    super::store::purge(&b.registry, &entry.key, Some(entry.revision)).await?;
                }
            }
        }
        let stale_ids: HashSet<&str> = stale.iter().map(|r| r.connection_id.as_str()).collect();
        let orphans: Vec<_> = members
            .into_iter()
            .filter(
                |m| match serde_json::from_slice::<super::registry::MemberEntry>(&m.value) {
                    Ok(e) => {
                        let id = e.member.connection_id.as_str();
                        !held.contains(id) && (stale_ids.contains(id) || !known.contains(id))
                    }
                    Err(_) => true,
                },
            )
            .collect();
        if !stale.is_empty() || !orphans.is_empty() {
            tracing::info!(
                connections = stale.len(),
                members = orphans.len(),
                "dropping stale registry entries of this node"
            );
        }
        // A previous process's connections never reported their close;
        // this process's own leftovers did (the node reports its own).
        let lost: Vec<_> = stale
            .iter()
            .filter(|r| r.connected_at < self.started_at)
            .flat_map(|r| self.lost_connection_events(r))
            .collect();
        self.publish_events(&lost).await?;
        self.purge_members(b, &self.node_id, &orphans).await?;
        self.purge_records(b, &self.node_id, &stale).await?;
        // Room keys listing this node without members here (a previous
        // process, a failed write), and room events left pending.
        self.unlist_node(b, &self.node_id).await
    }
}
