//! The registry's commands between nodes: small JSON messages carrying
//! closes to whatever node holds the connection. The engines differ only
//! in how they carry them (a Redis sharded channel, NATS subjects); what a
//! command says and what a node does with it is here.

use herald_core::{ClusterNode, ConnectionRef, Tenant};
use serde::{Deserialize, Serialize};

/// One command between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlCommand {
    /// Close one connection. An empty `node` means "whichever holds it".
    Close {
        /// The node holding the connection (empty: unknown).
        node: String,
        /// The connection id.
        conn: String,
        /// The close code.
        code: u16,
    },
    /// Close every connection of a user; `from` already closed its own.
    DisconnectUser {
        /// The user's tenant.
        tenant: Tenant,
        /// The user id.
        user: String,
        /// The close code.
        code: u16,
        /// The node that sent it.
        #[serde(default)]
        from: String,
    },
}

/// [`herald_core::Cluster::close_connections`] on node `node_id`: closes
/// the targets it holds (and those whose node is unknown) directly, and
/// returns the commands for the other nodes.
pub fn close_targets(
    node_id: &str,
    node: Option<&dyn ClusterNode>,
    targets: &[ConnectionRef],
    code: u16,
) -> Vec<ControlCommand> {
    let mut remote = Vec::new();
    for t in targets {
        let here = t.node_id == node_id;
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
    remote
}

/// [`herald_core::Cluster::disconnect_user`] on node `node_id`: closes the
/// user's local connections and returns the command for every other node
/// (to send even when the registry lists none elsewhere: it may lag behind
/// a connection being admitted right now).
pub fn disconnect_user(
    node_id: &str,
    node: Option<&dyn ClusterNode>,
    tenant: &Tenant,
    user: &str,
    code: u16,
) -> ControlCommand {
    if let Some(node) = node {
        node.close_user(tenant, user, code);
    }
    ControlCommand::DisconnectUser {
        tenant: tenant.clone(),
        user: user.to_owned(),
        code,
        from: node_id.to_owned(),
    }
}

/// Carries out a received command on node `node_id`; an unreadable one is
/// logged and ignored.
pub fn execute(node_id: &str, node: &dyn ClusterNode, payload: &[u8]) {
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
            if target == node_id || target.is_empty() {
                node.close_connection(&conn, code);
            }
        }
        ControlCommand::DisconnectUser {
            tenant,
            user,
            code,
            from,
        } => {
            if from != node_id {
                node.close_user(&tenant, &user, code);
            }
        }
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
