//! A connection's bounded send queue.
//!
//! Fan-out pushes without waiting; the connection's writer drains it in
//! batches. A push that would pass either bound does not wait either: it
//! reports an overflow and the connection is cut (4011), so one slow client
//! never slows anyone else.

use bytes::Bytes;
use herald_core::Publication;
use herald_protocol::CloseCode;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::Notify;

/// One item for a connection's writer.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A JSON text frame.
    Frame {
        /// The frame's JSON, shared between recipients.
        bytes: Bytes,
        /// The room event this frame carries, if it is one: its position
        /// (SSE ids) and acceptance time (latency histogram).
        publication: Option<Arc<Publication>>,
    },
    /// A keep-alive (a WebSocket ping, an SSE comment).
    Ping,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushResult {
    /// Queued.
    Queued,
    /// The queue is full; the caller should cut the connection.
    Overflow,
    /// The connection is closing; the frame was dropped.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Outbound>,
    bytes: usize,
    closing: Option<CloseCode>,
}

/// A bounded, single-consumer queue of outbound frames.
#[derive(Debug)]
pub struct SendQueue {
    state: Mutex<State>,
    /// Wakes the one writer waiting in `next_batch`.
    notify: Notify,
    /// Wakes everyone waiting in `closed`; kept apart from `notify` so a
    /// close watcher can never swallow a wake-up meant for the writer.
    close_notify: Notify,
    max_items: usize,
    max_bytes: usize,
}

impl SendQueue {
    /// A queue holding at most `max_items` frames and `max_bytes` bytes.
    pub fn new(max_items: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            close_notify: Notify::new(),
            max_items: max_items.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    /// Queues a frame unless that would pass a bound.
    pub fn push(&self, item: Outbound) -> PushResult {
        let len = match &item {
            Outbound::Frame { bytes, .. } => bytes.len(),
            Outbound::Ping => 0,
        };
        {
            let mut s = self.state.lock();
            if s.closing.is_some() {
                return PushResult::Closed;
            }
            if s.items.len() >= self.max_items || s.bytes + len > self.max_bytes {
                return PushResult::Overflow;
            }
            s.bytes += len;
            s.items.push_back(item);
        }
        self.notify.notify_one();
        PushResult::Queued
    }

    /// Queues a control frame (no latency tracking).
    pub fn push_frame(&self, bytes: Bytes) -> PushResult {
        self.push(Outbound::Frame {
            bytes,
            publication: None,
        })
    }

    /// Marks the queue closing with `code`. The first call wins and returns
    /// true. For a slow consumer the queued frames are dropped, since the
    /// client is not reading them; otherwise they are still written first.
    pub fn close(&self, code: CloseCode) -> bool {
        let first = {
            let mut s = self.state.lock();
            if s.closing.is_some() {
                false
            } else {
                s.closing = Some(code);
                if code == CloseCode::SlowConsumer {
                    s.items.clear();
                    s.bytes = 0;
                }
                true
            }
        };
        if first {
            self.notify.notify_one();
            self.close_notify.notify_waiters();
        }
        first
    }

    /// The close code, once closing.
    pub fn closing(&self) -> Option<CloseCode> {
        self.state.lock().closing
    }

    /// Number of queued frames.
    pub fn len(&self) -> usize {
        self.state.lock().items.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for work, then moves every queued item into `batch`. Returns
    /// the close code once the queue is closing and drained.
    pub async fn next_batch(&self, batch: &mut Vec<Outbound>) -> Option<CloseCode> {
        loop {
            {
                let mut s = self.state.lock();
                if !s.items.is_empty() {
                    batch.extend(s.items.drain(..));
                    s.bytes = 0;
                    return None;
                }
                if let Some(code) = s.closing {
                    return Some(code);
                }
            }
            self.notify.notified().await;
        }
    }

    /// Resolves once the queue is closing.
    pub async fn closed(&self) -> CloseCode {
        loop {
            // Registered before the check, so a close between the check
            // and the wait is not missed (`notify_waiters` keeps no permit).
            let notified = self.close_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(code) = self.closing() {
                return code;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> Outbound {
        Outbound::Frame {
            bytes: Bytes::from(vec![b'x'; n]),
            publication: None,
        }
    }

    #[test]
    fn bounds_by_items_and_bytes() {
        let q = SendQueue::new(2, 100);
        assert_eq!(q.push(frame(10)), PushResult::Queued);
        assert_eq!(q.push(frame(10)), PushResult::Queued);
        assert_eq!(q.push(frame(10)), PushResult::Overflow);
        let q = SendQueue::new(10, 15);
        assert_eq!(q.push(frame(10)), PushResult::Queued);
        assert_eq!(q.push(frame(10)), PushResult::Overflow);
    }

    #[tokio::test]
    async fn drains_in_batches_then_reports_close() {
        let q = SendQueue::new(10, 1000);
        q.push(frame(1));
        q.push(frame(2));
        let mut batch = Vec::new();
        assert_eq!(q.next_batch(&mut batch).await, None);
        assert_eq!(batch.len(), 2);
        assert!(q.close(CloseCode::Normal));
        assert!(!q.close(CloseCode::Stale), "first close wins");
        assert_eq!(q.push(frame(1)), PushResult::Closed);
        batch.clear();
        assert_eq!(q.next_batch(&mut batch).await, Some(CloseCode::Normal));
    }

    /// A task watching for the close must not take the writer's wake-up:
    /// the writer waits in `next_batch` while frames arrive one by one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_watcher_does_not_steal_writer_wakeups() {
        use std::sync::Arc;
        use std::time::Duration;
        let q = Arc::new(SendQueue::new(100, 10_000));
        let watcher = {
            let q = q.clone();
            tokio::spawn(async move { q.closed().await })
        };
        let writer = {
            let q = q.clone();
            tokio::spawn(async move {
                let mut seen = 0;
                let mut batch = Vec::new();
                while q.next_batch(&mut batch).await.is_none() {
                    seen += batch.len();
                    batch.clear();
                }
                seen
            })
        };
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(2)).await;
            q.push(frame(1));
        }
        // Every frame must reach the writer without another push.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !q.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(q.is_empty(), "a frame was left waiting for a wake-up");
        q.close(CloseCode::Normal);
        let seen = tokio::time::timeout(Duration::from_secs(2), writer)
            .await
            .expect("writer ends")
            .expect("join");
        assert_eq!(seen, 50);
        let code = tokio::time::timeout(Duration::from_secs(2), watcher)
            .await
            .expect("watcher woken")
            .expect("join");
        assert_eq!(code, CloseCode::Normal);
    }

    #[test]
    fn slow_consumer_close_drops_backlog() {
        let q = SendQueue::new(10, 1000);
        q.push(frame(5));
        q.close(CloseCode::SlowConsumer);
        assert!(q.is_empty());
    }
}
