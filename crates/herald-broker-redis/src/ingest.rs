//! The ingest stream consumer (being written).

use crate::{RedisClients, RedisSettings};
use async_trait::async_trait;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why an ingest entry was not published.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestFailure {
    /// The broker could not take it now; the entry stays pending and is
    /// retried.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The entry can never be published (bad JSON, bad room, ...): it moves
    /// to the dead-letter stream with this reason.
    #[error("invalid: {0}")]
    Invalid(String),
}

/// Publishes one ingest entry's `payload` (the JSON of `POST /api/v1/publish`).
#[async_trait]
pub trait IngestTarget: Send + Sync + 'static {
    /// Publishes it; `Ok` once the broker accepted it.
    async fn publish(&self, payload: &str) -> Result<(), IngestFailure>;
}

/// Consumes `<prefix>:ingest` as one consumer group of all nodes.
pub struct IngestConsumer;

impl IngestConsumer {
    /// Starts consuming; stops when `cancel` fires.
    pub fn spawn(
        clients: RedisClients,
        settings: &RedisSettings,
        target: Arc<dyn IngestTarget>,
        cancel: CancellationToken,
        tasks: &TaskTracker,
    ) {
        let _ = (clients, settings, target, cancel, tasks);
    }
}
