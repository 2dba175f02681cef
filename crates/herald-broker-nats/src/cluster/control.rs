//! Commands between nodes: small JSON messages on core NATS subjects, one
//! per node (`<prefix>.control.<node>`) and one every node reads
//! (`<prefix>.control._`, the subject of the empty node id: a connection
//! whose node is unknown, and user-wide disconnects). A lost message only
//! delays an `exclusive` replacement until the lock check notices.

use super::{json_error, nats_error, NatsCluster};
use futures_util::StreamExt;
use herald_core::{BrokerError, ClusterNode, ConnectionRef, Tenant};
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One command on a control subject.
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
                let command = ControlCommand::Close {
                    node: t.node_id.clone(),
                    conn: t.connection_id.clone(),
                    code,
                };
                remote.push((self.names.control_subject(&t.node_id), command));
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
        let command = ControlCommand::DisconnectUser {
            tenant: tenant.clone(),
            user: user.to_owned(),
            code,
            from: self.node_id.clone(),
        };
        self.publish_control(&[(self.broadcast_subject(), command)])
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
                        Some(m) => self.execute(&*node, &m.payload),
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
