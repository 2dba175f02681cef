//! Webhook emission from the node (see [`herald_core::hooks`] for the
//! kinds and who emits what).
//!
//! Emission never blocks a connection: events go into a bounded channel
//! (with `try_send`, so it can happen under the registry's and the rooms'
//! locks, which is what keeps `user.*`, `room.*` and a room's `member.*`
//! in the order of the transitions themselves), and one writer task per
//! node appends them to the engine's outbox in that order, retrying a
//! failed append. A full channel drops the event, counted in
//! `herald_webhook_events_dropped_total{reason="queue_full"}` and logged.
//! With webhooks off every call is one bit test.

use crate::conn::Connection;
use crate::node::Node;
use herald_core::hooks::SentMessage;
use herald_core::{ConnectionRecord, HookEvent, HookKind, HookSet, Outbox, RoomKey};
use herald_protocol::StreamPosition;
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Events waiting between the node and its outbox writer; beyond, events
/// are dropped and counted (the writer is behind a failing outbox).
const QUEUE_CAPACITY: usize = 65_536;

/// Events the writer appends in one call at most.
const APPEND_BATCH: usize = 1024;

/// How long `connection.closed` may wait to be durable before the node
/// removes the record anyway (a cluster engine whose store is down).
const CLOSE_FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// First and longest pause between attempts of a failed append.
const RETRY_START: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(5);

enum Item {
    Event(HookEvent),
    /// Answered once everything queued before it was appended.
    Flush(oneshot::Sender<()>),
}

/// The node's handle for emitting webhook events. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Emitter {
    set: HookSet,
    tx: Option<mpsc::Sender<Item>>,
    node_id: Arc<str>,
    drops: Arc<DropLog>,
}

/// Logs dropped events at most once a second (a full queue drops many),
/// each line with one event's id and type and how many went unlogged.
#[derive(Default)]
struct DropLog {
    last_ms: AtomicU64,
    unlogged: AtomicU64,
}

impl DropLog {
    fn log(&self, event: &HookEvent, reason: &'static str) {
        let now = herald_core::hooks::now_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= 1000
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if !due {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let also = self.unlogged.swap(0, Ordering::Relaxed);
        tracing::warn!(id = %event.id, r#type = event.kind.as_str(), reason, also_dropped = also, "webhook event dropped");
    }
}

/// The writer's end of an [`Emitter`]'s channel, until the writer starts.
pub(crate) struct EmitterQueue(mpsc::Receiver<Item>);

impl Emitter {
    /// Webhooks off: every call does nothing.
    pub(crate) fn off(node_id: Arc<str>) -> Self {
        Self {
            set: HookSet::empty(),
            tx: None,
            node_id,
            drops: Arc::default(),
        }
    }

    /// An emitter of the kinds in `set` with its queue; `None` for the
    /// queue when `set` is empty.
    pub(crate) fn new(set: HookSet, node_id: Arc<str>) -> (Self, Option<EmitterQueue>) {
        if set.is_empty() {
            return (Self::off(node_id), None);
        }
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let emitter = Self {
            set,
            tx: Some(tx),
            node_id,
            drops: Arc::default(),
        };
        (emitter, Some(EmitterQueue(rx)))
    }

    /// The same emitter without the kinds outside `keep` (a cluster engine
    /// emits `user.*` and `room.*` itself).
    pub(crate) fn restricted(&self, keep: HookSet) -> Self {
        let set: HookSet = self.set.iter().filter(|k| keep.contains(*k)).collect();
        Self {
            set,
            tx: self.tx.clone(),
            node_id: self.node_id.clone(),
            drops: self.drops.clone(),
        }
    }

    /// Whether `kind` is emitted: check before building an event.
    pub(crate) fn wants(&self, kind: HookKind) -> bool {
        self.set.contains(kind)
    }

    /// Queues `event` without waiting.
    pub(crate) fn emit(&self, event: HookEvent) {
        let Some(tx) = &self.tx else {
            return;
        };
        if let Err(e) = tx.try_send(Item::Event(event)) {
            let (reason, item) = match e {
                mpsc::error::TrySendError::Full(item) => ("queue_full", item),
                mpsc::error::TrySendError::Closed(item) => ("shutdown", item),
            };
            metrics::counter!("herald_webhook_events_dropped_total", "reason" => reason)
                .increment(1);
            if let Item::Event(event) = item {
                self.drops.log(&event, reason);
            }
        }
    }

    /// Waits (at most `deadline`) until everything emitted so far is in the
    /// outbox; false when it did not get there in time.
    pub(crate) async fn flush(&self, deadline: Duration) -> bool {
        let Some(tx) = &self.tx else {
            return true;
        };
        let (done, wait) = oneshot::channel();
        let sent = tokio::time::timeout(deadline, async {
            tx.send(Item::Flush(done)).await.is_ok() && wait.await.is_ok()
        });
        sent.await.unwrap_or(false)
    }

    /// The record an event reports for `conn` (its rooms are not needed).
    pub(crate) fn record(&self, conn: &Connection) -> ConnectionRecord {
        ConnectionRecord {
            connection_id: conn.id.to_string(),
            tenant: conn.tenant.clone(),
            user_id: conn.user_id.to_string(),
            node_id: self.node_id.to_string(),
            transport: conn.transport.name.to_owned(),
            rooms: Vec::new(),
            connected_at: conn.connected_at_ms,
        }
    }

    /// `user.online` when `conn` is its user's first connection.
    pub(crate) fn user_online(&self, conn: &Connection) {
        if self.wants(HookKind::UserOnline) {
            self.emit(HookEvent::user_online(&conn.tenant, &conn.user_id));
        }
    }

    /// `user.offline` when `conn` was its user's last connection.
    pub(crate) fn user_offline(&self, conn: &Connection) {
        if self.wants(HookKind::UserOffline) {
            self.emit(HookEvent::user_offline(&conn.tenant, &conn.user_id));
        }
    }

    /// `room.occupied` (when `created`) then `member.joined`.
    pub(crate) fn joined(&self, room: &RoomKey, conn: &Connection, created: bool) {
        if created && self.wants(HookKind::RoomOccupied) {
            self.emit(HookEvent::room_occupied(room));
        }
        if self.wants(HookKind::MemberJoined) {
            self.emit(HookEvent::member_joined(room, &self.record(conn)));
        }
    }

    /// `member.left` then `room.vacated` (when `emptied`).
    pub(crate) fn left(&self, room: &RoomKey, conn: &Connection, emptied: bool) {
        if self.wants(HookKind::MemberLeft) {
            self.emit(HookEvent::member_left(room, &self.record(conn)));
        }
        if emptied && self.wants(HookKind::RoomVacated) {
            self.emit(HookEvent::room_vacated(room));
        }
    }
}

/// A client message to report as `message.sent` once it is published.
pub(crate) struct PendingMessage {
    room: RoomKey,
    event: String,
    data: Box<RawValue>,
}

impl Node {
    /// `connection.opened` for a connection just admitted.
    pub(crate) fn hook_opened(&self, conn: &Connection) {
        let hooks = &self.inner.hooks;
        if hooks.wants(HookKind::ConnectionOpened) {
            hooks.emit(HookEvent::connection_opened(&hooks.record(conn)));
        }
    }

    /// `connection.closed` for a session ending with `reason`: the close
    /// code the server sent, else 1000 for a client that closed and 1006
    /// for a connection lost. On a cluster it waits (boundedly) until the
    /// event is durable, so it is in the outbox before the record leaves
    /// the registry (a node dying between the two loses nothing).
    pub(crate) async fn hook_closed(&self, conn: &Connection, reason: &str) {
        let hooks = &self.inner.hooks;
        if !hooks.wants(HookKind::ConnectionClosed) {
            return;
        }
        let code = conn.queue.closing().map_or(
            if reason == "client_closed" {
                1000
            } else {
                1006
            },
            |c| c.code(),
        );
        hooks.emit(HookEvent::connection_closed(
            &hooks.record(conn),
            code,
            reason,
        ));
        if self.inner.cluster.is_some() && !hooks.flush(CLOSE_FLUSH_DEADLINE).await {
            tracing::warn!(connection_id = %conn.id, "connection.closed not durable in time; removing the record anyway");
        }
    }

    /// What `message.sent` needs, kept only when it is emitted.
    pub(crate) fn hook_message(
        &self,
        room: &RoomKey,
        event: &str,
        data: &RawValue,
    ) -> Option<PendingMessage> {
        self.inner
            .hooks
            .wants(HookKind::MessageSent)
            .then(|| PendingMessage {
                room: room.clone(),
                event: event.to_owned(),
                data: data.to_owned(),
            })
    }

    /// `message.sent` for a client message published at `position`.
    pub(crate) fn hook_message_sent(
        &self,
        pending: PendingMessage,
        conn: &Connection,
        position: &StreamPosition,
    ) {
        self.inner.hooks.emit(HookEvent::message_sent(SentMessage {
            room: &pending.room,
            event: &pending.event,
            user_id: &conn.user_id,
            connection_id: &conn.id,
            epoch: &position.epoch,
            offset: position.offset,
            data: &pending.data,
        }));
    }
}

/// Starts the writer that appends `queue` to `outbox`, on `tasks`; on
/// `cancel` it appends what is queued, then stops.
pub(crate) fn spawn_writer(
    queue: EmitterQueue,
    outbox: Arc<dyn Outbox>,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) {
    let EmitterQueue(mut rx) = queue;
    tasks.spawn(async move {
        let mut items = Vec::with_capacity(APPEND_BATCH);
        loop {
            tokio::select! {
                biased;
                n = rx.recv_many(&mut items, APPEND_BATCH) => {
                    if n == 0 {
                        return;
                    }
                }
                _ = cancel.cancelled() => {
                    while let Ok(item) = rx.try_recv() {
                        items.push(item);
                    }
                    write(std::mem::take(&mut items), &*outbox, None).await;
                    return;
                }
            }
            write(std::mem::take(&mut items), &*outbox, Some(&cancel)).await;
        }
    });
}

/// Appends the events of `items` in order, retrying with backoff until it
/// works or `cancel` fires (once only when `cancel` is `None`), then
/// answers the flushes.
async fn write(items: Vec<Item>, outbox: &dyn Outbox, cancel: Option<&CancellationToken>) {
    let mut events = Vec::with_capacity(items.len());
    let mut flushes = Vec::new();
    for item in items {
        match item {
            Item::Event(e) => events.push(e),
            Item::Flush(done) => flushes.push(done),
        }
    }
    let mut pause = RETRY_START;
    while !events.is_empty() {
        let error = match outbox.append(&events).await {
            Ok(()) => break,
            Err(e) => e,
        };
        metrics::counter!("herald_webhook_append_failures_total").increment(1);
        let Some(cancel) = cancel.filter(|c| !c.is_cancelled()) else {
            tracing::warn!(error = %error, dropped = events.len(), ids = ?events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), "webhook events could not be appended at shutdown");
            metrics::counter!("herald_webhook_events_dropped_total", "reason" => "append_failed")
                .increment(events.len() as u64);
            break;
        };
        tracing::warn!(error = %error, events = events.len(), retry_in = ?pause, "webhook outbox append failed; retrying");
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(RETRY_CAP);
    }
    for done in flushes {
        let _ = done.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_broker_memory::MemoryOutbox;
    use herald_core::Tenant;

    fn online(user: &str) -> HookEvent {
        HookEvent::user_online(&Tenant::default_tenant(), user)
    }

    #[tokio::test]
    async fn events_reach_the_outbox_in_order_and_flush_waits_for_them() {
        let (emitter, queue) = Emitter::new(HookSet::all(), Arc::from("n1"));
        let outbox = Arc::new(MemoryOutbox::default());
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        spawn_writer(
            queue.expect("a queue when kinds are on"),
            outbox.clone(),
            cancel.clone(),
            &tasks,
        );
        for user in ["a", "b", "c"] {
            emitter.emit(online(user));
        }
        assert!(emitter.flush(Duration::from_secs(5)).await);
        let batch = outbox
            .next_batch(10, Duration::from_millis(10))
            .await
            .expect("batch");
        let users: Vec<String> = batch
            .iter()
            .map(|e| {
                let v: serde_json::Value = serde_json::from_slice(&e.body).expect("json");
                v["user_id"].as_str().unwrap_or_default().to_owned()
            })
            .collect();
        assert_eq!(users, ["a", "b", "c"]);
        cancel.cancel();
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .expect("the writer stops on cancel");
    }

    #[tokio::test]
    async fn a_full_queue_drops_without_waiting_and_flush_gives_up_at_its_deadline() {
        let (emitter, _queue) = Emitter::new(HookSet::all(), Arc::from("n1"));
        // No writer: the queue fills, and emitting past it returns at once.
        for i in 0..QUEUE_CAPACITY + 10 {
            emitter.emit(online(&i.to_string()));
        }
        assert!(!emitter.flush(Duration::from_millis(50)).await);
    }

    #[test]
    fn off_and_restricted_emitters_want_only_their_kinds() {
        let off = Emitter::off(Arc::from("n1"));
        assert!(HookKind::ALL.iter().all(|k| !off.wants(*k)));
        let (all, _) = Emitter::new(HookSet::all(), Arc::from("n1"));
        let cluster = all.restricted(crate::engine::cluster_node_kinds());
        assert!(cluster.wants(HookKind::MemberJoined));
        assert!(cluster.wants(HookKind::ConnectionClosed));
        assert!(!cluster.wants(HookKind::UserOnline));
        assert!(!cluster.wants(HookKind::RoomVacated));
    }
}
