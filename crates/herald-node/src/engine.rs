//! Starting a node on an engine (see [`herald_core::engine`]): the node's
//! parts are made first and handed to the engine's factory, then the node
//! is built around the engine and fills the callbacks it handed over.

use crate::flush::Flusher;
use crate::hooks::{Emitter, EmitterQueue};
use crate::node::{Inner, Node, NodeSettings, JOIN_BUFFER_FLOOR};
use crate::rooms::Rooms;
use herald_core::{
    EngineContext, EngineError, EngineFactory, EngineSettings, HookKind, HookSet, PublishTarget,
    TokenVerifier,
};
use std::sync::{Arc, Weak};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A node held weakly (by something the node itself owns, such as an
/// engine's publish target), so it does not keep the node alive.
#[derive(Clone)]
pub struct WeakNode(Weak<Inner>);

impl WeakNode {
    /// The node, while it lives.
    pub fn upgrade(&self) -> Option<Node> {
        self.0.upgrade().map(|inner| Node { inner })
    }
}

/// What a node is made of before its engine starts: the engine is handed
/// the sinks, token and tracker, then the node is built around it.
pub(crate) struct Parts {
    pub(crate) node_id: Arc<str>,
    pub(crate) rooms: Arc<Rooms>,
    /// Publishes and deliveries by namespace and event name, shared by the
    /// rooms' fan-out and the node's publishes.
    pub(crate) events: Arc<crate::metrics::EventCounters>,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
    /// Webhook emission (off when `hooks` is empty).
    pub(crate) hooks: Emitter,
    /// The emitter's queue, for the writer started once the outbox exists.
    pub(crate) hook_queue: Option<EmitterQueue>,
}

impl Parts {
    /// The parts of a node emitting the webhook kinds in `hooks`; on a
    /// `multi_node` engine the rooms leave `room.*` to the engine.
    pub(crate) fn new(settings: &NodeSettings, hooks: HookSet, multi_node: bool) -> Self {
        let tasks = TaskTracker::new();
        let node_id: Arc<str> = Arc::from(settings.node_id.as_str());
        let (emitter, hook_queue) = Emitter::new(hooks, node_id.clone());
        let room_hooks = if multi_node {
            emitter.restricted(cluster_node_kinds())
        } else {
            emitter.clone()
        };
        let events = Arc::new(crate::metrics::EventCounters::new(
            settings.namespaces.iter().map(|(name, _)| name),
        ));
        let rooms = Arc::new(
            Rooms::new(
                node_id.clone(),
                // A paced replay may take a while on a slow link: the room's
                // live events wait in this buffer meanwhile.
                settings.limits.send_queue_messages.max(JOIN_BUFFER_FLOOR),
                Flusher::new(tasks.clone()),
            )
            .with_hooks(room_hooks)
            .with_events(events.clone())
            .with_priorities(&settings.namespaces),
        );
        Self {
            node_id,
            rooms,
            events,
            cancel: CancellationToken::new(),
            tasks,
            hooks: emitter,
            hook_queue,
        }
    }
}

/// The kinds a node emits itself on a cluster (the engine emits `user.*`
/// and `room.*` with its registry writes).
pub(crate) fn cluster_node_kinds() -> HookSet {
    [
        HookKind::ConnectionOpened,
        HookKind::ConnectionClosed,
        HookKind::MemberJoined,
        HookKind::MemberLeft,
        HookKind::MessageSent,
    ]
    .into_iter()
    .collect()
}

impl Node {
    /// A node on the engine `factory` builds (see [`herald_core::engine`]):
    /// the engine is started with the node's sinks, token and tracker, and
    /// its callbacks reach the node once it is built. `publish` is what
    /// the engine may publish through (the HTTP API's checks).
    pub fn start(
        settings: NodeSettings,
        verifier: Arc<dyn TokenVerifier>,
        factory: &dyn EngineFactory,
        engine_settings: EngineSettings,
        publish: Arc<dyn PublishTarget>,
    ) -> Result<Self, EngineError> {
        let parts = Parts::new(&settings, settings.hooks, factory.capabilities().multi_node);
        let handle = crate::cluster::LateHandle::new(&settings.node_id);
        let engine = factory.start(EngineContext {
            node_id: settings.node_id.clone(),
            cancel: parts.cancel.clone(),
            tasks: parts.tasks.clone(),
            sink: parts.rooms.clone(),
            presence_sink: parts.rooms.clone(),
            node: Arc::new(handle.clone()),
            publish,
            history_budget: settings.limits.history_total_bytes,
            settings: engine_settings,
            hooks: settings.hooks,
        });
        let engine = match engine {
            Ok(engine) if engine.outbox.is_none() && !settings.hooks.is_empty() => {
                parts.cancel.cancel();
                parts.tasks.close();
                return Err(EngineError {
                    kind: factory.kind().to_owned(),
                    message: "webhooks are configured but this engine has no outbox".into(),
                });
            }
            Ok(engine) => engine,
            Err(e) => {
                // Whatever the engine spawned before failing stops here.
                parts.cancel.cancel();
                parts.tasks.close();
                return Err(e);
            }
        };
        let node = Self::assemble(settings, verifier, parts, engine);
        handle.fill(&node);
        Ok(node)
    }

    /// A weak handle on this node.
    pub fn downgrade(&self) -> WeakNode {
        WeakNode(Arc::downgrade(&self.inner))
    }

    /// Closes the engine's connections (its [`herald_core::EngineShutdown`]);
    /// call after [`Node::drain`] and [`Node::leave_cluster`]. Later calls
    /// do nothing.
    pub async fn shutdown_engine(&self) {
        let shutdown = self.inner.engine_shutdown.lock().take();
        if let Some(shutdown) = shutdown {
            shutdown.await;
        }
    }
}
