//! Reading a room's stream: its position and the stored publications
//! after an offset, both in one atomic script that writes nothing. A room
//! without a stream reads as offset 0 in the engine epoch (see `epoch`),
//! the epoch its first publish will start it in.

use super::error::{from_redis, not_connected, unexpected};
use super::publish::now_ms;
use super::RedisBroker;
use crate::wire::{decode_room_message, RoomMessage};
use fred::interfaces::ClientLike;
use fred::types::Value;
use herald_core::{BrokerError, Publication, RoomKey};
use herald_protocol::StreamPosition;
use std::sync::Arc;

/// Most publications one read returns; a longer page is cut (and reported
/// incomplete) so one request cannot pull a whole stream at once.
pub(super) const MAX_READ: usize = 10_000;

/// A position and the stored publications after the requested offset.
pub(super) struct Page {
    pub(super) position: StreamPosition,
    pub(super) publications: Vec<Arc<Publication>>,
}

/// Whether `publications` are every event after `since` up to the head:
/// the same rule as the memory engine (nothing trimmed or expired after
/// `since`, no hole, and the limit did not cut the page).
pub(super) fn is_complete(since: u64, head: u64, publications: &[Arc<Publication>]) -> bool {
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

impl RedisBroker {
    /// The room's position and up to `limit` stored publications after
    /// `since`, oldest first.
    pub(super) async fn read(
        &self,
        room: &RoomKey,
        since: u64,
        limit: usize,
    ) -> Result<Page, BrokerError> {
        if !self.clients.commands.is_connected() {
            self.forget_engine_epoch();
            return Err(not_connected());
        }
        let empty_epoch = self.engine_epoch().await?;
        let keys = vec![self.keys.room_meta(room), self.keys.room_stream(room)];
        let limit = limit.min(MAX_READ);
        let args = vec![
            Value::from(empty_epoch),
            Value::from(since.to_string()),
            Value::Integer(limit as i64),
            Value::Integer(i64::try_from(now_ms()).unwrap_or(i64::MAX)),
        ];
        let reply = self
            .read_script
            .run(&self.clients.commands, keys, args)
            .await
            .map_err(from_redis)?;
        let mut reply = reply.into_array().into_iter();
        let (Some(epoch), Some(offset)) = (
            reply.next().and_then(|v| v.as_string()),
            reply.next().and_then(|v| v.as_u64()),
        ) else {
            return Err(unexpected("read script"));
        };
        let mut publications = Vec::with_capacity(reply.len());
        for entry in reply {
            let decoded = entry.as_bytes().map(decode_room_message);
            match decoded {
                Some(Ok(RoomMessage::Publication(p, _))) => publications.push(p),
                // A corrupt entry shows as a hole: the page is incomplete.
                other => tracing::warn!(room = %room, entry = ?other, "unreadable stream entry"),
            }
        }
        Ok(Page {
            position: StreamPosition::new(epoch, offset),
            publications,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{RoomName, Tenant};
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
