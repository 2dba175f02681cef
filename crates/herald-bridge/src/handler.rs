//! What every bridge does with one message: build the publish body, hand
//! it to the node, count the outcome and log failures without flooding the
//! log.

use crate::message::publish_body;
use crate::plan::Transform;
use herald_core::{PublishRefusal, PublishTarget, TraceContext};
use herald_engine_kit::backoff::Backoff;
use metrics::counter;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// How one publish attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attempt {
    /// The broker accepted it (or it was a duplicate of one that was).
    Published,
    /// It can never be published; `reason` is a bounded label.
    Invalid {
        /// `too_large`, `not_json`, `template` or `refused`.
        reason: &'static str,
        /// For the log and the dead letter.
        message: String,
    },
    /// The node cannot publish now; try again later.
    Unavailable(String),
}

/// Log lines per window for one bridge: a flood of bad messages must not
/// flood the log.
const LOG_BURST: u32 = 5;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// Allows [`LOG_BURST`] lines per [`LOG_WINDOW`] and reports how many it
/// held back.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    window_start: Instant,
    used: u32,
    suppressed: u64,
}

impl LogLimiter {
    fn new() -> Self {
        Self {
            window_start: Instant::now(),
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged now; the second value is how many were
    /// held back in the window that just ended (to say so once).
    pub(crate) fn allow(&mut self) -> (bool, u64) {
        let mut held_back = 0;
        if self.window_start.elapsed() >= LOG_WINDOW {
            held_back = std::mem::take(&mut self.suppressed);
            self.window_start = Instant::now();
            self.used = 0;
        }
        if self.used < LOG_BURST {
            self.used += 1;
            (true, held_back)
        } else {
            self.suppressed += 1;
            (false, held_back)
        }
    }
}

/// One bridge's publishing, counting and logging; clones share the log
/// limit (the per-room lanes of one bridge each hold a clone).
#[derive(Clone)]
pub(crate) struct Handler {
    label: String,
    max_message_bytes: usize,
    transform: Arc<Transform>,
    target: Arc<dyn PublishTarget>,
    log: Arc<Mutex<LogLimiter>>,
}

impl Handler {
    pub(crate) fn new(
        label: String,
        transform: Transform,
        target: Arc<dyn PublishTarget>,
        max_message_bytes: usize,
    ) -> Self {
        describe(&label);
        Self {
            label,
            max_message_bytes,
            transform: Arc::new(transform),
            target,
            log: Arc::new(Mutex::new(LogLimiter::new())),
        }
    }

    /// Which lane (of `lanes`) a message goes to: the lane of its room
    /// (tenant and room of the publish body), so one room's messages are
    /// published in the order received; a message without a room (it is
    /// invalid) goes by its subject.
    pub(crate) fn lane(&self, subject: &str, payload: &[u8], lanes: usize) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let room = publish_body(&self.transform, subject, payload)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
                field("room").map(|room| (field("tenant"), room))
            });
        match room {
            Some(key) => key.hash(&mut h),
            None => subject.hash(&mut h),
        }
        (h.finish() % lanes.max(1) as u64) as usize
    }

    /// The bridge's label.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// Builds the body and publishes it once, continuing `trace` (the
    /// message's `traceparent` header) when tracing is on.
    pub(crate) async fn attempt(
        &self,
        subject: &str,
        payload: &[u8],
        key: Option<&str>,
        trace: Option<TraceContext>,
    ) -> Attempt {
        if payload.len() > self.max_message_bytes {
            return Attempt::Invalid {
                reason: "too_large",
                message: format!(
                    "{} bytes, over bridge.max_message_bytes ({})",
                    payload.len(),
                    self.max_message_bytes
                ),
            };
        }
        let body = match publish_body(&self.transform, subject, payload) {
            Ok(body) => body,
            Err(e) => {
                return Attempt::Invalid {
                    reason: e.reason(),
                    message: e.to_string(),
                }
            }
        };
        match self.target.publish_json(&body, key, trace).await {
            Ok(()) => Attempt::Published,
            Err(PublishRefusal::Invalid(message)) => Attempt::Invalid {
                reason: "refused",
                message,
            },
            Err(PublishRefusal::Unavailable(message)) => Attempt::Unavailable(message),
        }
    }

    /// Counts a message that was published.
    pub(crate) fn published(&self) {
        counter!("herald_bridge_messages_total", "bridge" => self.label.clone(), "outcome" => "published").increment(1);
    }

    /// Counts and logs (rate-limited) a message that can never be published.
    pub(crate) fn invalid(&self, subject: &str, reason: &'static str, message: &str) {
        counter!("herald_bridge_messages_total", "bridge" => self.label.clone(), "outcome" => "invalid").increment(1);
        counter!("herald_bridge_invalid_total", "bridge" => self.label.clone(), "reason" => reason)
            .increment(1);
        self.warn(subject, "invalid message skipped", message);
    }

    /// Counts an attempt answered `unavailable` (retried).
    pub(crate) fn retried(&self, subject: &str, message: &str) {
        counter!("herald_bridge_retries_total", "bridge" => self.label.clone()).increment(1);
        self.warn(subject, "node unavailable, retrying", message);
    }

    /// Counts and logs a message given up on (no redelivery possible).
    pub(crate) fn dropped(&self, subject: &str, message: &str) {
        counter!("herald_bridge_messages_total", "bridge" => self.label.clone(), "outcome" => "dropped").increment(1);
        self.warn(
            subject,
            "message dropped: the node stayed unavailable",
            message,
        );
    }

    /// Counts a message moved to the dead-letter subject.
    pub(crate) fn dead_lettered(&self) {
        counter!("herald_bridge_dead_letters_total", "bridge" => self.label.clone()).increment(1);
    }

    /// Logs a failure of the bridge itself (connection, consumer), rate-limited.
    pub(crate) fn warn_source(&self, what: &str, error: &str) {
        self.warn("", what, error);
    }

    fn warn(&self, subject: &str, what: &str, reason: &str) {
        let (allowed, held_back) = self.log.lock().allow();
        if held_back > 0 {
            warn!(bridge = %self.label, held_back, "bridge: earlier warnings held back (rate limit)");
        }
        if allowed {
            warn!(bridge = %self.label, subject, reason, "bridge: {what}");
        }
    }
}

/// The trace context a NATS message carries in its `traceparent` header
/// (W3C Trace Context); a malformed one is ignored, as the spec asks.
pub(crate) fn nats_trace(headers: Option<&async_nats::HeaderMap>) -> Option<TraceContext> {
    TraceContext::parse_traceparent(headers?.get("traceparent")?.as_str())
}

/// Publishes a message that has no redelivery (core NATS, Redis pub/sub):
/// retried with backoff while the node answers `unavailable`, for at most
/// `retry_for`, then dropped and counted.
pub(crate) async fn relay_once(
    handler: &Handler,
    subject: &str,
    payload: &[u8],
    trace: Option<TraceContext>,
    retry_for: Duration,
    cancel: &CancellationToken,
) {
    let deadline = Instant::now() + retry_for;
    let mut backoff = Backoff::default();
    loop {
        match handler.attempt(subject, payload, None, trace).await {
            Attempt::Published => return handler.published(),
            Attempt::Invalid { reason, message } => {
                return handler.invalid(subject, reason, &message)
            }
            Attempt::Unavailable(message) => {
                let delay = backoff.next_delay();
                if Instant::now() + delay > deadline {
                    return handler.dropped(subject, &message);
                }
                handler.retried(subject, &message);
                tokio::select! {
                    () = cancel.cancelled() => return handler.dropped(subject, "the node is shutting down"),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Describes the metrics and registers this bridge's series at zero.
fn describe(label: &str) {
    use metrics::describe_counter;
    describe_counter!(
        "herald_bridge_messages_total",
        "Messages taken from a bridge by this node, by bridge and outcome (published, invalid, dropped)"
    );
    describe_counter!(
        "herald_bridge_invalid_total",
        "Invalid bridge messages by reason (too_large, not_json, template, refused)"
    );
    describe_counter!(
        "herald_bridge_retries_total",
        "Bridge publish attempts answered unavailable and retried"
    );
    describe_counter!(
        "herald_bridge_dead_letters_total",
        "JetStream bridge messages moved to the dead-letter subject"
    );
    for outcome in ["published", "invalid", "dropped"] {
        counter!("herald_bridge_messages_total", "bridge" => label.to_owned(), "outcome" => outcome)
            .increment(0);
    }
    counter!("herald_bridge_retries_total", "bridge" => label.to_owned()).increment(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_log_limiter_allows_a_burst_per_window_and_reports_the_rest() {
        let mut l = LogLimiter::new();
        for _ in 0..LOG_BURST {
            assert_eq!(l.allow(), (true, 0));
        }
        for _ in 0..7 {
            assert_eq!(l.allow(), (false, 0));
        }
        tokio::time::advance(LOG_WINDOW).await;
        assert_eq!(l.allow(), (true, 7));
        assert_eq!(l.allow(), (true, 0));
    }
}
