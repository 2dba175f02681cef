//! The engine epoch: one epoch at a time, shared by every node, that a
//! room without messages starts in and that reads of such a room report
//! (offset 0), kept in the key-value bucket `<prefix>-epoch` as
//! `<epoch> <deadline ms>`.
//!
//! Why a room never reuses positions: a room keeps its epoch as long as
//! its last message lives, at least `broker.nats_max_age` after its last
//! publish (the stream's `max_age`; the storage bound always keeps a
//! room's last message). An engine epoch is used for new rooms only until
//! its deadline, [`epoch_life`] (less than `max_age`) after it was made,
//! and a node uses one only [`RECHECK`] after seeing at least
//! [`LEAST_LEFT`] of it left; so once a room's last message is gone, the
//! engine epoch has changed. A stream created anew (first start, deleted,
//! or lost with the server's store) replaces the epoch at once.

use super::error::{internal, no_stream, unavailable};
use super::message::{new_epoch, now_ms};
use super::NatsBroker;
use bytes::Bytes;
use herald_core::BrokerError;
use std::time::{Duration, Instant};

/// How long a node uses an epoch after checking it.
const RECHECK: Duration = Duration::from_secs(5);
/// Life an epoch must have left when checked; more than [`RECHECK`].
const LEAST_LEFT: Duration = Duration::from_secs(15);
/// The key of the epoch in its bucket.
const KEY: &str = "engine";
/// Attempts at replacing an epoch that others replace at the same time.
const ATTEMPTS: usize = 5;

/// How long one engine epoch is used for new rooms: an hour, or half the
/// stream's `max_age` when that is shorter.
pub(super) fn epoch_life(max_age: Duration) -> Duration {
    Duration::from_secs(3600).min(max_age / 2)
}

fn parse(value: &[u8]) -> Option<(String, u64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (epoch, deadline) = text.split_once(' ')?;
    Some((epoch.to_owned(), deadline.parse().ok()?))
}

impl NatsBroker {
    fn fresh_value(&self) -> (String, Bytes) {
        let epoch = new_epoch();
        let life = u64::try_from(epoch_life(self.limits.max_age).as_millis()).unwrap_or(u64::MAX);
        let value = format!("{epoch} {}", now_ms().saturating_add(life));
        (epoch, Bytes::from(value))
    }

    /// The engine's current epoch, checked with NATS at most every
    /// [`RECHECK`].
    pub(super) async fn engine_epoch(&self) -> Result<String, BrokerError> {
        if let Some((epoch, until)) = &*self.engine_epoch.lock() {
            if Instant::now() < *until {
                return Ok(epoch.clone());
            }
        }
        let store = self.epoch_kv.lock().clone().ok_or_else(no_stream)?;
        let least = u64::try_from(LEAST_LEFT.as_millis()).unwrap_or(u64::MAX);
        for _ in 0..ATTEMPTS {
            let checked = Instant::now();
            let entry = store
                .entry(KEY)
                .await
                .map_err(|e| unavailable("reading the engine epoch", e))?;
            let current = entry.as_ref().and_then(|e| {
                (e.operation == async_nats::jetstream::kv::Operation::Put)
                    .then(|| parse(&e.value))
                    .flatten()
            });
            if let Some((epoch, deadline)) = current {
                if deadline.saturating_sub(now_ms()) >= least {
                    *self.engine_epoch.lock() = Some((epoch.clone(), checked + RECHECK));
                    return Ok(epoch);
                }
            }
            let (epoch, value) = self.fresh_value();
            let written = match &entry {
                Some(e) => store.update(KEY, value, e.revision).await.map(drop).is_ok(),
                None => store.create(KEY, value).await.map(drop).is_ok(),
            };
            if written {
                *self.engine_epoch.lock() = Some((epoch.clone(), checked + RECHECK));
                return Ok(epoch);
            }
            // Another node replaced it first: read theirs.
        }
        Err(internal("engine epoch", "replaced concurrently too often"))
    }

    /// Replaces the engine epoch (the stream was created anew).
    pub(super) async fn new_engine_epoch(&self) -> Result<(), BrokerError> {
        let store = self.epoch_kv.lock().clone().ok_or_else(no_stream)?;
        let (epoch, value) = self.fresh_value();
        store
            .put(KEY, value)
            .await
            .map_err(|e| unavailable("writing the engine epoch", e))?;
        tracing::info!(epoch = %epoch, "new engine epoch");
        self.forget_engine_epoch();
        Ok(())
    }

    /// Drops the cached engine epoch: the next use checks it with NATS.
    pub(super) fn forget_engine_epoch(&self) {
        *self.engine_epoch.lock() = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_live_less_than_the_stream_keeps_messages() {
        assert_eq!(
            epoch_life(Duration::from_secs(86_400)),
            Duration::from_secs(3600)
        );
        assert_eq!(
            epoch_life(Duration::from_secs(1200)),
            Duration::from_secs(600)
        );
        assert_eq!(parse(b"00ff 12"), Some(("00ff".into(), 12)));
        assert_eq!(parse(b"junk"), None);
    }
}
