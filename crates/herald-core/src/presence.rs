//! The presence contract: who is in a room with presence on, cluster-wide.
//!
//! The node tells its engine's [`Presence`] about every join and leave of a
//! presence room ([`Presence::announce`]) and asks it for a room's members
//! ([`Presence::members`]). Changes announced by other nodes come back
//! through the node's [`PresenceSink`], which tells the local members. An
//! engine serving one node has nobody to tell: [`LocalPresence`] answers
//! from the node's own members.

use crate::{BrokerError, MemberRecord, RoomKey};
use async_trait::async_trait;
use std::sync::Arc;

/// A connection joined or left a room with presence on, announced to the
/// other nodes holding members of that room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceChange {
    /// The room.
    pub room: RoomKey,
    /// True for `member_joined`, false for `member_left`.
    pub joined: bool,
    /// The member's user.
    pub user_id: String,
    /// The member's connection.
    pub connection_id: String,
    /// The node holding the connection.
    pub node_id: String,
}

/// An engine's presence (see the module docs).
///
/// Contract: a change announced by one node reaches every other node
/// listening to the room (subscribed through the engine's broker), in order
/// with the room's publications where the engine can, and never its origin.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Tells the other nodes' members of `change.room` about a join or a
    /// leave (this node's members are told by the node itself).
    async fn announce(&self, change: &PresenceChange) -> Result<(), BrokerError>;

    /// The room's members on every node.
    async fn members(&self, room: &RoomKey) -> Result<Vec<MemberRecord>, BrokerError>;
}

/// The node's side of presence: where an engine hands changes announced by
/// other nodes, and the node's own members.
///
/// Contract: `changed` must not block (it queues frames, like
/// [`crate::PublicationSink::deliver`]).
pub trait PresenceSink: Send + Sync + 'static {
    /// A presence change announced by another node: tell the local members.
    fn changed(&self, change: &PresenceChange);

    /// This node's members of `room` (rooms with presence on).
    fn local_members(&self, room: &RoomKey) -> Vec<MemberRecord>;
}

/// Presence of an engine serving one node: nothing to announce, and the
/// node's own members are all the members.
pub struct LocalPresence {
    sink: Arc<dyn PresenceSink>,
}

impl LocalPresence {
    /// Presence answered from `sink`'s local members.
    pub fn new(sink: Arc<dyn PresenceSink>) -> Self {
        Self { sink }
    }
}

#[async_trait]
impl Presence for LocalPresence {
    async fn announce(&self, _change: &PresenceChange) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn members(&self, room: &RoomKey) -> Result<Vec<MemberRecord>, BrokerError> {
        Ok(self.sink.local_members(room))
    }
}
