//! The cluster registry over Redis (being written).

use crate::{RedisClients, RedisSettings};
use herald_core::ClusterNode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The cluster-wide registry (see the crate docs).
pub struct RedisCluster {
    _clients: RedisClients,
}

impl RedisCluster {
    /// A registry over `clients`.
    pub fn new(clients: RedisClients, settings: &RedisSettings) -> Arc<Self> {
        let _ = settings;
        Arc::new(Self { _clients: clients })
    }

    /// Starts the heartbeat, the reaper, the control-channel reader and the
    /// exclusive-lock renewal for `node`; they stop when `cancel` fires.
    pub fn spawn(
        self: &Arc<Self>,
        node: Arc<dyn ClusterNode>,
        cancel: CancellationToken,
        tasks: &TaskTracker,
    ) {
        let _ = (node, cancel, tasks);
    }
}
