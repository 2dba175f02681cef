//! A room's local members: O(1) insert, removal and lookup by connection,
//! and a dense array for fan-out to iterate.
//!
//! A room like `global` holds every connection of the node; a reconnect
//! storm or a drain removes them all under the shard's write lock, so a
//! removal that scans (a `Vec` and `retain`) would make N leaves cost
//! O(N²) and stall fan-out for every room of the shard meanwhile. An
//! index map keyed by the connection removes by swapping the last member
//! into the hole: members are in no particular order, which fan-out does
//! not need.

use crate::conn::Connection;
use herald_core::Publication;
use herald_protocol::StreamPosition;
use indexmap::IndexMap;
use parking_lot::Mutex;
use std::sync::Arc;

/// One local member of a room.
pub(crate) struct Member {
    pub(crate) conn: Arc<Connection>,
    /// Epoch and offset announced in `room_joined`; live events at or below
    /// it in that epoch were covered by the join.
    pub(crate) start: StreamPosition,
    /// Publications seen while the join handshake runs.
    pub(crate) pending: Option<Mutex<Vec<Arc<Publication>>>>,
    /// Whether the room's other members were told `member_joined`: only
    /// they are told `member_left`, so a member removed while still
    /// joining (a leave during its replay) is never half-announced.
    pub(crate) announced: bool,
    /// While a rejoin of a live member runs: the `start` it had, so that a
    /// rejoin that fails turns it live again as it was (see
    /// [`crate::rooms::Rooms::abort_rejoin`]).
    pub(crate) before_rejoin: Option<StreamPosition>,
}

impl Member {
    /// A member whose join has just begun (pending).
    pub(crate) fn joining(conn: &Arc<Connection>) -> Self {
        Self {
            conn: conn.clone(),
            start: StreamPosition::default(),
            pending: Some(Mutex::new(Vec::new())),
            announced: false,
            before_rejoin: None,
        }
    }
}

/// A connection's identity as a map key: the address of its shared state.
/// The member holds the `Arc`, so no other connection can reuse the address
/// while the entry exists.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ConnKey(usize);

impl ConnKey {
    fn of(conn: &Arc<Connection>) -> Self {
        Self(Arc::as_ptr(conn) as usize)
    }
}

/// The local members of one room.
#[derive(Default)]
pub(crate) struct Members(IndexMap<ConnKey, Member>);

impl Members {
    /// Members, in no particular order.
    pub(crate) fn iter(&self) -> indexmap::map::Values<'_, ConnKey, Member> {
        self.0.values()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The entry of `conn`.
    pub(crate) fn get(&self, conn: &Arc<Connection>) -> Option<&Member> {
        self.0.get(&ConnKey::of(conn))
    }

    /// The entry of `conn`, to change.
    pub(crate) fn get_mut(&mut self, conn: &Arc<Connection>) -> Option<&mut Member> {
        self.0.get_mut(&ConnKey::of(conn))
    }

    /// Adds `member`, replacing an entry of the same connection; returns
    /// whether it is new.
    pub(crate) fn insert(&mut self, member: Member) -> bool {
        self.0.insert(ConnKey::of(&member.conn), member).is_none()
    }

    /// Removes the entry of `conn` in O(1) (the last member takes its place).
    pub(crate) fn remove(&mut self, conn: &Arc<Connection>) -> Option<Member> {
        self.0.swap_remove(&ConnKey::of(conn))
    }
}

impl<'a> IntoIterator for &'a Members {
    type Item = &'a Member;
    type IntoIter = indexmap::map::Values<'a, ConnKey, Member>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.values()
    }
}
