//! The control channel: small JSON commands every node receives, carrying
//! closes and direct messages to whatever node holds the connection. A sharded channel
//! (SSUBSCRIBE/SPUBLISH, on one server too): its one slot means one shard
//! of a Redis Cluster carries it, and SSUBSCRIBE answers only once the
//! server confirmed it, so "subscribed" (and so readiness) is true. A lost
//! message only delays an `exclusive` replacement until the lock renewal
//! notices.

use super::{json_error, redis_error, RedisCluster};
use fred::interfaces::{EventInterface, HashesInterface, PubsubInterface};
use fred::types::Value;
use herald_core::{
    BrokerError, ClusterNode, ConnectionRecord, ConnectionRef, DirectMessage, DirectTarget, Tenant,
};
use herald_engine_kit::control::{self, ControlCommand, DirectRegistry};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// Waits between attempts to subscribe while the subscriber is down.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// At most this long: the very first connect may happen before the
/// reconnect receiver exists, and only this retry notices it.
const RETRY_MAX: Duration = Duration::from_secs(1);

impl RedisCluster {
    async fn publish_control(&self, commands: &[ControlCommand]) -> Result<(), BrokerError> {
        self.check()?;
        let channel = self.keys.control_channel();
        let pipe = self.clients.commands.pipeline();
        for command in commands {
            let json = serde_json::to_string(command).map_err(json_error)?;
            pipe.spublish::<(), _, _>(channel.as_str(), json)
                .await
                .map_err(redis_error)?;
        }
        pipe.all::<fred::types::Value>()
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    /// [`herald_core::Cluster::close_connections`]: local targets directly,
    /// the others over the channel.
    pub(super) async fn close_targets(
        &self,
        targets: &[ConnectionRef],
        code: u16,
    ) -> Result<(), BrokerError> {
        let node = self.node.get().map(|n| &**n);
        let remote = control::close_targets(&self.node_id, node, targets, code);
        if remote.is_empty() {
            return Ok(());
        }
        self.publish_control(&remote).await
    }

    /// [`herald_core::Cluster::disconnect_user`]: counts the registry's
    /// entries, closes the local ones, tells the other nodes.
    pub(super) async fn disconnect(
        &self,
        tenant: &Tenant,
        user: &str,
        code: u16,
    ) -> Result<usize, BrokerError> {
        let listed = self.list_user(tenant, user).await?.len();
        let node = self.node.get().map(|n| &**n);
        let command = control::disconnect_user(&self.node_id, node, tenant, user, code);
        self.publish_control(&[command]).await?;
        Ok(listed)
    }

    /// [`herald_core::Cluster::send_direct`]: the shared lookup and local
    /// delivery, then one command per other node on the channel.
    pub(super) async fn direct(
        &self,
        target: &DirectTarget,
        message: &DirectMessage,
    ) -> Result<Option<usize>, BrokerError> {
        let node = self.node.get().map(|n| &**n);
        let Some(plan) = control::send_direct(self, &self.node_id, node, target, message).await?
        else {
            return Ok(None);
        };
        if !plan.remote.is_empty() {
            self.publish_control(&plan.remote).await?;
        }
        Ok(Some(plan.listed))
    }

    /// Reads the control channel until `cancel` fires, subscribing again
    /// after every reconnect of the subscriber (Redis forgets subscriptions
    /// with the connection).
    pub(super) async fn control_loop(
        self: Arc<Self>,
        node: Arc<dyn ClusterNode>,
        cancel: CancellationToken,
    ) {
        let sub = self.clients.subscriber.clone();
        let channel = self.keys.control_channel();
        // Both receivers exist before the first SUBSCRIBE: no reconnect
        // between the two can go unseen.
        let mut messages = sub.message_rx();
        let mut reconnects = sub.reconnect_rx();
        let mut subscribed = false;
        let mut retry = RETRY_FIRST;
        loop {
            if !subscribed && fred::interfaces::ClientLike::is_connected(&sub) {
                match sub.ssubscribe(channel.as_str()).await {
                    Ok(()) => {
                        subscribed = true;
                        self.control_live.store(true, Ordering::Release);
                        retry = RETRY_FIRST;
                    }
                    Err(e) => tracing::debug!(error = %e, "control channel subscribe failed"),
                }
            }
            let wait = retry;
            tokio::select! {
                _ = cancel.cancelled() => break,
                message = messages.recv() => match message {
                    Ok(m) => {
                        if &*m.channel == channel.as_str() {
                            if let Some(bytes) = m.value.as_bytes() {
                                control::execute(&self.node_id, &*node, bytes);
                            }
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(lost = n, "control messages lost; lock renewal still closes replaced sessions");
                    }
                    Err(RecvError::Closed) => {
                        pause(&cancel, wait).await;
                        messages = sub.message_rx();
                    }
                },
                event = reconnects.recv() => {
                    subscribed = false;
                    self.control_live.store(false, Ordering::Release);
                    if let Err(RecvError::Closed) = event {
                        pause(&cancel, wait).await;
                        reconnects = sub.reconnect_rx();
                    }
                },
                _ = tokio::time::sleep(wait), if !subscribed => {
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

async fn pause(cancel: &CancellationToken, d: Duration) {
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

impl DirectRegistry for RedisCluster {
    /// The record of connection `id` on a live node (every node's hash of
    /// connections asked in one pipeline: there are few nodes).
    async fn find_connection(&self, id: &str) -> Result<Option<ConnectionRecord>, BrokerError> {
        self.check()?;
        let (mut live, _) = self.nodes_by_age().await?;
        // This node answers, so it lives, even before its first heartbeat.
        if !live.contains(&self.node_id) {
            live.push(self.node_id.clone());
        }
        let pipe = self.clients.commands.pipeline();
        for node in &live {
            pipe.hget::<(), _, _>(self.keys.node_connections(node), id)
                .await
                .map_err(redis_error)?;
        }
        let replies = match pipe.all::<Value>().await.map_err(redis_error)? {
            Value::Array(v) => v,
            one => vec![one],
        };
        Ok(replies
            .iter()
            .filter_map(|reply| reply.as_str())
            .filter_map(|json| serde_json::from_str::<ConnectionRecord>(&json).ok())
            .find(|r| r.connection_id == id))
    }

    async fn list_user(
        &self,
        tenant: &Tenant,
        user: &str,
    ) -> Result<Vec<ConnectionRecord>, BrokerError> {
        RedisCluster::list_user(self, tenant, user).await
    }
}
