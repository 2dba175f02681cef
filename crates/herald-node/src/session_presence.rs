//! Presence inside a session: the members listed in `room_joined`, and the
//! `presence` request (an extension, docs/protocol.md 3.4) that asks for
//! them again later.

use crate::error::NodeError;
use crate::session::Session;
use herald_core::RoomKey;
use herald_protocol::{MemberSummary, RequestId, ServerFrame};

impl Session {
    /// The room's members, cluster-wide when the registry answers, else
    /// this node's.
    pub(crate) async fn members(&self, key: &RoomKey) -> Vec<MemberSummary> {
        match self.node.presence(key).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(room = %key, error = %e, "cluster presence unavailable");
                self.node.inner.rooms.members(key)
            }
        }
    }

    /// Answers `presence`: the members of a joined room with presence on.
    pub(crate) async fn presence(
        &mut self,
        id: Option<RequestId>,
        room: &str,
    ) -> Result<(), NodeError> {
        let (name, key) = self.room_key(room)?;
        if !self.conn.in_room(&name) {
            return Err(NodeError::NotJoined(name.to_string()));
        }
        if !self.node.namespaces().for_room(&name).presence {
            return Err(NodeError::BadRequest(format!(
                "presence is off in room `{name}` (its namespace's `presence` setting)"
            )));
        }
        let members = self.members(&key).await;
        self.reply(ServerFrame::Presence {
            id,
            room: name.to_string(),
            members,
        });
        Ok(())
    }
}
