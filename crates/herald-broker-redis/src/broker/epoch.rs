//! The engine epoch: one epoch at a time, shared by every node, that new
//! room streams start in and that reads of a room without a stream report
//! (offset 0). A reader told `(epoch, 0)` before a room had keys is then
//! consistent with the room's first publish, without the read writing
//! anything for the room.
//!
//! Why a room can never reuse positions: the epoch key lives
//! [`EPOCH_LIFE`] and is never extended; a room's meta hash, created in
//! that epoch, lives at least [`META_IDLE`] (as long) after its creation.
//! A node uses an epoch only [`RECHECK`] after seeing at least
//! [`LEAST_LEFT`] of its life left, so by the time a room's meta has
//! expired no node creates streams in that epoch any more, and the room's
//! next stream gets another one. (A stream key left without its meta, after
//! an eviction, also gets a random epoch: see `publish.lua`.)
//!
//! After Redis lost its data (a restart without persistence), rooms start
//! over and must not reuse the old epoch: the cached epoch is forgotten
//! whenever the command connection is seen down or reconnects (the reader
//! task watches its reconnect events), and in any case after [`RECHECK`].

use super::error::{from_redis, not_connected, unexpected};
use super::publish::{new_epoch, META_IDLE};
use super::RedisBroker;
use fred::interfaces::ClientLike;
use fred::types::Value;
use herald_core::BrokerError;
use std::time::{Duration, Instant};

/// How long one engine epoch is used for new streams.
const EPOCH_LIFE: Duration = META_IDLE;
/// How long a node uses an epoch after checking it.
const RECHECK: Duration = Duration::from_secs(5);
/// Life an epoch must have left when checked; more than [`RECHECK`].
const LEAST_LEFT: Duration = Duration::from_secs(15);

/// `epoch.lua`.
pub(super) const SCRIPT: &str = include_str!("epoch.lua");

impl RedisBroker {
    /// The engine's current epoch, checked with Redis at most every
    /// [`RECHECK`].
    pub(super) async fn engine_epoch(&self) -> Result<String, BrokerError> {
        if let Some((epoch, until)) = &*self.engine_epoch.lock() {
            if Instant::now() < *until {
                return Ok(epoch.clone());
            }
        }
        if !self.clients.commands.is_connected() {
            self.forget_engine_epoch();
            self.epoch_script.refused();
            return Err(not_connected());
        }
        let checked = Instant::now();
        let args = vec![
            Value::from(new_epoch()),
            Value::Integer(EPOCH_LIFE.as_millis() as i64),
            Value::Integer(LEAST_LEFT.as_millis() as i64),
        ];
        let reply = self
            .epoch_script
            .run(&self.clients.commands, vec![self.keys.engine_epoch()], args)
            .await
            .map_err(from_redis)?;
        let epoch = reply
            .as_string()
            .ok_or_else(|| unexpected("epoch script"))?;
        *self.engine_epoch.lock() = Some((epoch.clone(), checked + RECHECK));
        Ok(epoch)
    }

    /// Drops the cached engine epoch: the next use checks it with Redis.
    pub(super) fn forget_engine_epoch(&self) {
        *self.engine_epoch.lock() = None;
    }
}
