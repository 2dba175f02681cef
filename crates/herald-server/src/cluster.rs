//! Building a node of a Redis cluster: the shared connections, the broker
//! engine, the cluster registry and the ingest-stream consumer.

use crate::api::parse_publish;
use crate::config::Config;
use async_trait::async_trait;
use herald_broker_redis::{
    IngestConsumer, IngestFailure, IngestTarget, RedisBroker, RedisClients, RedisCluster,
    RedisSettings, RedisSetupError,
};
use herald_core::TokenVerifier;
use herald_node::{Node, NodeSettings};
use std::sync::Arc;

/// A running cluster node's Redis side, kept to close it on shutdown.
pub(crate) struct RedisSide {
    clients: RedisClients,
    connections: [herald_broker_redis::ConnectHandle; 2],
}

impl RedisSide {
    /// Closes the Redis connections (after the node left the cluster) and
    /// waits for their tasks.
    pub(crate) async fn close(self) {
        self.clients.quit().await;
        for handle in self.connections {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), handle).await;
        }
    }
}

/// Builds a node on Redis and starts its engine tasks, owned by the node.
pub(crate) fn build(
    config: &Config,
    node_id: &str,
    settings: NodeSettings,
    verifier: Arc<dyn TokenVerifier>,
) -> Result<(Node, RedisSide), RedisSetupError> {
    let redis = RedisSettings {
        url: config.broker.redis_url.clone().unwrap_or_default(),
        prefix: config.broker.prefix.clone(),
        node_id: node_id.to_owned(),
        node_heartbeat: config.broker.node_heartbeat,
        command_timeout: config.broker.command_timeout,
    };
    let clients = RedisClients::connect(&redis)?;
    let connections = clients.start();
    let cluster = RedisCluster::new(clients.clone(), &redis);
    let mut broker = None;
    let node = Node::with_cluster(settings, verifier, Some(cluster.clone()), |sink| {
        let b = RedisBroker::new(clients.clone(), &redis, sink);
        broker = Some(b.clone());
        b
    });
    if let Some(broker) = broker {
        broker.spawn(node.cancellation(), node.tasks());
    }
    cluster.spawn(node.cluster_handle(), node.cancellation(), node.tasks());
    IngestConsumer::spawn(
        clients.clone(),
        &redis,
        Arc::new(Ingest { node: node.clone() }),
        node.cancellation(),
        node.tasks(),
    );
    Ok((
        node,
        RedisSide {
            clients,
            connections,
        },
    ))
}

/// Publishes ingest-stream entries like `POST /api/v1/publish`.
struct Ingest {
    node: Node,
}

#[async_trait]
impl IngestTarget for Ingest {
    async fn publish(&self, entry_id: &str, payload: &str) -> Result<(), IngestFailure> {
        let mut input = parse_publish(payload.as_bytes())
            .map_err(|e| IngestFailure::Invalid(e.message().to_owned()))?;
        // A re-delivered entry (its consumer died between publishing and
        // acknowledging) must not publish twice.
        if input.idempotency_key.is_none() {
            input.idempotency_key = Some(format!("ingest:{entry_id}"));
        }
        match self.node.publish(input).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = crate::error::ApiError::from(e);
                if e.is_unavailable() {
                    Err(IngestFailure::Unavailable(e.message().to_owned()))
                } else {
                    Err(IngestFailure::Invalid(e.message().to_owned()))
                }
            }
        }
    }
}
