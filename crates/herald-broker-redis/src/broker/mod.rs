//! The Redis broker engine (being written): rooms' streams in Redis, fanned
//! out over pub/sub.

use crate::{RedisClients, RedisSettings};
use herald_core::PublicationSink;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Rooms' streams in Redis (see the crate docs).
pub struct RedisBroker {
    _clients: RedisClients,
    _sink: Arc<dyn PublicationSink>,
}

impl RedisBroker {
    /// A broker over `clients`, delivering to `sink`.
    pub fn new(
        clients: RedisClients,
        settings: &RedisSettings,
        sink: Arc<dyn PublicationSink>,
    ) -> Arc<Self> {
        let _ = settings;
        Arc::new(Self {
            _clients: clients,
            _sink: sink,
        })
    }

    /// Starts the pub/sub reader; it stops when `cancel` fires.
    pub fn spawn(self: &Arc<Self>, cancel: CancellationToken, tasks: &TaskTracker) {
        let _ = (cancel, tasks);
    }
}
