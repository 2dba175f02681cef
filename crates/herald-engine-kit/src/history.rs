//! A page of a room's stored history, as both engines read it.

use herald_core::{HistoryPage, Publication};
use herald_protocol::StreamPosition;
use std::sync::Arc;

/// Most publications one read returns; a longer page is cut (and reported
/// incomplete) so one request cannot pull a whole stream at once.
pub const MAX_READ: usize = 10_000;

/// A position and the stored publications after the requested offset.
pub struct Page {
    /// The room's position (its epoch and last offset).
    pub position: StreamPosition,
    /// The stored publications after the requested offset, oldest first.
    pub publications: Vec<Arc<Publication>>,
}

impl Page {
    /// The page as a [`HistoryPage`] answering a read after `since`, with
    /// whether it holds every event from there to the head.
    pub fn into_history(self, since: u64) -> HistoryPage {
        let complete = is_complete(since, self.position.offset, &self.publications);
        HistoryPage {
            position: self.position,
            publications: self.publications,
            complete,
        }
    }
}

/// Whether `publications` are every event after `since` up to the head.
pub fn is_complete(since: u64, head: u64, publications: &[Arc<Publication>]) -> bool {
    if since >= head {
        return since == head;
    }
    let mut expected = since + 1;
    for p in publications {
        if p.position.offset != expected {
            return false;
        }
        expected += 1;
    }
    expected == head + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{RoomKey, RoomName, Tenant};
    use serde_json::value::RawValue;

    fn at(offsets: &[u64]) -> Vec<Arc<Publication>> {
        offsets
            .iter()
            .map(|&o| {
                Arc::new(Publication {
                    room: RoomKey::new(
                        Tenant::default_tenant(),
                        RoomName::parse("r").expect("room"),
                    ),
                    position: StreamPosition::new("e", o),
                    event: "e".into(),
                    data: RawValue::from_string("{}".into()).expect("raw"),
                    ts: 0,
                    event_id: "id".into(),
                    from: None,
                    exclude_connection: None,
                    accepted_at: None,
                    encoded: Default::default(),
                    trace: None,
                    critical: false,
                    conflation_key: None,
                    policy: Default::default(),
                })
            })
            .collect()
    }

    #[test]
    fn completeness_follows_the_memory_engine() {
        assert!(is_complete(0, 0, &[]));
        assert!(!is_complete(1, 0, &[]), "beyond the head");
        assert!(is_complete(5, 5, &[]));
        assert!(is_complete(2, 5, &at(&[3, 4, 5])));
        assert!(!is_complete(1, 5, &at(&[3, 4, 5])), "offset 2 is gone");
        assert!(!is_complete(2, 5, &at(&[3, 4])), "the limit cut the page");
        assert!(!is_complete(2, 5, &at(&[3, 5])), "a hole");
        assert!(!is_complete(2, 5, &[]), "nothing stored");
    }
}
