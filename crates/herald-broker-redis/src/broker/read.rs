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
use herald_core::{BrokerError, RoomKey};
use herald_engine_kit::history::{Page, MAX_READ};
use herald_protocol::StreamPosition;

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
            self.read_script.refused();
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
