//! The NATS cluster registry on key-value buckets. PLACEHOLDER on main: the
//! signatures the engine calls, answering `unavailable`; replaced wholesale
//! by the cluster work of issue #15 before it merges.

use crate::{NatsClients, NatsSettings};
use async_trait::async_trait;
use herald_core::{
    BrokerError, Cluster, ClusterAdmission, ClusterNode, ConnectionRecord, ConnectionRef,
    MemberRecord, NodeFigures, PerUserPolicy, RoomKey, Tenant,
};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The cluster registry on JetStream key-value buckets.
pub struct NatsCluster {
    _clients: NatsClients,
}

fn missing() -> BrokerError {
    BrokerError::Unavailable("the NATS cluster registry is not built yet".into())
}

impl NatsCluster {
    /// A registry for the node of `settings`.
    pub fn new(clients: NatsClients, _settings: &NatsSettings) -> Arc<Self> {
        Arc::new(Self { _clients: clients })
    }

    /// Starts the registry's tasks (heartbeat, reaper, control) on `tasks`.
    pub fn spawn(
        self: &Arc<Self>,
        _node: Arc<dyn ClusterNode>,
        _cancel: CancellationToken,
        _tasks: &TaskTracker,
    ) {
    }

    /// The room's members on every node (rooms with presence on).
    pub async fn presence(&self, _room: &RoomKey) -> Result<Vec<MemberRecord>, BrokerError> {
        Err(missing())
    }
}

#[async_trait]
impl Cluster for NatsCluster {
    async fn admit(
        &self,
        _record: &ConnectionRecord,
        _policy: PerUserPolicy,
        _max_per_user: usize,
    ) -> Result<ClusterAdmission, BrokerError> {
        Err(missing())
    }

    async fn would_refuse(&self, _: &Tenant, _: &str, _: usize) -> Result<bool, BrokerError> {
        Err(missing())
    }

    async fn remove(&self, _record: &ConnectionRecord) -> Result<(), BrokerError> {
        Err(missing())
    }

    async fn joined(&self, _: &RoomKey, _: &ConnectionRecord, _: bool) -> Result<(), BrokerError> {
        Err(missing())
    }

    async fn left(&self, _: &RoomKey, _: &ConnectionRecord, _: bool) -> Result<(), BrokerError> {
        Err(missing())
    }

    async fn user_connections(
        &self,
        _: &Tenant,
        _: &str,
    ) -> Result<Vec<ConnectionRecord>, BrokerError> {
        Err(missing())
    }

    async fn nodes(&self) -> Result<Vec<NodeFigures>, BrokerError> {
        Err(missing())
    }

    async fn disconnect_user(&self, _: &Tenant, _: &str, _: u16) -> Result<usize, BrokerError> {
        Err(missing())
    }

    async fn close_connections(&self, _: &[ConnectionRef], _: u16) -> Result<(), BrokerError> {
        Err(missing())
    }

    fn is_ready(&self) -> bool {
        false
    }

    async fn leave(&self) {}
}
