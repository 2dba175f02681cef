//! The webhook outbox on JetStream ([`NatsOutbox`]).
//!
//! - Stream `<prefix>-hooks`, subject `<prefix>.hooks`: one message per
//!   event (its JSON), published with `Nats-Msg-Id` = the event's id, file
//!   storage, `broker.nats_replicas` replicas, bounded by `max_age` =
//!   `broker.nats_max_age` and [`MAX_EVENTS`] messages (the oldest go first,
//!   counted in `herald_nats_hooks_lost_total`). Delivered events are
//!   purged, so the stream holds what waits.
//! - The dispatch lease and the cursor (`lease`): only the holder reads
//!   the stream; it reads after the cursor and moves the cursor when the
//!   dispatcher acks.
//! - An idle holder waits for new events on the stream's subject itself (a
//!   core subscription made only while it waits, a doorbell), and reads
//!   them from the stream.
//!
//! The cluster registry publishes its transitions (`user.*`, `room.*`, and
//! a dead node's events) here too, through [`NatsOutbox::publish`].

mod lease;
pub(crate) mod metrics;
mod read;

use crate::names::Names;
use crate::{NatsClients, NatsSettings};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::Store;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DiscardPolicy, Stream};
use async_trait::async_trait;
use herald_core::{BrokerError, HookEvent, Outbox, OutboxEntry};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The most events the outbox stream keeps; past it the oldest go.
pub const MAX_EVENTS: i64 = 10_000_000;
/// How long the stream remembers an event id (`Nats-Msg-Id`), at most its
/// `max_age`: a transition published again within it is stored once.
const DEDUP_WINDOW: Duration = Duration::from_secs(600);

/// A NATS failure of the outbox: the caller retries.
fn hooks_error(what: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("nats webhook outbox, {what}: {e}"))
}

/// The durable webhook outbox of the NATS engine (see the module docs).
pub struct NatsOutbox {
    clients: NatsClients,
    names: Names,
    node_id: String,
    replicas: usize,
    max_age: Duration,
    command_timeout: Duration,
    /// The stream, once found or made; `None` again after an error that
    /// says it may be gone.
    stream: Mutex<Option<Stream>>,
    /// The lease bucket, once opened.
    lease_kv: Mutex<Option<Store>>,
    /// The lease, while this node holds it.
    lease: Mutex<Option<lease::Held>>,
    /// Serializes this node's writes of the lease key.
    lease_write: tokio::sync::Mutex<()>,
    /// Bumped every time this node takes the lease: the reader starts
    /// again from the cursor.
    generation: AtomicU64,
    /// The holder's reading position and doorbell.
    reader: tokio::sync::Mutex<Option<read::Reader>>,
    /// The stream's last sequence when the holder last looked.
    last_seq: AtomicU64,
}

impl NatsOutbox {
    /// The outbox of the node of `settings`; `max_age` bounds the stream
    /// (`broker.nats_max_age`).
    pub fn new(clients: NatsClients, settings: &NatsSettings, max_age: Duration) -> Arc<Self> {
        metrics::describe();
        Arc::new(Self {
            clients,
            names: Names::new(&settings.prefix),
            node_id: settings.node_id.clone(),
            replicas: settings.replicas,
            max_age,
            command_timeout: settings.command_timeout.max(Duration::from_millis(100)),
            stream: Mutex::new(None),
            lease_kv: Mutex::new(None),
            lease: Mutex::new(None),
            lease_write: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            reader: tokio::sync::Mutex::new(None),
            last_seq: AtomicU64::new(0),
        })
    }

    /// Starts the lease task (taking the lease when free, renewing it while
    /// held, giving it back when `cancel` fires).
    pub fn spawn(self: &Arc<Self>, cancel: CancellationToken, tasks: &TaskTracker) {
        tasks.spawn(self.clone().lease_loop(cancel));
    }

    fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.names.hooks_stream(),
            description: Some("Herald's webhook outbox (events waiting for delivery)".into()),
            subjects: vec![self.names.hooks_subject()],
            storage: stream::StorageType::File,
            num_replicas: self.replicas.max(1),
            max_age: self.max_age,
            max_messages: MAX_EVENTS,
            discard: DiscardPolicy::Old,
            duplicate_window: DEDUP_WINDOW.min(self.max_age),
            allow_direct: true,
            ..Default::default()
        }
    }

    /// The stream, found or made on first use and after it was lost.
    async fn stream(&self) -> Result<Stream, BrokerError> {
        if !self.clients.is_connected() {
            return Err(BrokerError::Unavailable("nats is not connected".into()));
        }
        if let Some(s) = self.stream.lock().clone() {
            return Ok(s);
        }
        let js = &self.clients.jetstream;
        let name = self.names.hooks_stream();
        let stream = match js.get_stream(&name).await {
            Ok(s) => s,
            Err(_) => match js.create_stream(self.stream_config()).await {
                Ok(s) => {
                    tracing::info!(stream = %name, "created the webhook outbox stream");
                    s
                }
                // Another node may have made it meanwhile.
                Err(create) => js
                    .get_stream(&name)
                    .await
                    .map_err(|_| hooks_error("creating the stream", create))?,
            },
        };
        *self.stream.lock() = Some(stream.clone());
        Ok(stream)
    }

    /// Forgets the stream after an error that may mean it is gone.
    fn stream_lost(&self) {
        *self.stream.lock() = None;
    }

    /// The stream's first sequence (the next event to deliver when nobody
    /// holds a cursor): acked events are purged.
    async fn first_sequence(&self) -> Result<u64, BrokerError> {
        let stream = self.stream().await?;
        let info = stream.get_info().await.map_err(|e| {
            self.stream_lost();
            hooks_error("reading the stream", e)
        })?;
        Ok(info.state.first_sequence.max(1))
    }

    /// Appends `events` durably, in order: published one after another on
    /// the node's connection (which keeps their order), then every ack
    /// awaited. An event id already stored within the duplicate window is
    /// stored once.
    pub async fn publish(&self, events: &[HookEvent]) -> Result<(), BrokerError> {
        crate::commands::OUTBOX_APPEND
            .time(self.publish_untimed(events))
            .await
    }

    async fn publish_untimed(&self, events: &[HookEvent]) -> Result<(), BrokerError> {
        if events.is_empty() {
            return Ok(());
        }
        // The stream must exist, or the publishes go nowhere.
        self.stream().await?;
        let subject = self.names.hooks_subject();
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let message = PublishMessage::build()
                .payload(event.to_bytes())
                .message_id(&event.id);
            let sent = self
                .clients
                .jetstream
                .send_publish(subject.clone(), message)
                .await
                .map_err(|e| hooks_error("appending", e))?;
            acks.push(sent);
        }
        for ack in acks {
            match ack.await {
                Ok(_) => {}
                Err(e) => {
                    if matches!(
                        e.kind(),
                        PublishErrorKind::StreamNotFound | PublishErrorKind::BrokenPipe
                    ) {
                        self.stream_lost();
                    }
                    return Err(hooks_error("appending", e));
                }
            }
        }
        Ok(())
    }

    /// Moves the cursor past `entries` and purges them from the stream;
    /// nothing when this node no longer holds the lease (the next holder
    /// sends them again: at least once).
    async fn acknowledge(&self, entries: &[OutboxEntry]) -> Result<(), BrokerError> {
        crate::commands::OUTBOX_ACK
            .time(self.acknowledge_untimed(entries))
            .await
    }

    async fn acknowledge_untimed(&self, entries: &[OutboxEntry]) -> Result<(), BrokerError> {
        let mut last = 0;
        for e in entries {
            let seq: u64 = e.cursor.parse().map_err(|_| {
                BrokerError::Internal(format!("`{}` is not a NATS outbox cursor", e.cursor))
            })?;
            last = last.max(seq);
        }
        if last == 0 {
            return Ok(());
        }
        if !self.advance(last).await? {
            tracing::debug!("acked after losing the dispatch lease; the next holder sends again");
            return Ok(());
        }
        let stream = self.stream().await?;
        let purged = stream.purge().sequence(last + 1).await;
        if let Err(e) = purged {
            // The cursor holds; the next purge takes these too.
            tracing::debug!(error = %e, "purging delivered webhook events failed");
        }
        Ok(())
    }
}

#[async_trait]
impl Outbox for NatsOutbox {
    async fn append(&self, events: &[HookEvent]) -> Result<(), BrokerError> {
        tokio::time::timeout(self.command_timeout * 2, self.publish(events))
            .await
            .unwrap_or_else(|_| Err(hooks_error("appending", "timed out")))
    }

    async fn next_batch(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<OutboxEntry>, BrokerError> {
        self.read_batch(max, wait).await
    }

    async fn ack(&self, entries: &[OutboxEntry]) -> Result<(), BrokerError> {
        tokio::time::timeout(self.command_timeout * 2, self.acknowledge(entries))
            .await
            .unwrap_or_else(|_| Err(hooks_error("acking", "timed out")))
    }

    /// Known to the lease holder only: events after the cursor.
    fn backlog(&self) -> Option<u64> {
        self.held().map(|h| {
            self.last_seq
                .load(Ordering::Relaxed)
                .saturating_sub(h.cursor)
        })
    }
}
