//! Broker failures reach clients as a generic message per code: the
//! engine's own text (hosts, Redis replies) stays in the node's log.

use async_trait::async_trait;
use herald_broker_memory::MemoryBroker;
use herald_core::broker::{BrokerStats, HistoryPage};
use herald_core::{
    Broker, BrokerError, Identity, Namespaces, PublicationSink, PublishOutcome, PublishRequest,
    RoomKey, TokenVerifier, VerifyError,
};
use herald_node::{Limits, Node, NodeSettings, OpenOptions, Outbound, Transport};
use herald_protocol::StreamPosition;
use serde_json::{json, Value};
use std::sync::Arc;

/// What the failing broker says; no client may see it.
const INTERNAL: &str = "IO Error: connection refused (redis-internal.example:6379)";

struct AnyToken;

#[async_trait]
impl TokenVerifier for AnyToken {
    async fn verify(&self, token: &str) -> Result<Identity, VerifyError> {
        Ok(Identity::new(token))
    }
}

/// The memory engine with its subscriptions failing as an unreachable
/// Redis's do.
struct Down {
    inner: MemoryBroker,
}

#[async_trait]
impl Broker for Down {
    fn kind(&self) -> &'static str {
        "down"
    }

    async fn publish(&self, request: PublishRequest) -> Result<PublishOutcome, BrokerError> {
        self.inner.publish(request).await
    }

    async fn subscribe(&self, _room: &RoomKey) -> Result<(), BrokerError> {
        Err(BrokerError::Unavailable(INTERNAL.into()))
    }

    async fn unsubscribe(&self, room: &RoomKey) -> Result<(), BrokerError> {
        self.inner.unsubscribe(room).await
    }

    async fn position(&self, room: &RoomKey) -> Result<StreamPosition, BrokerError> {
        self.inner.position(room).await
    }

    async fn history(
        &self,
        room: &RoomKey,
        since: u64,
        limit: usize,
    ) -> Result<HistoryPage, BrokerError> {
        self.inner.history(room, since, limit).await
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn stats(&self) -> BrokerStats {
        self.inner.stats()
    }
}

#[tokio::test]
async fn a_join_the_broker_fails_answers_without_the_engine_text() {
    let mut namespaces = Namespaces::shipped();
    namespaces.insert(
        "chat",
        herald_core::NamespaceConfig {
            join: herald_core::Rule::Any,
            ..Default::default()
        },
    );
    let node = Node::new(
        NodeSettings {
            node_id: "n1".into(),
            limits: Limits::default(),
            namespaces,
        },
        Arc::new(AnyToken),
        |sink: Arc<dyn PublicationSink>| -> Arc<dyn Broker> {
            Arc::new(Down {
                inner: MemoryBroker::new(sink),
            })
        },
    );
    let mut session = node
        .open_session(Identity::new("u1"), &Transport::SSE, OpenOptions::default())
        .await
        .expect("admitted");
    session
        .handle_text(&json!({"type": "join_room", "id": 7, "room": "chat:1"}).to_string())
        .await;
    let conn = session.connection().clone();
    let mut batch = Vec::new();
    let mut frames: Vec<Value> = Vec::new();
    while !conn.queue.is_empty() {
        conn.queue.next_batch(&mut batch).await;
        frames.extend(batch.drain(..).filter_map(|o| match o {
            Outbound::Frame { bytes, .. } => serde_json::from_slice(&bytes).ok(),
            Outbound::Ping | Outbound::Raw(_) => None,
        }));
    }
    let error = frames
        .iter()
        .find(|f| f["type"] == "error" && f["id"] == 7)
        .unwrap_or_else(|| panic!("no error answering the join: {frames:?}"));
    assert_eq!(error["code"], "unavailable");
    let message = error["message"].as_str().unwrap_or_default();
    assert!(!message.contains("redis-internal"), "{message}");
    assert_eq!(message, herald_node::BROKER_UNAVAILABLE_MESSAGE);
}
