//! The lease holder's reading of the outbox stream: from the cursor on,
//! in stream order, waking on the stream's subject when it is idle.

use super::{hooks_error, metrics, NatsOutbox};
use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::Subscriber;
use futures_util::future::join_all;
use futures_util::StreamExt;
use herald_core::{BrokerError, OutboxEntry};
use serde::Deserialize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// The most events read in one batch, whatever the caller asks.
const MAX_BATCH: usize = 500;
/// How often an idle holder looks at the stream even without a doorbell
/// (a message published while the subscription was being made).
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Where the holder reads.
pub(super) struct Reader {
    /// The lease generation it was made under.
    generation: u64,
    /// The next stream sequence to hand out.
    next: u64,
    /// While idle: every event published to the stream's subject says
    /// "look again". Dropped as soon as it rang, so a busy holder buffers
    /// no copies of the events it reads from the stream anyway.
    doorbell: Option<Subscriber>,
}

/// The one field of an event the outbox needs.
#[derive(Deserialize)]
struct Stamp {
    time_ms: u64,
}

impl NatsOutbox {
    /// [`herald_core::Outbox::next_batch`]: up to `max` entries after the
    /// cursor for the lease holder, waiting at most `wait` for one; an
    /// empty batch after `wait` for every other node.
    pub(super) async fn read_batch(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<OutboxEntry>, BrokerError> {
        let deadline = Instant::now() + wait;
        let max = max.clamp(1, MAX_BATCH);
        let mut guard = self.reader.lock().await;
        loop {
            let Some(held) = self.held() else {
                // Not the holder: no doorbell, no reads.
                *guard = None;
                tokio::time::sleep_until(deadline).await;
                return Ok(Vec::new());
            };
            let generation = self.generation.load(Ordering::Acquire);
            if guard.as_ref().is_none_or(|r| r.generation != generation) {
                *guard = Some(Reader {
                    generation,
                    next: held.cursor + 1,
                    doorbell: None,
                });
            }
            let Some(reader) = guard.as_mut() else {
                continue;
            };
            // Acked entries are behind the cursor, whoever acked them.
            reader.next = reader.next.max(held.cursor + 1);
            let batch = tokio::time::timeout(self.command_timeout * 2, self.read_from(reader, max))
                .await
                .unwrap_or_else(|_| Err(hooks_error("reading", "timed out")))?;
            if !batch.is_empty() {
                reader.doorbell = None;
                // Handed out only while the lease still holds.
                return Ok(if self.held().is_some() {
                    batch
                } else {
                    Vec::new()
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let Some(doorbell) = reader.doorbell.as_mut() else {
                // Subscribed (and the subscription known to the server)
                // before the stream is read again: nothing slips between.
                let client = &self.clients.client;
                let sub = client
                    .subscribe(self.names.hooks_subject())
                    .await
                    .map_err(|e| hooks_error("subscribing to the outbox", e))?;
                tokio::time::timeout(self.command_timeout, client.flush())
                    .await
                    .map_err(|_| hooks_error("subscribing to the outbox", "timed out"))?
                    .map_err(|e| hooks_error("subscribing to the outbox", e))?;
                reader.doorbell = Some(sub);
                continue;
            };
            let nap = (deadline - now).min(IDLE_CHECK);
            tokio::select! {
                _ = doorbell.next() => reader.doorbell = None,
                () = tokio::time::sleep(nap) => {}
            }
        }
    }

    /// Reads up to `max` entries from `reader.next` on, and moves it past
    /// them.
    async fn read_from(
        &self,
        reader: &mut Reader,
        max: usize,
    ) -> Result<Vec<OutboxEntry>, BrokerError> {
        let stream = self.stream().await?;
        let info = stream.get_info().await.map_err(|e| {
            self.stream_lost();
            hooks_error("reading the stream", e)
        })?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        if first > reader.next && info.state.messages > 0 {
            // Gone before delivery: the stream's bound (max_age, max_msgs).
            let lost = first - reader.next;
            metrics::lost(lost);
            tracing::warn!(
                lost,
                "webhook events expired from the outbox before delivery"
            );
            reader.next = first;
        }
        self.last_seq.store(last, Ordering::Relaxed);
        if last < reader.next {
            return Ok(Vec::new());
        }
        let upto = last.min(reader.next + max as u64 - 1);
        let reads = (reader.next..=upto).map(|seq| {
            let stream = &stream;
            async move { (seq, stream.direct_get(seq).await) }
        });
        let mut out = Vec::new();
        for (seq, read) in join_all(reads).await {
            match read {
                Ok(m) => {
                    let time_ms = serde_json::from_slice::<Stamp>(&m.payload)
                        .map(|s| s.time_ms)
                        .unwrap_or_else(|_| {
                            (m.time.unix_timestamp_nanos() / 1_000_000).max(0) as u64
                        });
                    out.push(OutboxEntry {
                        cursor: seq.to_string(),
                        time_ms,
                        body: m.payload,
                    });
                }
                // Expired or dropped meanwhile.
                Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => metrics::lost(1),
                Err(e) => return Err(hooks_error("reading an event", e)),
            }
        }
        reader.next = upto + 1;
        Ok(out)
    }
}
