//! The control channel: small JSON commands every node receives, carrying
//! closes to whatever node holds the connection. A sharded channel
//! (SSUBSCRIBE/SPUBLISH, on one server too): its one slot means one shard
//! of a Redis Cluster carries it, and SSUBSCRIBE answers only once the
//! server confirmed it, so "subscribed" (and so readiness) is true. A lost
//! message only delays an `exclusive` replacement until the lock renewal
//! notices.

use super::{json_error, redis_error, RedisCluster};
use fred::interfaces::{EventInterface, PubsubInterface};
use herald_core::{BrokerError, ClusterNode, ConnectionRef, Tenant};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

/// One command on the control channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum ControlCommand {
    /// Close one connection. An empty `node` means "whichever holds it".
    Close {
        node: String,
        conn: String,
        code: u16,
    },
    /// Close every connection of a user; `from` already closed its own.
    DisconnectUser {
        tenant: Tenant,
        user: String,
        code: u16,
        #[serde(default)]
        from: String,
    },
}

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
        let node = self.node.get();
        let mut remote = Vec::new();
        for t in targets {
            let here = t.node_id == self.node_id;
            if here || t.node_id.is_empty() {
                if let Some(node) = node {
                    node.close_connection(&t.connection_id, code);
                }
            }
            if !here {
                remote.push(ControlCommand::Close {
                    node: t.node_id.clone(),
                    conn: t.connection_id.clone(),
                    code,
                });
            }
        }
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
        if let Some(node) = self.node.get() {
            node.close_user(tenant, user, code);
        }
        // Broadcast even when the registry lists none elsewhere: it may lag
        // behind a connection being admitted right now.
        self.publish_control(&[ControlCommand::DisconnectUser {
            tenant: tenant.clone(),
            user: user.to_owned(),
            code,
            from: self.node_id.clone(),
        }])
        .await?;
        Ok(listed)
    }

    fn execute(&self, node: &dyn ClusterNode, payload: &[u8]) {
        let command = match serde_json::from_slice::<ControlCommand>(payload) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable control command ignored");
                return;
            }
        };
        match command {
            ControlCommand::Close {
                node: target,
                conn,
                code,
            } => {
                if target == self.node_id || target.is_empty() {
                    node.close_connection(&conn, code);
                }
            }
            ControlCommand::DisconnectUser {
                tenant,
                user,
                code,
                from,
            } => {
                if from != self.node_id {
                    node.close_user(&tenant, &user, code);
                }
            }
        }
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
                                self.execute(&*node, bytes);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_have_the_documented_shape() {
        let close = ControlCommand::Close {
            node: "n1".into(),
            conn: "c1".into(),
            code: 4010,
        };
        assert_eq!(
            serde_json::to_string(&close).expect("json"),
            r#"{"op":"close","node":"n1","conn":"c1","code":4010}"#
        );
        let back: ControlCommand = serde_json::from_str(
            r#"{"op":"disconnect_user","tenant":"acme","user":"42","code":4013}"#,
        )
        .expect("parses without `from`");
        assert_eq!(
            back,
            ControlCommand::DisconnectUser {
                tenant: Tenant::from_option(Some("acme")),
                user: "42".into(),
                code: 4013,
                from: String::new(),
            }
        );
    }
}
