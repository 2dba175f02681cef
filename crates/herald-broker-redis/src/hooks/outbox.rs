//! The outbox proper: appending, the dispatch lease, reading after the
//! cursor and acknowledging.

use super::{int, RedisHooks, APPEND_CHUNK, POLL};
use crate::cluster::redis_error;
use async_trait::async_trait;
use fred::types::Value;
use herald_core::{BrokerError, HookEvent, Outbox, OutboxEntry};
use metrics::{counter, describe_counter, describe_gauge, gauge};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const LEASE_HELD: &str = "herald_webhook_lease_held";
const LEASE_TAKEN: &str = "herald_webhook_lease_acquired_total";
/// The dispatcher's drop counter; the outbox's bound adds `outbox_full`.
const DROPPED: &str = "herald_webhook_events_dropped_total";

fn describe() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        describe_gauge!(
            LEASE_HELD,
            "1 while this node holds the cluster-wide webhook dispatch lease"
        );
        describe_counter!(
            LEASE_TAKEN,
            "Times this node took the webhook dispatch lease"
        );
        counter!(LEASE_TAKEN).increment(0);
        gauge!(LEASE_HELD).set(0.0);
    });
}

/// An outbox entry id `ms-seq`, as numbers for ordering.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// The entries of an XRANGE reply (`[[id, [field, value, ...]], ...]`);
/// `None` for nil (the token does not hold the lease).
fn entries(reply: Value) -> Result<Option<Vec<OutboxEntry>>, BrokerError> {
    let bad = |what: &str| BrokerError::Internal(format!("bad outbox reply: {what}"));
    let items = match reply {
        Value::Null => return Ok(None),
        Value::Array(items) => items,
        _ => return Err(bad("not an array")),
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(mut parts) = item else {
            return Err(bad("entry is not an array"));
        };
        if parts.len() != 2 {
            return Err(bad("entry is not [id, fields]"));
        }
        let fields = parts.pop().unwrap_or(Value::Null);
        let cursor = parts
            .pop()
            .and_then(|v| v.as_string())
            .ok_or_else(|| bad("entry id"))?;
        let Value::Array(fields) = fields else {
            return Err(bad("entry fields"));
        };
        let (mut time_ms, mut body) = (0, None);
        for pair in fields.chunks(2) {
            match (pair[0].as_str().as_deref(), pair.get(1)) {
                (Some("t"), Some(v)) => time_ms = v.as_u64().unwrap_or(0),
                (Some("b"), Some(v)) => {
                    body = v.as_bytes().map(bytes::Bytes::copy_from_slice);
                }
                _ => {}
            }
        }
        match body {
            Some(body) => out.push(OutboxEntry {
                cursor,
                time_ms,
                body,
            }),
            // Nothing this engine wrote; skipped (and acked with the rest).
            None => tracing::warn!(entry = %cursor, "outbox entry without a body skipped"),
        }
    }
    Ok(Some(out))
}

impl RedisHooks {
    /// Starts the lease task (taking, renewing and, on `cancel`, giving up
    /// the dispatch lease). With webhooks off nothing starts.
    pub fn spawn(self: &Arc<Self>, cancel: CancellationToken, tasks: &TaskTracker) {
        if self.set.is_empty() {
            return;
        }
        describe();
        tasks.spawn(self.clone().lease_loop(cancel));
    }

    /// Whether this process may read as the lease holder now.
    fn holding(&self) -> bool {
        self.held_until
            .lock()
            .is_some_and(|until| Instant::now() < until)
    }

    /// Forgets the lease at once (Redis says another process holds it).
    fn lost(&self) {
        if self.held_until.lock().take().is_some() {
            gauge!(LEASE_HELD).set(0.0);
            tracing::info!("webhook dispatch lease lost");
        }
    }

    async fn lease_loop(self: Arc<Self>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.lease_renew());
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            if self.check().is_err() {
                continue;
            }
            let asked = Instant::now();
            let reply: Result<Vec<u64>, _> = self
                .scripts
                .lease
                .run(
                    &self.clients.commands,
                    vec![
                        self.keys.hooks_lease(),
                        self.keys.hooks_stream(),
                        self.keys.hooks_trimmed(),
                    ],
                    vec![
                        self.token.clone().into(),
                        int(self.lease_ttl.as_millis() as u64),
                    ],
                )
                .await
                .and_then(|v| v.convert());
            match reply.as_deref() {
                Ok([held, len, trimmed]) => {
                    self.backlog.store(*len, Ordering::Relaxed);
                    if *trimmed > 0 {
                        counter!(DROPPED, "reason" => "outbox_full").increment(*trimmed);
                        tracing::warn!(
                            events = trimmed,
                            bound = self.max_len,
                            "webhook outbox full: its oldest unsent events were dropped"
                        );
                    }
                    if *held == 1 {
                        // Counted from before the request: the lease in
                        // Redis lives at least this long from then on.
                        let until = asked + self.lease_ttl - self.lease_margin();
                        if self.held_until.lock().replace(until).is_none() {
                            counter!(LEASE_TAKEN).increment(1);
                            gauge!(LEASE_HELD).set(1.0);
                            tracing::info!(backlog = len, "webhook dispatch lease taken");
                            self.wake.notify_one();
                        }
                    } else {
                        self.lost();
                    }
                }
                Ok(other) => tracing::warn!(reply = ?other, "unexpected lease reply"),
                // Not renewed: the holder keeps reading until its own
                // deadline passes, never past the lease's TTL.
                Err(e) => tracing::debug!(error = %e, "webhook lease round failed"),
            }
        }
        // Shutting down: hand the lease over now rather than after its TTL.
        let held = self.held_until.lock().take().is_some();
        if held {
            gauge!(LEASE_HELD).set(0.0);
            let release = self.scripts.release.run(
                &self.clients.commands,
                vec![self.keys.hooks_lease()],
                vec![self.token.clone().into()],
            );
            if let Err(e) = tokio::time::timeout(Duration::from_secs(2), release).await {
                tracing::debug!(error = %e, "webhook lease not released; it expires");
            }
        }
    }

    /// One read after the cursor, as the holder; `None` when Redis says
    /// this process does not hold the lease.
    async fn read(&self, max: usize) -> Result<Option<Vec<OutboxEntry>>, BrokerError> {
        self.check()?;
        let reply = self
            .scripts
            .read
            .run(
                &self.clients.commands,
                vec![
                    self.keys.hooks_lease(),
                    self.keys.hooks_cursor(),
                    self.keys.hooks_stream(),
                ],
                vec![self.token.clone().into(), int(max as u64)],
            )
            .await
            .map_err(redis_error)?;
        entries(reply)
    }

    /// Appends already serialized events (`(time_ms, json)`) in order,
    /// [`APPEND_CHUNK`] per atomic script call.
    async fn append_bodies(&self, bodies: &[(u64, bytes::Bytes)]) -> Result<(), BrokerError> {
        self.check()?;
        for chunk in bodies.chunks(APPEND_CHUNK) {
            let mut args: Vec<Value> = Vec::with_capacity(1 + chunk.len() * 2);
            args.push(int(self.max_len));
            for (t, body) in chunk {
                args.push(int(*t));
                args.push(Value::Bytes(body.clone()));
            }
            self.scripts
                .append
                .run(
                    &self.clients.commands,
                    vec![self.keys.hooks_stream(), self.keys.hooks_trimmed()],
                    args,
                )
                .await
                .map_err(redis_error)?;
        }
        self.wake.notify_one();
        Ok(())
    }
}

#[async_trait]
impl Outbox for RedisHooks {
    async fn append(&self, events: &[HookEvent]) -> Result<(), BrokerError> {
        if events.is_empty() {
            return Ok(());
        }
        let bodies: Vec<(u64, bytes::Bytes)> =
            events.iter().map(|e| (e.time_ms, e.to_bytes())).collect();
        self.append_bodies(&bodies).await
    }

    async fn next_batch(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<OutboxEntry>, BrokerError> {
        let deadline = Instant::now() + wait;
        loop {
            if max > 0 && self.holding() {
                match self.read(max).await? {
                    None => self.lost(),
                    Some(batch) if !batch.is_empty() => return Ok(batch),
                    Some(_) => {}
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let nap = POLL.min(deadline - now);
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }

    async fn ack(&self, acked: &[OutboxEntry]) -> Result<(), BrokerError> {
        let Some(last) = acked
            .iter()
            .filter_map(|e| parse_id(&e.cursor).map(|n| (n, &e.cursor)))
            .max()
        else {
            return Ok(());
        };
        self.check()?;
        let held: i64 = self
            .scripts
            .ack
            .run(
                &self.clients.commands,
                vec![
                    self.keys.hooks_lease(),
                    self.keys.hooks_cursor(),
                    self.keys.hooks_stream(),
                ],
                vec![self.token.clone().into(), last.1.clone().into()],
            )
            .await
            .and_then(|v| v.convert())
            .map_err(redis_error)?;
        if held == 0 {
            // Deposed meanwhile: the next holder sends these again (at
            // least once), and this process stops reading.
            self.lost();
        }
        Ok(())
    }

    fn backlog(&self) -> Option<u64> {
        match self.backlog.load(Ordering::Relaxed) {
            u64::MAX => None,
            n => Some(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_id;

    #[test]
    fn entry_ids_order_by_time_then_sequence() {
        assert!(parse_id("1700000000000-10") > parse_id("1700000000000-9"));
        assert!(parse_id("1700000000001-0") > parse_id("1700000000000-99"));
        assert_eq!(parse_id("nonsense"), None);
    }
}
