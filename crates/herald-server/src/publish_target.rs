//! What an engine publishes through when publications come from outside
//! the HTTP API (the Redis ingest stream, the bridges): the body of `POST
//! /api/v1/publish`, with the same checks.

use crate::api::parse_publish;
use async_trait::async_trait;
use herald_core::{BrokerError, PublishRefusal, PublishTarget, TraceContext};
use herald_node::{Node, NodeError, WeakNode};
use herald_telemetry::PublishSource;
use std::sync::OnceLock;

/// The node's publish path, filled once the node exists (the engine is
/// started first). It holds the node weakly: the engine's tasks hold it,
/// and the node owns them.
pub(crate) struct ApiPublish {
    node: OnceLock<WeakNode>,
    /// What its `publish` spans say the publish came from.
    source: PublishSource,
}

impl ApiPublish {
    /// A publish path for publications from `source` (the Redis ingest
    /// stream, or the bridges).
    pub(crate) fn new(source: PublishSource) -> Self {
        Self {
            node: OnceLock::new(),
            source,
        }
    }

    /// Points it at `node`.
    pub(crate) fn fill(&self, node: &Node) {
        let _ = self.node.set(node.downgrade());
    }
}

#[async_trait]
impl PublishTarget for ApiPublish {
    async fn publish_json(
        &self,
        body: &[u8],
        default_idempotency_key: Option<&str>,
        trace: Option<TraceContext>,
    ) -> Result<(), PublishRefusal> {
        let Some(node) = self.node.get().and_then(WeakNode::upgrade) else {
            return Err(PublishRefusal::Unavailable(
                "the node is not running".into(),
            ));
        };
        let mut input =
            parse_publish(body).map_err(|e| PublishRefusal::Invalid(e.message().to_owned()))?;
        if input.idempotency_key.is_none() {
            input.idempotency_key = default_idempotency_key.map(str::to_owned);
        }
        match crate::publish_trace::publish(&node, input, trace, self.source, None).await {
            Ok(_) => Ok(()),
            // A broker failure is not the request's fault: retry it rather
            // than drop it as invalid.
            Err(NodeError::Broker(BrokerError::Internal(message))) => Err(
                PublishRefusal::Unavailable(format!("broker error: {message}")),
            ),
            Err(e) => {
                let e = crate::error::ApiError::from(e);
                let message = e.message().to_owned();
                Err(if e.is_unavailable() {
                    PublishRefusal::Unavailable(message)
                } else {
                    PublishRefusal::Invalid(message)
                })
            }
        }
    }
}
