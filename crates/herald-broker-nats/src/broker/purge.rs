//! The storage bound: the stream's `max_age` keeps every room's messages
//! for `broker.nats_max_age` after they were published; besides, every
//! node purges, now and then, the old messages of the rooms it publishes
//! to, keeping what reads may still want: the room's last
//! `max(history.size, 1)` events (the last one carries the room's offset)
//! and everything younger than the duplicate window (an idempotency key's
//! answer reads the original message).
//!
//! A purge removes one room's messages below a checkpoint: a stream
//! sequence this node's publish got at least the duplicate window ago,
//! whose offset is old enough to be outside the size window (so every
//! message purged is both). Other nodes' messages are covered too: they
//! are below the checkpoint in stream order, so older.

use super::publish::RoomState;
use super::setup::DEDUP_WINDOW;
use super::{metrics, NatsBroker};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the purge runs.
const PURGE_EVERY: Duration = Duration::from_secs(30);
/// How far apart a room's checkpoints are at least.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_secs(15);
/// Checkpoints kept per room (the oldest go first).
pub(super) const MAX_CHECKPOINTS: usize = 256;
/// A room this node has not published to for this long is forgotten once
/// nothing is left to purge.
const FORGET_AFTER: Duration = Duration::from_secs(900);

impl NatsBroker {
    /// Purges one room's old messages, if any may go; returns how many went.
    async fn purge_room(
        &self,
        room: &herald_core::RoomKey,
        state: &RoomState,
        now: Instant,
    ) -> Result<u64, String> {
        let Some(last) = state.last.lock().clone() else {
            return Ok(0);
        };
        let keep = (*state.keep.lock()).max(1) as u64;
        let below = {
            let checkpoints = state.checkpoints.lock();
            checkpoints
                .iter()
                .rev()
                .find(|c| {
                    now.duration_since(c.at) >= DEDUP_WINDOW
                        && c.offset + keep <= last.position.offset + 1
                })
                .copied()
        };
        let Some(below) = below else {
            return Ok(0);
        };
        let stream = self.stream_handle().map_err(|e| e.to_string())?;
        let purged = stream
            .purge()
            .filter(self.names.room_subject(room))
            .sequence(below.seq)
            .await
            .map_err(|e| e.to_string())?;
        state.checkpoints.lock().retain(|c| c.seq >= below.seq);
        Ok(purged.purged)
    }
}

/// The purge task: every [`PURGE_EVERY`], the rooms this node publishes to.
pub(super) async fn run(broker: Arc<NatsBroker>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(PURGE_EVERY) => {}
        }
        if broker.check_ready().is_err() {
            continue;
        }
        let rooms: Vec<_> = {
            let map = broker.published.map.lock();
            map.iter().map(|(r, s)| (r.clone(), s.clone())).collect()
        };
        let now = Instant::now();
        for (room, state) in rooms {
            if cancel.is_cancelled() {
                return;
            }
            match broker.purge_room(&room, &state, now).await {
                Ok(0) => {}
                Ok(n) => metrics::purged(n),
                Err(e) => tracing::debug!(room = %room, error = %e, "purge failed"),
            }
            let idle = state
                .used
                .lock()
                .is_none_or(|t| now.duration_since(t) > FORGET_AFTER);
            if idle && state.checkpoints.lock().len() <= 1 {
                let mut map = broker.published.map.lock();
                if map.get(&room).is_some_and(|s| Arc::ptr_eq(s, &state)) {
                    map.remove(&room);
                }
            }
        }
    }
}
