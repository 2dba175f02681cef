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

use super::publish::{Checkpoint, RoomState};
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
/// A room this node has not published to for this long is forgotten (its
/// state is small but rooms are many); what it still stores is bounded by
/// the stream's `max_age`, and a quiet room does not grow.
const FORGET_AFTER: Duration = Duration::from_secs(900);

/// The newest checkpoint every message below which may go: at least the
/// duplicate window old, and at or before the oldest event the room's size
/// keeps (`keep` events, at least 1, up to offset `head`).
fn purge_point<'a>(
    checkpoints: impl DoubleEndedIterator<Item = &'a Checkpoint>,
    keep: usize,
    head: u64,
    now: Instant,
) -> Option<Checkpoint> {
    let keep = keep.max(1) as u64;
    checkpoints
        .rev()
        .find(|c| now.duration_since(c.at) >= DEDUP_WINDOW && c.offset + keep <= head + 1)
        .copied()
}

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
        let keep = *state.keep.lock();
        let below = purge_point(
            state.checkpoints.lock().iter(),
            keep,
            last.position.offset,
            now,
        );
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
            if idle {
                let mut map = broker.published.map.lock();
                if map.get(&room).is_some_and(|s| Arc::ptr_eq(s, &state)) {
                    map.remove(&room);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_events_outside_the_size_window_go() {
        let now = Instant::now() + Duration::from_secs(3600);
        let at = |ago: u64, seq: u64, offset: u64| Checkpoint {
            at: now - Duration::from_secs(ago),
            seq,
            offset,
        };
        let cps = [at(900, 10, 5), at(600, 20, 10), at(200, 30, 15)];
        // The newest old enough one (the one 200 s old is too young).
        let p = purge_point(cps.iter(), 3, 20, now).expect("a point");
        assert_eq!(p.seq, 20);
        // A larger size keeps more: an older checkpoint, or none.
        assert_eq!(
            purge_point(cps.iter(), 14, 20, now).map(|c| c.seq),
            Some(10)
        );
        assert_eq!(purge_point(cps.iter(), 100, 20, now).map(|c| c.seq), None);
        // Size 0 still keeps the last event (it carries the offset).
        assert_eq!(purge_point(cps.iter(), 0, 10, now).map(|c| c.seq), Some(20));
        assert_eq!(purge_point([].iter(), 0, 10, now).map(|c| c.seq), None);
    }
}
