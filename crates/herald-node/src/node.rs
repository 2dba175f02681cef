//! The node: what transports and the HTTP API call into.

use crate::admission::{evict, Admission, Registry};
use crate::conn::Connection;
use crate::error::NodeError;
use crate::limits::Limits;
use crate::metrics;
use crate::queue::{Outbound, PositionChange, SendQueue, SocketWriter};
use crate::rate::UserRates;
use crate::rooms::Rooms;
use crate::session::Session;
use crate::transport::Transport;
use herald_core::{AccessProxy, CredentialContext, Verified};
use herald_core::{
    Broker, Cluster, Engine, EngineShutdown, HistoryPolicy, HookSet, Identity, LocalPresence,
    Namespaces, Presence, PublicationSink, PublishOutcome, PublishRequest, RoomKey, RoomName,
    Tenant, TokenVerifier, VerifyError,
};
use herald_protocol::{
    ClientCodec, CloseCode, JoinedRoom, RequestId, ServerFrame, StreamPosition, HERALD_JSON,
};
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Live events a joining connection may buffer per room while its join
/// (and replay) completes, when `limits.send_queue_messages` is smaller;
/// beyond, it is cut as a slow consumer (4011).
pub(crate) const JOIN_BUFFER_FLOOR: usize = 1024;

/// What a node needs to know.
#[derive(Clone)]
pub struct NodeSettings {
    /// This node's id.
    pub node_id: String,
    /// Asks the backend about `proxy` rules and forwards `rpc` frames;
    /// `None`: `proxy` rules deny and `rpc` is not enabled.
    pub access_proxy: Option<Arc<dyn AccessProxy>>,
    /// Limits applied to connections.
    pub limits: Limits,
    /// Namespace rules.
    pub namespaces: Namespaces,
    /// The webhook kinds to emit (`webhooks.events`; empty: webhooks off).
    /// Needs an engine with an outbox ([`Node::start`]); [`Node::new`] has
    /// none and emits nothing.
    pub hooks: HookSet,
}

impl std::fmt::Debug for NodeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSettings")
            .field("node_id", &self.node_id)
            .field("limits", &self.limits)
            .field("namespaces", &self.namespaces)
            .field("access_proxy", &self.access_proxy.is_some())
            .finish_non_exhaustive()
    }
}

/// How a session opens.
#[derive(Debug, Default)]
pub struct OpenOptions {
    /// The `authenticate` request being answered, when the token came in a frame.
    pub reply_to: Option<RequestId>,
    /// Positions to resume auto-joined rooms from (SSE `Last-Event-ID`).
    pub resume: HashMap<RoomName, StreamPosition>,
    /// Queue a `room_joined` per auto-joined room after `authenticated`
    /// (SSE streams announce every room).
    pub announce_rooms: bool,
    /// Event filter to start with instead of `*`.
    pub events: Option<Vec<String>>,
    /// Writes the connection's frames straight to its socket as they are
    /// queued (WebSocket); without one the transport drains the queue.
    pub writer: Option<Arc<dyn SocketWriter>>,
    /// How the connection's frames are encoded; Herald JSON when `None`.
    pub codec: Option<&'static dyn ClientCodec>,
    /// Extra rooms the backend asked this connection to join
    /// ([`Verified::rooms`]): joined after the auto-join rooms, like them,
    /// without namespace rules (the backend decided); invalid names are
    /// skipped with a warning.
    pub rooms: Vec<String>,
}

/// One event to publish through the HTTP API.
#[derive(Debug, Clone)]
pub struct PublishInput {
    /// Tenant of the room.
    pub tenant: Tenant,
    /// Room name as given.
    pub room: String,
    /// Event name.
    pub event: String,
    /// Payload.
    pub data: Box<RawValue>,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
    /// Connection that must not receive the event.
    pub exclude_connection: Option<String>,
    /// Never dropped or conflated under backpressure (also when the
    /// namespace lists the event name in `critical_events`).
    pub critical: bool,
    /// Supersedes queued events of the room with the same key in a
    /// `conflate` namespace (checked with
    /// [`herald_core::priority::check_conflation_key`]).
    pub conflation_key: Option<String>,
}

/// Per-node figures for `/api/v1/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSummary {
    /// Node id.
    pub node_id: String,
    /// Open connections.
    pub connections: usize,
    /// Distinct users connected.
    pub users: usize,
    /// Rooms with local members.
    pub rooms: usize,
}

/// Figures for `/api/v1/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStats {
    /// Open connections (cluster total).
    pub connections: usize,
    /// Distinct users (cluster total).
    pub users: usize,
    /// Rooms with members (cluster total).
    pub rooms: usize,
    /// Per node.
    pub nodes: Vec<NodeSummary>,
    /// Broker engine and its history figures (an extension).
    pub broker: BrokerSummary,
}

/// Broker figures in stats.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerSummary {
    /// Engine kind.
    pub kind: &'static str,
    /// Streams held.
    pub streams: usize,
    /// Events held in history.
    pub history_events: usize,
    /// Approximate bytes held by history.
    pub history_bytes: usize,
}

pub(crate) struct Inner {
    pub(crate) node_id: Arc<str>,
    pub(crate) limits: Limits,
    pub(crate) namespaces: Namespaces,
    /// The only token claims connections keep: those `claim:` rules read.
    rule_claims: std::collections::BTreeSet<String>,
    pub(crate) broker: Arc<dyn Broker>,
    /// The cluster registry; `None` on a node that runs alone.
    pub(crate) cluster: Option<Arc<dyn Cluster>>,
    /// Presence announcements and member lists (the engine's).
    pub(crate) presence: Arc<dyn Presence>,
    /// The engine's shutdown step, taken by [`Node::shutdown_engine`].
    pub(crate) engine_shutdown: parking_lot::Mutex<Option<EngineShutdown>>,
    verifier: Arc<dyn TokenVerifier>,
    /// The backend behind `proxy` rules and `rpc` frames, when configured.
    pub(crate) access_proxy: Option<Arc<dyn AccessProxy>>,
    pub(crate) rooms: Arc<Rooms>,
    /// Publishes and deliveries by namespace and event name.
    pub(crate) events: Arc<metrics::EventCounters>,
    pub(crate) registry: Registry,
    /// Webhook emission (off when no kind is configured).
    pub(crate) hooks: crate::hooks::Emitter,
    /// The engine's webhook outbox, for the dispatcher.
    outbox: Option<Arc<dyn herald_core::Outbox>>,
    pub(crate) clock: Instant,
    /// Socket counts for `max_connections` and the pre-auth and per-IP caps.
    pub(crate) slots: crate::slots::Slots,
    /// Per-user budget for opening SSE streams.
    open_rates: UserRates,
    draining: AtomicBool,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

/// A Herald node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Node {
    /// A node that runs alone, whose broker is built by `make_broker` from
    /// the node's sink; presence is the node's own members (for tests and
    /// embedders; `herald serve` uses [`Node::start`], in `engine.rs`).
    pub fn new(
        settings: NodeSettings,
        verifier: Arc<dyn TokenVerifier>,
        make_broker: impl FnOnce(Arc<dyn PublicationSink>) -> Arc<dyn Broker>,
    ) -> Self {
        let parts = crate::engine::Parts::new(&settings, HookSet::empty(), false);
        let broker = make_broker(parts.rooms.clone());
        let presence = Arc::new(LocalPresence::new(parts.rooms.clone()));
        let engine = Engine {
            broker,
            cluster: None,
            presence,
            shutdown: None,
            outbox: None,
        };
        Self::assemble(settings, verifier, parts, engine)
    }

    pub(crate) fn assemble(
        settings: NodeSettings,
        verifier: Arc<dyn TokenVerifier>,
        parts: crate::engine::Parts,
        engine: Engine,
    ) -> Self {
        let open_rates = UserRates::new(settings.limits.messages_per_second, settings.limits.burst);
        metrics::describe();
        // On a cluster the engine emits `user.*` with its registry writes.
        let registry_hooks = match engine.cluster {
            Some(_) => parts.hooks.restricted(crate::engine::cluster_node_kinds()),
            None => parts.hooks.clone(),
        };
        if let (Some(queue), Some(outbox)) = (parts.hook_queue, engine.outbox.clone()) {
            crate::hooks::spawn_writer(queue, outbox, parts.cancel.clone(), &parts.tasks);
        }
        let node = Self {
            inner: Arc::new(Inner {
                node_id: parts.node_id,
                limits: settings.limits,
                rule_claims: settings.namespaces.rule_claims(),
                namespaces: settings.namespaces,
                broker: engine.broker,
                cluster: engine.cluster,
                presence: engine.presence,
                engine_shutdown: parking_lot::Mutex::new(engine.shutdown),
                verifier,
                access_proxy: settings.access_proxy,
                rooms: parts.rooms,
                events: parts.events,
                registry: Registry::with_hooks(registry_hooks),
                hooks: parts.hooks,
                outbox: engine.outbox,
                clock: Instant::now(),
                slots: crate::slots::Slots::default(),
                open_rates,
                draining: AtomicBool::new(false),
                cancel: parts.cancel,
                tasks: parts.tasks,
            }),
        };
        crate::housekeeping::spawn(&node);
        node
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.inner.node_id
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The namespace rules.
    pub fn namespaces(&self) -> &Namespaces {
        &self.inner.namespaces
    }

    /// The backend asked about `proxy` rules and `rpc` frames, if any.
    pub fn access_proxy(&self) -> Option<&Arc<dyn AccessProxy>> {
        self.inner.access_proxy.as_ref()
    }

    /// The broker engine.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.inner.broker
    }

    /// The engine's webhook outbox, which the dispatcher reads (`None`
    /// for a node built by [`Node::new`]).
    pub fn outbox(&self) -> Option<&Arc<dyn herald_core::Outbox>> {
        self.inner.outbox.as_ref()
    }

    /// Takes one open from the user's budget (`limits.messages_per_second`
    /// sustained, `limits.burst` at once, per tenant and user on this
    /// node); false when it is spent. SSE streams call this for every
    /// open, since an open costs far more than a frame.
    pub fn admit_open(&self, identity: &Identity) -> bool {
        let tenant = Tenant::from_option(identity.tenant.as_deref());
        let admitted = self
            .inner
            .open_rates
            .try_take(&tenant, &identity.user_id, Instant::now());
        if !admitted {
            metrics::rate_limited();
        }
        admitted
    }

    /// Verifies a bearer token, counting failures by reason.
    pub async fn verify_token(&self, token: &str) -> Result<Identity, VerifyError> {
        let result = self.inner.verifier.verify(token).await;
        if let Err(e) = &result {
            metrics::auth_failure(e.reason);
        }
        result
    }

    /// Verifies a credential (a JWT, or whatever the client sent where a
    /// token goes, for a verifier that asks the backend), counting failures
    /// by reason like [`Node::verify_token`].
    pub async fn verify_credential(
        &self,
        credential: &str,
        ctx: &CredentialContext,
    ) -> Result<Verified, VerifyError> {
        let result = self.inner.verifier.verify_credential(credential, ctx).await;
        if let Err(e) = &result {
            metrics::auth_failure(e.reason);
        }
        result
    }

    /// Drops the token claims no namespace rule reads: a connection holds
    /// its identity for its whole life, and tokens can carry many claims.
    /// With an access proxy every claim is kept: the backend is sent them.
    pub(crate) fn trim_claims(&self, mut identity: Identity) -> Identity {
        if self.inner.access_proxy.is_some() {
            return identity;
        }
        identity
            .claims
            .retain(|name, _| self.inner.rule_claims.contains(name));
        identity
    }

    /// Admits an authenticated connection: registers it under the per-user
    /// policy, joins its auto-join rooms and queues `authenticated`
    /// (answering `reply_to` when the token came in a frame).
    pub async fn open_session(
        &self,
        identity: Identity,
        transport: &'static Transport,
        options: OpenOptions,
    ) -> Result<Session, CloseCode> {
        let limits = &self.inner.limits;
        let identity = self.trim_claims(identity);
        let conn = Arc::new(Connection::new(
            format!("{:032x}", rand::random::<u128>()),
            identity,
            transport,
            options.codec.unwrap_or(&HERALD_JSON),
            match options.writer.clone() {
                Some(writer) => SendQueue::with_writer(
                    limits.send_queue_messages,
                    limits.send_queue_bytes,
                    writer,
                ),
                None => SendQueue::new(limits.send_queue_messages, limits.send_queue_bytes),
            },
            self.inner.clock,
            now_ms(),
        ));
        if self.inner.cluster.is_some() {
            // The policy holds cluster-wide: the cluster registry applies it.
            self.inner.registry.insert(&conn);
            if let Err(code) = self.cluster_admit(&conn).await {
                self.inner.registry.remove(&conn);
                return Err(code);
            }
        } else {
            match self.inner.registry.admit(&conn, limits) {
                Admission::TooManyForUser => return Err(CloseCode::TooManyConnections),
                Admission::Admitted(victims) => evict(&victims),
            }
        }
        self.hook_opened(&conn);
        metrics::connection_opened(transport.name);
        metrics::connections(self.inner.registry.len());
        if let Some(patterns) = &options.events {
            // The transport checked the count against the same cap; a
            // refusal here would leave the filter matching everything.
            if let Err(e) = conn.update_filter(|f| f.subscribe(patterns, limits.max_event_patterns))
            {
                tracing::debug!(error = %e, "connect-time event patterns refused");
            }
        }
        let mut session = Session::new(self.clone(), conn.clone());
        let pending = session.auto_join(&options.resume, &options.rooms).await;
        let authenticated = conn.encode(&ServerFrame::Authenticated {
            id: options.reply_to,
            connection_id: conn.id.to_string(),
            user_id: conn.user_id.to_string(),
            node_id: self.inner.node_id.to_string(),
            rooms: pending
                .iter()
                .map(|p| JoinedRoom {
                    room: p.key.name.to_string(),
                    epoch: p.position.epoch.clone(),
                    offset: p.position.offset,
                })
                .collect(),
            heartbeat_interval_ms: limits.heartbeat_interval.as_millis() as u64,
        });
        let listed = pending
            .iter()
            .map(|p| (p.key.name.clone(), p.position.clone()))
            .collect();
        conn.send_item(Outbound::changing(
            authenticated,
            PositionChange::Listed(listed),
        ));
        let presence_rooms = session.finish_auto_join(pending, options.announce_rooms);
        session.announce_joined(&presence_rooms).await;
        session.feed_replay_all().await;
        Ok(session)
    }

    /// The history policy of `room`.
    pub fn history_policy(&self, room: &RoomName) -> HistoryPolicy {
        let ns = self.inner.namespaces.for_room(room);
        HistoryPolicy {
            size: ns.history_size,
            ttl: ns.history_ttl,
            max_bytes: ns
                .history_max_bytes
                .unwrap_or(self.inner.limits.history_room_bytes),
        }
    }

    /// Publishes one event from the HTTP API.
    pub async fn publish(&self, input: PublishInput) -> Result<PublishOutcome, NodeError> {
        self.publish_with(input, None).await
    }

    pub(crate) async fn publish_with(
        &self,
        input: PublishInput,
        trace: Option<herald_core::TraceContext>,
    ) -> Result<PublishOutcome, NodeError> {
        let name = RoomName::parse(&input.room)?;
        if let Some(key) = &input.conflation_key {
            herald_core::priority::check_conflation_key(key)
                .map_err(|e| NodeError::BadRequest(e.to_string()))?;
        }
        let history = self.history_policy(&name);
        // Resolved once here so it travels with the event and its history.
        let critical = input.critical
            || self
                .inner
                .namespaces
                .for_room(&name)
                .critical_events
                .contains(&input.event);
        let counted = self
            .inner
            .events
            .published_counter(name.namespace(), &input.event);
        let outcome = self
            .inner
            .broker
            .publish(PublishRequest {
                room: RoomKey::new(input.tenant, name),
                event: input.event,
                data: input.data,
                from: None,
                exclude_connection: input.exclude_connection,
                idempotency_key: input.idempotency_key,
                history,
                trace,
                critical,
                conflation_key: input.conflation_key,
            })
            .await?;
        if !outcome.duplicate {
            metrics::published();
            counted.increment(1);
        }
        Ok(outcome)
    }

    /// Stored events of `room` after `since`, at most `limit`, with the
    /// stream's position.
    pub async fn history(
        &self,
        room: &RoomKey,
        since: u64,
        limit: usize,
    ) -> Result<herald_core::HistoryPage, NodeError> {
        Ok(self.inner.broker.history(room, since, limit).await?)
    }

    /// The room's current position.
    pub async fn position(&self, room: &RoomKey) -> Result<StreamPosition, NodeError> {
        Ok(self.inner.broker.position(room).await?)
    }

    /// Open connections on this node.
    pub fn connection_count(&self) -> usize {
        self.inner.registry.len()
    }

    /// Whether the node accepts connections and its broker is reachable.
    pub fn is_ready(&self) -> bool {
        !self.is_draining()
            && self.inner.broker.is_ready()
            && self.inner.cluster.as_ref().is_none_or(|c| c.is_ready())
    }

    /// Whether the node is shutting down.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// A token cancelled when the node shuts down.
    pub fn cancellation(&self) -> CancellationToken {
        self.inner.cancel.clone()
    }

    /// The tracker that owns the node's background tasks.
    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    /// Drains the node: refuses new connections, then closes every open
    /// one with 1001 (`reconnect: true`), spread evenly over `spread` so
    /// clients do not all reconnect at once, and waits until they are gone
    /// or `spread` plus a grace period has passed.
    pub async fn drain(&self, spread: Duration) {
        self.inner.draining.store(true, Ordering::Release);
        let conns = self.inner.registry.all();
        let n = conns.len().max(1) as u32;
        let start = tokio::time::Instant::now();
        for (i, c) in conns.iter().enumerate() {
            tokio::time::sleep_until(start + spread * (i as u32) / n).await;
            c.close(CloseCode::GoingAway);
        }
        let deadline = start + spread + Duration::from_secs(5);
        while self.inner.registry.len() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.inner.cancel.cancel();
        self.inner.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.tasks.wait()).await;
    }
}
