//! The registry's commands between nodes: small JSON messages carrying
//! closes and direct messages to whatever node holds the connection. The
//! engines differ only in how they carry them (a Redis sharded channel,
//! NATS subjects); what a command says and what a node does with it is
//! here.

use herald_core::{
    BrokerError, ClusterNode, ConnectionRecord, ConnectionRef, DirectMessage, DirectTarget, Tenant,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::future::Future;

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
    /// Deliver a direct message to the target's connections on `node`.
    Direct {
        /// The node holding (some of) the target's connections.
        node: String,
        /// The connection or the user.
        target: DirectTarget,
        /// The message.
        message: DirectWire,
    },
}

/// A [`DirectMessage`] in a command. `data` travels as JSON text in a
/// string: a raw JSON value cannot be read back inside a tagged enum (serde
/// buffers its fields first), and parsing it into a value would reorder
/// its keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectWire {
    /// Event name.
    pub event: String,
    /// The payload's JSON text.
    pub data: String,
    /// When it was accepted, ms since the Unix epoch.
    pub ts: u64,
    /// Unique id of the message.
    pub event_id: String,
}

impl From<&DirectMessage> for DirectWire {
    fn from(m: &DirectMessage) -> Self {
        Self {
            event: m.event.clone(),
            data: m.data.get().to_owned(),
            ts: m.ts,
            event_id: m.event_id.clone(),
        }
    }
}

impl DirectWire {
    /// The message again; `None` when `data` is not JSON (a sender that is
    /// not Herald).
    fn into_message(self) -> Option<DirectMessage> {
        let data = RawValue::from_string(self.data).ok()?;
        Some(DirectMessage {
            event: self.event,
            data,
            ts: self.ts,
            event_id: self.event_id,
        })
    }
}

/// The registry lookups [`send_direct`] needs from an engine.
pub trait DirectRegistry: Sync {
    /// The record of connection `id` on a live node, if any.
    fn find_connection(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<ConnectionRecord>, BrokerError>> + Send;
    /// Every connection of `user` the registry lists on live nodes.
    fn list_user(
        &self,
        tenant: &Tenant,
        user: &str,
    ) -> impl Future<Output = Result<Vec<ConnectionRecord>, BrokerError>> + Send;
}

/// What [`send_direct`] did locally and leaves to the engine's carrier.
#[derive(Debug)]
pub struct DirectPlan {
    /// How many connections the registry listed for the target.
    pub listed: usize,
    /// One command per other node holding some of them.
    pub remote: Vec<ControlCommand>,
}

/// [`herald_core::Cluster::send_direct`] on node `node_id` up to the wire:
/// finds the target's connections in `registry`, delivers to the local
/// ones and returns the commands for the other nodes. `None` when the
/// target is one connection the registry does not list under that tenant
/// and user.
pub async fn send_direct(
    registry: &impl DirectRegistry,
    node_id: &str,
    node: Option<&dyn ClusterNode>,
    target: &DirectTarget,
    message: &DirectMessage,
) -> Result<Option<DirectPlan>, BrokerError> {
    let holders = match target {
        DirectTarget::Connection { connection_id, .. } => {
            match registry.find_connection(connection_id).await? {
                Some(r) if target.names(&r.tenant, &r.user_id, &r.connection_id) => vec![r],
                _ => return Ok(None),
            }
        }
        DirectTarget::User { tenant, user_id } => registry.list_user(tenant, user_id).await?,
    };
    let remote = direct(node_id, node, &holders, target, message);
    Ok(Some(DirectPlan {
        listed: holders.len(),
        remote,
    }))
}

/// [`herald_core::Cluster::send_direct`] on node `node_id`, once the
/// registry listed `holders` (the target's connections): delivers to the
/// local ones directly and returns one command per other node holding
/// some.
pub fn direct(
    node_id: &str,
    node: Option<&dyn ClusterNode>,
    holders: &[ConnectionRecord],
    target: &DirectTarget,
    message: &DirectMessage,
) -> Vec<ControlCommand> {
    let mut nodes: Vec<&str> = holders.iter().map(|r| r.node_id.as_str()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    let mut remote = Vec::new();
    for n in nodes {
        if n == node_id {
            if let Some(node) = node {
                node.deliver(target, message);
            }
        } else {
            remote.push(ControlCommand::Direct {
                node: n.to_owned(),
                target: target.clone(),
                message: DirectWire::from(message),
            });
        }
    }
    remote
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
        ControlCommand::Direct {
            node: target_node,
            target,
            message,
        } => {
            if target_node != node_id && !target_node.is_empty() {
                return;
            }
            match message.into_message() {
                Some(message) => {
                    node.deliver(&target, &message);
                }
                None => tracing::warn!("direct message with unreadable data ignored"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::NodeFigures;
    use parking_lot::Mutex;

    /// Records what it was asked to deliver.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(DirectTarget, String, String)>>);

    impl ClusterNode for Recorder {
        fn close_connection(&self, _: &str, _: u16) -> bool {
            false
        }
        fn close_user(&self, _: &Tenant, _: &str, _: u16) -> usize {
            0
        }
        fn snapshot(&self) -> Vec<(ConnectionRecord, Vec<(String, bool)>)> {
            Vec::new()
        }
        fn figures(&self) -> NodeFigures {
            NodeFigures::default()
        }
        fn deliver(&self, target: &DirectTarget, message: &DirectMessage) -> usize {
            self.0.lock().push((
                target.clone(),
                message.event.clone(),
                message.data.get().to_owned(),
            ));
            1
        }
    }

    fn held(node: &str, conn: &str) -> ConnectionRecord {
        ConnectionRecord {
            connection_id: conn.into(),
            tenant: Tenant::default_tenant(),
            user_id: "u".into(),
            node_id: node.into(),
            transport: "websocket".into(),
            rooms: Vec::new(),
            connected_at: 1,
        }
    }

    #[test]
    fn direct_messages_go_once_to_each_node_holding_the_target() {
        let message = DirectMessage {
            event: "note".into(),
            data: RawValue::from_string(r#"{"b":1,"a":[2]}"#.into()).expect("raw"),
            ts: 7,
            event_id: "e1".into(),
        };
        let target = DirectTarget::User {
            tenant: Tenant::default_tenant(),
            user_id: "u".into(),
        };
        let here = Recorder::default();
        let holders = [held("n1", "c1"), held("n2", "c2"), held("n2", "c3")];
        let remote = direct("n1", Some(&here), &holders, &target, &message);
        assert_eq!(here.0.lock().len(), 1, "local connections directly");
        assert_eq!(remote.len(), 1, "one command for n2's two connections");
        let json = serde_json::to_vec(&remote[0]).expect("json");
        let there = Recorder::default();
        execute("n3", &there, &json);
        assert!(there.0.lock().is_empty(), "not for n3");
        execute("n2", &there, &json);
        let got = there.0.lock().clone();
        assert_eq!(
            got,
            vec![(target, "note".to_owned(), r#"{"b":1,"a":[2]}"#.to_owned())],
            "data arrives verbatim"
        );
    }

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
