//! Commands between nodes: small JSON messages on core NATS subjects, one
//! per node (`<prefix>.control.<node>`: closes and direct messages for its
//! connections) and one every node reads (`<prefix>.control._`, the subject
//! of the empty node id: a connection whose node is unknown, and user-wide
//! disconnects). A lost message only
//! delays an `exclusive` replacement until the lock check notices.

use super::{json_error, nats_error, NatsCluster};
use futures_util::future::join_all;
use futures_util::StreamExt;
use herald_core::{
    BrokerError, ClusterNode, ConnectionRecord, ConnectionRef, DirectMessage, DirectTarget, Tenant,
};
use herald_engine_kit::control::{self, ControlCommand, DirectRegistry};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Waits between attempts to subscribe while NATS is away.
const RETRY: Duration = Duration::from_millis(200);

impl NatsCluster {
    /// The subject every node reads.
    fn broadcast_subject(&self) -> String {
        self.names.control_subject("")
    }

    async fn publish_control(
        &self,
        commands: &[(String, ControlCommand)],
    ) -> Result<(), BrokerError> {
        self.check()?;
        for (subject, command) in commands {
            let json = serde_json::to_vec(command).map_err(json_error)?;
            self.clients
                .client
                .publish(subject.clone(), json.into())
                .await
                .map_err(|e| nats_error("sending a command", e))?;
        }
        tokio::time::timeout(self.command_timeout, self.clients.client.flush())
            .await
            .map_err(|_| nats_error("sending a command", "flush timed out"))?
            .map_err(|e| nats_error("sending a command", e))
    }

    /// [`herald_core::Cluster::close_connections`]: local targets directly,
    /// the others over their node's subject (or every node's).
    pub(super) async fn close_targets(
        &self,
        targets: &[ConnectionRef],
        code: u16,
    ) -> Result<(), BrokerError> {
        let node = self.node.get().map(|n| &**n);
        let remote: Vec<_> = control::close_targets(&self.node_id, node, targets, code)
            .into_iter()
            .map(|command| {
                let subject = self.subject_of(&command);
                (subject, command)
            })
            .collect();
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
        self.publish_control(&[(self.broadcast_subject(), command)])
            .await?;
        Ok(listed)
    }

    /// The subject carrying `command`: its node's, or every node's.
    fn subject_of(&self, command: &ControlCommand) -> String {
        match command {
            ControlCommand::Close { node, .. } | ControlCommand::Direct { node, .. } => {
                self.names.control_subject(node)
            }
            ControlCommand::DisconnectUser { .. } => self.broadcast_subject(),
        }
    }

    /// [`herald_core::Cluster::send_direct`]: the shared lookup and local
    /// delivery, then one command to each other node on its own subject.
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
        let remote: Vec<_> = plan
            .remote
            .into_iter()
            .map(|command| (self.subject_of(&command), command))
            .collect();
        if !remote.is_empty() {
            self.publish_control(&remote).await?;
        }
        Ok(Some(plan.listed))
    }

    /// Reads the control subjects until `cancel` fires. The client
    /// subscribes again by itself after a reconnect; the subscriptions are
    /// live (and the registry ready) once the server confirmed them with a
    /// flush.
    pub(super) async fn control_loop(
        self: Arc<Self>,
        node: Arc<dyn ClusterNode>,
        cancel: CancellationToken,
    ) {
        let client = self.clients.client.clone();
        let subjects = [
            self.names.control_subject(&self.node_id),
            self.broadcast_subject(),
        ];
        'subscribe: loop {
            let mut subs = Vec::new();
            for subject in &subjects {
                match client.subscribe(subject.clone()).await {
                    Ok(s) => subs.push(s),
                    Err(e) => {
                        tracing::debug!(error = %e, "control subscribe failed");
                        if pause(&cancel, RETRY).await {
                            return;
                        }
                        continue 'subscribe;
                    }
                }
            }
            let mut messages = futures_util::stream::select_all(subs);
            loop {
                let live = self.control_live.load(Ordering::Acquire);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    message = messages.next() => match message {
                        Some(m) => control::execute(&self.node_id, &*node, &m.payload),
                        None => {
                            self.control_live.store(false, Ordering::Release);
                            if pause(&cancel, RETRY).await {
                                return;
                            }
                            continue 'subscribe;
                        }
                    },
                    _ = tokio::time::sleep(RETRY), if !live => {
                        let flushed = tokio::time::timeout(self.command_timeout, client.flush()).await;
                        if matches!(flushed, Ok(Ok(()))) {
                            self.control_live.store(true, Ordering::Release);
                        }
                    }
                }
            }
        }
    }
}

/// Sleeps `d`; returns whether `cancel` fired meanwhile.
async fn pause(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

impl DirectRegistry for NatsCluster {
    /// The record of connection `id` on a live node: its key under every
    /// live node read at once (there are few nodes).
    async fn find_connection(&self, id: &str) -> Result<Option<ConnectionRecord>, BrokerError> {
        let b = self.buckets().await?;
        let live = self.live_among(&b, std::iter::empty()).await?;
        let reads = live.iter().map(|node| {
            let key = self.keys.conn(node, id);
            let b = &b;
            async move { b.registry.get(key).await }
        });
        for read in join_all(reads).await {
            let value = read.map_err(|e| nats_error("reading a connection", e))?;
            if let Some(r) = value.and_then(|v| serde_json::from_slice::<ConnectionRecord>(&v).ok())
            {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    async fn list_user(
        &self,
        tenant: &Tenant,
        user: &str,
    ) -> Result<Vec<ConnectionRecord>, BrokerError> {
        NatsCluster::list_user(self, tenant, user).await
    }
}
