//! The memory engine's webhook outbox: a bounded queue in the node's
//! memory. One node, so it always holds the dispatch lease; what it holds
//! is lost if the process dies (a cluster engine's outbox is durable).

use async_trait::async_trait;
use herald_core::{BrokerError, HookEvent, Outbox, OutboxEntry};
use parking_lot::Mutex;
use std::collections::{HashSet, VecDeque};
use std::time::Duration;
use tokio::sync::Notify;

/// How many events the memory outbox holds by default; beyond it the oldest
/// are dropped (counted in `herald_webhook_events_dropped_total{reason=
/// "backlog_full"}`), so a receiver that is down for long costs bounded
/// memory and never blocks the node.
pub const DEFAULT_OUTBOX_CAPACITY: usize = 100_000;

struct Stored {
    seq: u64,
    time_ms: u64,
    body: bytes::Bytes,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Stored>,
    next_seq: u64,
}

/// A bounded in-memory [`Outbox`] (see the module docs).
pub struct MemoryOutbox {
    state: Mutex<State>,
    capacity: usize,
    appended: Notify,
}

impl MemoryOutbox {
    /// An empty outbox holding at most `capacity` events (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            appended: Notify::new(),
        }
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take(&self, max: usize) -> Vec<OutboxEntry> {
        self.state
            .lock()
            .queue
            .iter()
            .take(max)
            .map(|s| OutboxEntry {
                cursor: s.seq.to_string(),
                time_ms: s.time_ms,
                body: s.body.clone(),
            })
            .collect()
    }
}

impl Default for MemoryOutbox {
    fn default() -> Self {
        Self::new(DEFAULT_OUTBOX_CAPACITY)
    }
}

#[async_trait]
impl Outbox for MemoryOutbox {
    async fn append(&self, events: &[HookEvent]) -> Result<(), BrokerError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut dropped = Vec::new();
        {
            let mut state = self.state.lock();
            for event in events {
                let seq = state.next_seq;
                state.next_seq += 1;
                state.queue.push_back(Stored {
                    seq,
                    time_ms: event.time_ms,
                    body: event.to_bytes(),
                });
            }
            while state.queue.len() > self.capacity {
                if let Some(old) = state.queue.pop_front() {
                    dropped.push(old);
                }
            }
        }
        if !dropped.is_empty() {
            metrics::counter!("herald_webhook_events_dropped_total", "reason" => "backlog_full")
                .increment(dropped.len() as u64);
            tracing::warn!(
                dropped = dropped.len(),
                capacity = self.capacity,
                "webhook outbox full: oldest events dropped"
            );
        }
        self.appended.notify_one();
        Ok(())
    }

    async fn next_batch(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<OutboxEntry>, BrokerError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before looking, so an append between the look and
            // the wait still wakes us.
            let notified = self.appended.notified();
            let batch = self.take(max.max(1));
            if !batch.is_empty() {
                return Ok(batch);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack(&self, entries: &[OutboxEntry]) -> Result<(), BrokerError> {
        let mut acked: HashSet<u64> = entries
            .iter()
            .filter_map(|e| e.cursor.parse().ok())
            .collect();
        let mut state = self.state.lock();
        // Batches are acked from the front, in O(batch); only what is left
        // (entries dropped meanwhile) costs a pass over the queue.
        while let Some(front) = state.queue.front() {
            if !acked.remove(&front.seq) {
                break;
            }
            state.queue.pop_front();
        }
        if !acked.is_empty() {
            state.queue.retain(|s| !acked.contains(&s.seq));
        }
        Ok(())
    }

    fn backlog(&self) -> Option<u64> {
        Some(self.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::{HookKind, Tenant};

    fn event(i: u64) -> HookEvent {
        let mut e = HookEvent::user_online(&Tenant::default_tenant(), &format!("u{i}"));
        e.time_ms = i;
        e
    }

    #[tokio::test]
    async fn batches_come_oldest_first_until_acked() {
        let outbox = MemoryOutbox::new(10);
        outbox
            .append(&[event(1), event(2), event(3)])
            .await
            .expect("append");
        let batch = outbox
            .next_batch(2, Duration::from_millis(10))
            .await
            .expect("batch");
        assert_eq!(batch.iter().map(|e| e.time_ms).collect::<Vec<_>>(), [1, 2]);
        // Not acked: handed out again.
        let again = outbox
            .next_batch(2, Duration::from_millis(10))
            .await
            .expect("batch");
        assert_eq!(again, batch);
        outbox.ack(&batch).await.expect("ack");
        let rest = outbox
            .next_batch(5, Duration::from_millis(10))
            .await
            .expect("batch");
        assert_eq!(rest.len(), 1);
        let parsed: HookEvent = serde_json::from_slice(&rest[0].body).expect("json");
        assert_eq!(parsed.kind, HookKind::UserOnline);
        assert_eq!(parsed.field_str("user_id"), Some("u3"));
    }

    #[tokio::test]
    async fn a_full_outbox_drops_the_oldest() {
        let outbox = MemoryOutbox::new(2);
        outbox
            .append(&[event(1), event(2), event(3)])
            .await
            .expect("append");
        assert_eq!(outbox.backlog(), Some(2));
        let batch = outbox
            .next_batch(5, Duration::from_millis(10))
            .await
            .expect("batch");
        assert_eq!(batch.iter().map(|e| e.time_ms).collect::<Vec<_>>(), [2, 3]);
    }

    #[tokio::test]
    async fn an_empty_outbox_answers_after_the_wait_or_at_the_first_append() {
        let outbox = std::sync::Arc::new(MemoryOutbox::default());
        let empty = outbox
            .next_batch(5, Duration::from_millis(20))
            .await
            .expect("batch");
        assert!(empty.is_empty());
        let writer = outbox.clone();
        let waiting = tokio::spawn(async move {
            writer
                .next_batch(5, Duration::from_secs(10))
                .await
                .expect("batch")
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        outbox.append(&[event(9)]).await.expect("append");
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken before the wait ran out")
            .expect("task");
        assert_eq!(got.len(), 1);
    }
}
