//! The engine seam (issue #13 item 3): a node started through an
//! [`EngineFactory`] hands the engine its sinks, token and tracker, fills
//! the engine's callbacks once it exists, owns the engine's tasks and runs
//! its shutdown step once; presence goes through the engine's `Presence`.

use async_trait::async_trait;
use herald_broker_memory::MemoryEngine;
use herald_core::{
    ClusterNode, Engine, EngineCapabilities, EngineContext, EngineError, EngineFactory,
    EngineSettings, Identity, NamespaceConfig, Namespaces, NoPublishTarget, RoomKey, RoomName,
    Rule, SettingError, Tenant, TokenVerifier, VerifyError,
};
use herald_node::{Limits, Node, NodeSettings, OpenOptions, Transport};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct AnyUser;

#[async_trait]
impl TokenVerifier for AnyUser {
    async fn verify(&self, token: &str) -> Result<Identity, VerifyError> {
        Ok(Identity::new(token))
    }
}

/// The memory engine, recording what it was given and what became of it.
#[derive(Default)]
struct Recording {
    fail: bool,
    node: Mutex<Option<Arc<dyn ClusterNode>>>,
    task_stopped: Arc<AtomicBool>,
    shutdowns: Arc<AtomicUsize>,
}

impl EngineFactory for Recording {
    fn kind(&self) -> &'static str {
        "recording"
    }

    fn capabilities(&self) -> EngineCapabilities {
        EngineCapabilities { multi_node: false }
    }

    fn validate(&self, _: &EngineSettings) -> Vec<SettingError> {
        Vec::new()
    }

    fn start(&self, ctx: EngineContext) -> Result<Engine, EngineError> {
        *self.node.lock() = Some(ctx.node.clone());
        let (cancel, stopped) = (ctx.cancel.clone(), self.task_stopped.clone());
        ctx.tasks.spawn(async move {
            cancel.cancelled().await;
            stopped.store(true, Ordering::Release);
        });
        if self.fail {
            return Err(EngineError {
                kind: "recording".into(),
                message: "broker.recording_url: refused".into(),
            });
        }
        let mut engine = MemoryEngine.start(ctx)?;
        let shutdowns = self.shutdowns.clone();
        engine.shutdown = Some(Box::pin(async move {
            shutdowns.fetch_add(1, Ordering::AcqRel);
        }));
        Ok(engine)
    }
}

fn settings() -> NodeSettings {
    let mut namespaces = Namespaces::shipped();
    namespaces.insert(
        "lobby",
        NamespaceConfig {
            join: Rule::Any,
            presence: true,
            ..Default::default()
        },
    );
    NodeSettings {
        node_id: "n1".into(),
        access_proxy: None,
        limits: Limits::default(),
        namespaces,
    }
}

fn start(factory: &Recording) -> Result<Node, EngineError> {
    Node::start(
        settings(),
        Arc::new(AnyUser),
        factory,
        EngineSettings::new(),
        Arc::new(NoPublishTarget),
    )
}

async fn wait_until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_reaches_the_node_and_stops_with_it() {
    let factory = Recording::default();
    let node = start(&factory).expect("starts");
    let callbacks = factory
        .node
        .lock()
        .clone()
        .expect("the engine got callbacks");
    let session = node
        .open_session(
            Identity::new("u1"),
            &Transport::WEBSOCKET,
            OpenOptions::default(),
        )
        .await
        .expect("admitted");
    // Handed over before the node existed, the callbacks reach it now.
    let figures = callbacks.figures();
    assert_eq!((figures.node_id.as_str(), figures.connections), ("n1", 1));
    let id = session.connection().id.to_string();
    assert!(
        callbacks.close_connection(&id, 4013),
        "the node's connection"
    );
    assert!(!factory.task_stopped.load(Ordering::Acquire));
    session.end("test over").await;
    node.drain(Duration::ZERO).await;
    assert!(
        factory.task_stopped.load(Ordering::Acquire),
        "the engine's task is owned by the node's tracker"
    );
    node.shutdown_engine().await;
    node.shutdown_engine().await;
    assert_eq!(
        factory.shutdowns.load(Ordering::Acquire),
        1,
        "shut down once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_engine_start_is_an_error_and_cancels_its_tasks() {
    let factory = Recording {
        fail: true,
        ..Default::default()
    };
    let Err(e) = start(&factory) else {
        panic!("the engine refused to start");
    };
    assert!(e.to_string().contains("`recording`"), "{e}");
    assert!(e.to_string().contains("broker.recording_url"), "{e}");
    let stopped = factory.task_stopped.clone();
    wait_until("the engine's task stops", || {
        stopped.load(Ordering::Acquire)
    })
    .await;
}

/// The memory engine's presence is the node's own members, read through
/// the engine's `Presence` (no cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_presence_lists_the_nodes_own_members() {
    let factory = Recording::default();
    let node = start(&factory).expect("starts");
    let mut session = node
        .open_session(
            Identity::new("u1"),
            &Transport::WEBSOCKET,
            OpenOptions::default(),
        )
        .await
        .expect("admitted");
    session
        .handle_text(r#"{"type":"join_room","id":1,"room":"lobby:1"}"#)
        .await;
    let room = RoomKey::new(
        Tenant::default_tenant(),
        RoomName::parse("lobby:1").expect("room"),
    );
    let members = node.presence(&room).await.expect("presence");
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0].user_id, "u1");
    assert_eq!(members[0].node_id, "n1");
    session.end("test over").await;
    node.drain(Duration::ZERO).await;
}
