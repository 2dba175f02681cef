//! The NATS broker engine (its design is documented on [`NatsBroker`]):
//! `publish` takes offsets, `read` serves positions and history, `reader`
//! holds the rooms' subscriptions and feeds the in-order delivery (counted
//! subscriptions and ordering are `herald_engine_kit`'s), `setup` ensures
//! the stream, `epoch` the engine epoch, `purge` bounds storage.

mod epoch;
mod error;
mod message;
mod metrics;
mod publish;
mod purge;
mod read;
mod reader;
mod setup;

use crate::names::Names;
use crate::{wire, NatsClients, NatsSettings};
use async_nats::jetstream::{kv, stream};
use async_trait::async_trait;
use error::{internal, no_stream, not_connected};
use futures_util::FutureExt;
use herald_core::{
    Broker, BrokerError, BrokerStats, HistoryPage, PresenceChange, PresenceSink, PublicationSink,
    PublishOutcome, PublishRequest, RoomKey,
};
use herald_engine_kit::ordered::Workers;
use herald_engine_kit::rooms::{NewEpoch, Rooms};
use herald_protocol::StreamPosition;
use parking_lot::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The stream's limits (from the settings).
#[derive(Debug, Clone, Copy)]
struct Limits {
    replicas: usize,
    max_age: Duration,
}

/// Rooms' streams on JetStream, delivered to the nodes listening to each
/// room on its own subject.
///
/// - One stream, `<prefix>-rooms`, holds every room's events, one subject
///   per room (`<prefix>.room.<room token>`). A message's body is the
///   publisher's data verbatim; its offset and epoch are the headers
///   `Herald-Offset` and `Herald-Epoch`, the rest one JSON header.
/// - Offsets: a publish sets `Nats-Expected-Last-Subject-Sequence` to the
///   stream sequence of the room's last message, so exactly one publisher
///   gets each offset; the others re-read and retry (see `publish`). A room
///   without messages starts at offset 1 in the engine epoch (`epoch`).
/// - Delivery: the stream republishes every stored message to
///   `<prefix>.deliver.<room token>`; a node holds one core subscription
///   per listened room there (counted), and one reader delivers each room
///   in offset order, once: it drops duplicates, fills gaps from the
///   stream, and catches up after a reconnect or a slow-consumer drop. The
///   reader only queues; socket writes run on their own tasks.
/// - Presence changes go on the same delivery subject (core publish), so
///   they keep their order with the room's publications.
/// - History is the room's stored messages with the policy of its last
///   message applied on read (`read`); storage is bounded by the stream's
///   `max_age` and a periodic purge (`purge`).
/// - Idempotency keys are `Nats-Msg-Id`s (tenant and key) within the
///   stream's duplicate window (5 minutes).
/// - While the connection is down, or the stream is not there, calls
///   answer `Unavailable` at once; a setup task re-creates the stream when
///   it is lost (a new engine epoch then).
///
/// [`Broker::stats`] reports the rooms this node listens to as `streams`
/// (history lives in NATS) and the entries this node's publishes trimmed.
pub struct NatsBroker {
    clients: NatsClients,
    names: Names,
    node_id: String,
    limits: Limits,
    sink: Arc<dyn PublicationSink>,
    presence_sink: Arc<dyn PresenceSink>,
    rooms: Rooms<reader::Live>,
    /// Per-room publish state (last message, trims, purge checkpoints).
    published: publish::Published,
    trimmed: publish::Trimmed,
    /// Publish attempts lost to another publisher of the room.
    retries: std::sync::atomic::AtomicU64,
    /// The rooms' stream, for direct gets and purges.
    stream: Option<stream::Stream<()>>,
    stream_ready: AtomicBool,
    /// Why the last ensure of the stream failed (for `unavailable`
    /// answers while it is not ready).
    setup_error: Mutex<Option<String>>,
    setup_wake: tokio::sync::Notify,
    epoch_kv: Mutex<Option<kv::Store>>,
    /// The engine epoch and until when this node may use it unchecked.
    engine_epoch: Mutex<Option<(String, Instant)>>,
    /// Where room subscriptions forward their messages (to the reader).
    deliveries: reader::DeliverySender,
    /// Taken by [`NatsBroker::spawn`].
    receivers: Mutex<Option<reader::Receivers>>,
    /// The node's tasks and cancellation, set by [`NatsBroker::spawn`]
    /// (room subscriptions run on them).
    workers: OnceLock<Workers>,
}

impl NatsBroker {
    /// A broker over `clients`, delivering publications to `sink` and other
    /// nodes' presence changes to `presence_sink`; the stream keeps
    /// messages `max_age` (`broker.nats_max_age`). Nothing runs until
    /// [`NatsBroker::spawn`].
    pub fn new(
        clients: NatsClients,
        settings: &NatsSettings,
        max_age: Duration,
        sink: Arc<dyn PublicationSink>,
        presence_sink: Arc<dyn PresenceSink>,
    ) -> Arc<Self> {
        metrics::describe();
        crate::commands::register();
        let names = Names::new(&settings.prefix);
        // No I/O: a handle by name, valid across re-creations.
        let stream = clients
            .jetstream
            .get_stream_no_info(names.rooms_stream())
            .now_or_never()
            .and_then(Result::ok);
        let (deliveries, receivers) = reader::Receivers::new(&clients);
        Arc::new(Self {
            names,
            node_id: settings.node_id.clone(),
            limits: Limits {
                replicas: settings.replicas.max(1),
                max_age,
            },
            sink,
            presence_sink,
            rooms: Rooms::new(NewEpoch::AlwaysGap),
            published: publish::Published::default(),
            trimmed: publish::Trimmed::default(),
            retries: std::sync::atomic::AtomicU64::new(0),
            stream,
            stream_ready: AtomicBool::new(false),
            setup_error: Mutex::new(None),
            setup_wake: tokio::sync::Notify::new(),
            epoch_kv: Mutex::new(None),
            engine_epoch: Mutex::new(None),
            deliveries,
            receivers: Mutex::new(Some(receivers)),
            workers: OnceLock::new(),
            clients,
        })
    }

    /// Starts the engine's tasks on `tasks`, stopping on `cancel`: the
    /// setup task (ensures the stream, retrying while NATS is away), the
    /// reader, and the storage bound. Call it once; later calls do nothing.
    pub fn spawn(self: &Arc<Self>, cancel: CancellationToken, tasks: &TaskTracker) {
        let Some(receivers) = self.receivers.lock().take() else {
            tracing::warn!("NatsBroker::spawn called twice; the reader already runs");
            return;
        };
        let workers = Workers::new(tasks.clone(), cancel.clone());
        let _ = self.workers.set(workers.clone());
        tasks.spawn(setup::run(self.clone(), cancel.clone()));
        tasks.spawn(purge::run(self.clone(), cancel));
        tasks.spawn(reader::run(self.clone(), receivers, workers));
    }

    /// Tells the other nodes listening to `change.room` about a presence
    /// change, on the room's delivery subject (in order with its
    /// publications); their readers hand it to their presence sink.
    pub async fn announce(&self, change: &PresenceChange) -> Result<(), BrokerError> {
        if !self.clients.is_connected() {
            return Err(not_connected());
        }
        let (headers, body) = wire::encode_presence(change);
        let subject = self.names.delivery_subject(&change.room);
        crate::commands::PRESENCE_PUBLISH
            .time(
                self.clients
                    .client
                    .publish_with_headers(subject, headers, body),
            )
            .await
            .map_err(|e| error::unavailable("announce", e))
    }

    /// Publish attempts this node retried because another publisher took
    /// the room's next offset first (also the metric
    /// `herald_nats_publish_retries_total`).
    pub fn publish_retries(&self) -> u64 {
        self.retries.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The stream handle, while the stream is known to be there.
    fn stream_handle(&self) -> Result<&stream::Stream<()>, BrokerError> {
        if !self.stream_ready() {
            return Err(self.not_ready());
        }
        self.stream
            .as_ref()
            .ok_or_else(|| internal("stream", "invalid stream name"))
    }

    /// The answer while the stream is not ready, with why when known.
    fn not_ready(&self) -> BrokerError {
        match &*self.setup_error.lock() {
            Some(why) => BrokerError::Unavailable(format!("the rooms' stream is not ready: {why}")),
            None => no_stream(),
        }
    }

    /// Drops what the node knows of rooms' last messages and the engine
    /// epoch (after a reconnect, or when the stream was lost).
    fn forget_caches(&self) {
        self.published.forget_all();
        self.forget_engine_epoch();
    }

    /// Starts listening to a room not listened to: reads the position
    /// first (delivery starts after it; publications between that read and
    /// the subscription are filled from the stream), then subscribes.
    async fn listen(&self, room: &RoomKey) -> Result<CancellationToken, BrokerError> {
        let workers = self
            .workers
            .get()
            .ok_or_else(|| internal("subscribe", "the engine is not started"))?;
        let page = self.read(room, 0, 0).await?;
        self.rooms.set_baseline(room, page.position);
        self.subscribe_subject(room, workers).await
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn publish(&self, request: PublishRequest) -> Result<PublishOutcome, BrokerError> {
        let result = self.publish_once(request).await;
        match &result {
            Err(BrokerError::Unavailable(_)) => metrics::publish_failed("unavailable"),
            Err(BrokerError::Internal(_)) => metrics::publish_failed("internal"),
            _ => {}
        }
        result
    }

    /// Counted: returns once the room's subscription is live on the server
    /// (a round trip), even when a concurrent call started it. On error the
    /// count is not kept.
    async fn subscribe(&self, room: &RoomKey) -> Result<(), BrokerError> {
        self.check_ready()?;
        let gate = self.rooms.join(room);
        let mut live = gate.lock().await;
        if live.is_some() {
            return Ok(());
        }
        match self.listen(room).await {
            Ok(stop) => {
                *live = Some(stop);
                Ok(())
            }
            Err(e) => {
                self.rooms.undo_join(room, &gate);
                Err(e)
            }
        }
    }

    /// Counted: the subscription ends when the last count goes.
    async fn unsubscribe(&self, room: &RoomKey) -> Result<(), BrokerError> {
        let Some(gate) = self.rooms.leave(room) else {
            return Ok(());
        };
        let mut live = gate.lock().await;
        // A subscribe may have come in since the count reached zero.
        if !self.rooms.is_idle(room, &gate) {
            return Ok(());
        }
        if let Some(stop) = live.take() {
            stop.cancel();
        }
        self.rooms.forget_if_idle(room, &gate);
        Ok(())
    }

    async fn position(&self, room: &RoomKey) -> Result<StreamPosition, BrokerError> {
        Ok(self.read(room, 0, 0).await?.position)
    }

    /// At most 10 000 publications per page (a cut page is incomplete).
    async fn history(
        &self,
        room: &RoomKey,
        since: u64,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        Ok(self.read(room, since, limit).await?.into_history(since))
    }

    fn is_ready(&self) -> bool {
        self.clients.is_connected() && self.stream_ready()
    }

    fn stats(&self) -> BrokerStats {
        BrokerStats {
            streams: self.rooms.listened_count(),
            stored_events: 0,
            stored_bytes: 0,
            trimmed: self.trimmed.snapshot(),
        }
    }
}
