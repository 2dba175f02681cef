//! The engine seam: how a node gets its broker, cluster and presence.
//!
//! An engine (memory, Redis, NATS...) is a crate that implements
//! [`EngineFactory`]. The server keeps the factories this build has in an
//! [`Engines`] registry and picks one by `broker.kind`. Starting a node is
//! two phases, which breaks the chicken-and-egg between node and engine:
//!
//! 1. the node makes its sinks, cancellation token and task tracker, and
//!    calls [`EngineFactory::start`] with an [`EngineContext`]; the context's
//!    callbacks ([`ClusterNode`], [`PublishTarget`]) are handles the node
//!    fills once it exists, and answer "nothing here" until then;
//! 2. the node is built around the returned [`Engine`], then fills those
//!    handles.
//!
//! Every task the engine spawns goes on the context's tracker and stops on
//! its token; on shutdown the node (after draining and leaving the cluster)
//! awaits [`Engine::shutdown`], which closes the engine's connections.

use crate::{
    Broker, Cluster, ClusterNode, HookSet, Outbox, Presence, PresenceSink, PublicationSink,
    TraceContext,
};
use async_trait::async_trait;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The `[broker]` table of the config, as JSON (durations as strings such
/// as `5s`). Each engine reads the keys it knows and ignores the others.
pub type EngineSettings = serde_json::Map<String, serde_json::Value>;

/// What an engine is started with.
pub struct EngineContext {
    /// The node's id.
    pub node_id: String,
    /// Cancelled when the node shuts down; every engine task stops on it.
    pub cancel: CancellationToken,
    /// Owns every task the engine spawns.
    pub tasks: TaskTracker,
    /// Where the broker hands publications.
    pub sink: Arc<dyn PublicationSink>,
    /// Where presence changes from other nodes go.
    pub presence_sink: Arc<dyn PresenceSink>,
    /// The node's callbacks for a cluster engine (answer nothing until the
    /// node exists).
    pub node: Arc<dyn ClusterNode>,
    /// Publishes like `POST /api/v1/publish`, for an engine that takes
    /// publications from outside (the Redis ingest stream).
    pub publish: Arc<dyn PublishTarget>,
    /// The node-wide history byte budget (`limits.history_total_bytes`),
    /// for engines that keep history in the node's memory.
    pub history_budget: usize,
    /// The `[broker]` table.
    pub settings: EngineSettings,
    /// The webhook kinds `webhooks.events` enables (empty: webhooks off).
    /// A cluster engine appends the kinds it emits (see [`crate::hooks`])
    /// only when they are in this set.
    pub hooks: HookSet,
}

/// The engine's shutdown step: closes its connections and waits for their
/// tasks. Run after the node drained and left the cluster.
pub type EngineShutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A started engine.
pub struct Engine {
    /// Rooms' streams.
    pub broker: Arc<dyn Broker>,
    /// The cluster registry; `None` for an engine serving one node.
    pub cluster: Option<Arc<dyn Cluster>>,
    /// Presence announcements and member lists.
    pub presence: Arc<dyn Presence>,
    /// Closes the engine (see [`EngineShutdown`]); `None` when there is
    /// nothing to close beyond the cancelled tasks.
    pub shutdown: Option<EngineShutdown>,
    /// Where webhook events wait for the dispatcher: the memory engine's
    /// in-memory one, a cluster engine's durable one; `None` when the
    /// engine has none (webhooks cannot be enabled with it).
    pub outbox: Option<Arc<dyn Outbox>>,
}

/// What an engine can do, for the conformance suite and the docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineCapabilities {
    /// Several nodes can share one backend (a cluster engine).
    pub multi_node: bool,
}

/// One bad setting, naming its key (`broker.<key>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    /// The key, e.g. `broker.redis_url`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Why an engine could not start.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the `{kind}` engine cannot start: {message}")]
pub struct EngineError {
    /// The engine's kind.
    pub kind: String,
    /// What went wrong, naming the setting when one is at fault.
    pub message: String,
}

/// Builds an engine (see the module docs).
pub trait EngineFactory: Send + Sync + 'static {
    /// The `broker.kind` that picks this engine.
    fn kind(&self) -> &'static str;

    /// What the engine can do.
    fn capabilities(&self) -> EngineCapabilities;

    /// Checks the engine's own settings in the `[broker]` table; every
    /// problem names its key. Run by config validation (`herald config
    /// check` and start), before anything is bound.
    fn validate(&self, settings: &EngineSettings) -> Vec<SettingError>;

    /// Starts the engine for one node. Called inside the node's runtime;
    /// spawns its tasks on `ctx.tasks`.
    fn start(&self, ctx: EngineContext) -> Result<Engine, EngineError>;
}

/// Why a publish from outside the HTTP API was not done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishRefusal {
    /// The request is bad and will stay bad (drop it, with the message).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The node cannot publish now; retry later.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Publishes a request given as the JSON body of `POST /api/v1/publish`,
/// with its checks (used by engines that carry publications from outside,
/// such as the Redis ingest stream).
#[async_trait]
pub trait PublishTarget: Send + Sync + 'static {
    /// Publishes `body`; `default_idempotency_key` is used when the body
    /// has none, so a re-delivered request publishes once (`None` for
    /// sources without message ids, such as core NATS or Redis pub/sub).
    /// `trace` is the message's own trace context (a `traceparent` header
    /// or field), which the publish continues when tracing is on.
    async fn publish_json(
        &self,
        body: &[u8],
        default_idempotency_key: Option<&str>,
        trace: Option<TraceContext>,
    ) -> Result<(), PublishRefusal>;
}

/// A [`PublishTarget`] that refuses everything as unavailable (a node not
/// built yet, or a test without an HTTP API).
pub struct NoPublishTarget;

#[async_trait]
impl PublishTarget for NoPublishTarget {
    async fn publish_json(
        &self,
        _body: &[u8],
        _key: Option<&str>,
        _trace: Option<TraceContext>,
    ) -> Result<(), PublishRefusal> {
        Err(PublishRefusal::Unavailable(
            "the node is not running".into(),
        ))
    }
}

/// The engines a build has, by kind.
#[derive(Clone, Default)]
pub struct Engines {
    factories: Vec<Arc<dyn EngineFactory>>,
}

impl Engines {
    /// No engines.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the factory of `factory.kind()`.
    pub fn register(mut self, factory: Arc<dyn EngineFactory>) -> Self {
        self.factories.retain(|f| f.kind() != factory.kind());
        self.factories.push(factory);
        self
    }

    /// The factory for `kind`.
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn EngineFactory>> {
        self.factories.iter().find(|f| f.kind() == kind)
    }

    /// The kinds this build has, in registration order.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.factories.iter().map(|f| f.kind()).collect()
    }

    /// The factory for `kind`, or a message naming `broker.kind` and the
    /// kinds this build has.
    pub fn pick(&self, kind: &str) -> Result<&Arc<dyn EngineFactory>, SettingError> {
        self.get(kind).ok_or_else(|| SettingError {
            key: "broker.kind".into(),
            message: format!(
                "`{kind}` is not available in this build; this build has: {}",
                self.kinds()
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake(&'static str);

    impl EngineFactory for Fake {
        fn kind(&self) -> &'static str {
            self.0
        }
        fn capabilities(&self) -> EngineCapabilities {
            EngineCapabilities { multi_node: false }
        }
        fn validate(&self, _: &EngineSettings) -> Vec<SettingError> {
            Vec::new()
        }
        fn start(&self, _: EngineContext) -> Result<Engine, EngineError> {
            Err(EngineError {
                kind: self.0.into(),
                message: "fake".into(),
            })
        }
    }

    #[test]
    fn an_unknown_kind_names_the_key_and_the_kinds_built_in() {
        let engines = Engines::new()
            .register(Arc::new(Fake("memory")))
            .register(Arc::new(Fake("redis")));
        assert_eq!(engines.kinds(), vec!["memory", "redis"]);
        assert!(engines.pick("redis").is_ok());
        let e = engines.pick("nats").err().expect("refused");
        assert_eq!(e.key, "broker.kind");
        assert!(e.message.contains("`nats`"), "{}", e.message);
        assert!(e.message.contains("`memory`, `redis`"), "{}", e.message);
    }
}
