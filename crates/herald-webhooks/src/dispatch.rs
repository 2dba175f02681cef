//! The dispatcher: one loop per node taking batches from the engine's
//! outbox and POSTing them, one at a time, in outbox order.
//!
//! A batch is retried (the same events, re-signed with a fresh `t`) after
//! exponential backoff with full jitter until the receiver answers 2xx;
//! events older than `webhooks.max_age` are acked as dropped instead, so a
//! receiver down for longer than that loses them (counted and logged with
//! their ids and types). On a cluster only the node holding the outbox's
//! dispatch lease gets batches; the others wait in `next_batch`.

use crate::metrics;
use crate::sign::{header_value, SIGNATURE_HEADER};
use crate::WebhookSettings;
use bytes::{BufMut, Bytes, BytesMut};
use herald_core::hooks::now_ms;
use herald_core::{Outbox, OutboxEntry};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::Backoff;

/// How long one `next_batch` waits for events (a node without the lease
/// asks again after this).
const POLL_WAIT: Duration = Duration::from_secs(1);
/// First and longest pause of a batch's retries.
const RETRY_START: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(30);
/// Longest the last pass at shutdown may take (the node waits 2 s for its
/// tasks after draining).
const FINAL_PASS: Duration = Duration::from_millis(1500);
/// Attempts to ack a delivered batch before leaving it to be sent again.
const ACK_ATTEMPTS: u32 = 3;

/// Why the dispatcher could not be built.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A setting is not acceptable (see [`WebhookSettings::validate`]).
    #[error("{key}: {message}")]
    Invalid {
        /// The `webhooks.` key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The HTTP client could not be built.
    #[error("webhooks: cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// How one POST went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// 2xx.
    Delivered,
    /// Any other status.
    Status(u16),
    /// No answer within `webhooks.timeout`.
    Timeout,
    /// No connection.
    Connect,
    /// Anything else (a broken response, a redirect loop).
    Failed(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered => "ok",
            Outcome::Status(_) => "http_error",
            Outcome::Timeout => "timeout",
            Outcome::Connect => "connect_error",
            Outcome::Failed(_) => "error",
        }
    }
}

/// The webhook dispatcher of one node (see the module docs).
pub struct Dispatcher {
    settings: WebhookSettings,
    client: reqwest::Client,
    headers: HeaderMap,
    outbox: Arc<dyn Outbox>,
}

impl Dispatcher {
    /// A dispatcher sending `outbox`'s events as `settings` say.
    pub fn new(settings: WebhookSettings, outbox: Arc<dyn Outbox>) -> Result<Self, WebhookError> {
        if let Some(e) = settings.validate().into_iter().next() {
            return Err(WebhookError::Invalid {
                key: e.key,
                message: e.message,
            });
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &settings.headers {
            let invalid = |message: &str| WebhookError::Invalid {
                key: format!("webhooks.headers.{name}"),
                message: message.into(),
            };
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid("is not a valid HTTP header name"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| invalid("is not a valid HTTP header value"))?;
            headers.insert(name, value);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .build()?;
        metrics::describe();
        Ok(Self {
            settings,
            client,
            headers,
            outbox,
        })
    }

    /// Runs the loop on `tasks` until `cancel` fires, then makes one last
    /// bounded pass over what is left.
    pub fn spawn(self, cancel: CancellationToken, tasks: &TaskTracker) {
        tasks.spawn(async move { self.run(cancel).await });
    }

    async fn run(self, cancel: CancellationToken) {
        tracing::info!(url = %self.settings.url, "webhook dispatcher started");
        let mut backoff = Backoff::new(RETRY_START, RETRY_CAP);
        loop {
            let asked = Instant::now();
            let next = tokio::select! {
                _ = cancel.cancelled() => break,
                next = self.outbox.next_batch(self.settings.batch_size, POLL_WAIT) => next,
            };
            if let Some(n) = self.outbox.backlog() {
                metrics::backlog(n);
            }
            let batch = match next {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook outbox unreadable; retrying");
                    if sleep_or_cancel(backoff.next_wait(), &cancel).await {
                        break;
                    }
                    continue;
                }
            };
            backoff.reset();
            if batch.is_empty() {
                // An outbox that answers "nothing" at once (it lost the
                // lease, say) must not make this a busy loop.
                if asked.elapsed() < POLL_WAIT / 10
                    && sleep_or_cancel(POLL_WAIT / 10, &cancel).await
                {
                    break;
                }
                continue;
            }
            if !self.deliver(batch, &mut backoff, &cancel).await {
                break;
            }
        }
        self.final_pass().await;
        tracing::info!("webhook dispatcher stopped");
    }

    /// Sends `batch` until it is delivered or has aged out; false when
    /// `cancel` fired first (the batch stays in the outbox).
    async fn deliver(
        &self,
        mut batch: Vec<OutboxEntry>,
        backoff: &mut Backoff,
        cancel: &CancellationToken,
    ) -> bool {
        loop {
            batch = self.drop_expired(batch).await;
            if batch.is_empty() {
                return true;
            }
            let outcome = self.post(&batch_body(&batch), self.settings.timeout).await;
            if outcome == Outcome::Delivered {
                backoff.reset();
                metrics::sent(batch.len());
                self.ack(&batch).await;
                return true;
            }
            let wait = backoff.next_wait();
            tracing::warn!(outcome = ?outcome, events = batch.len(), retry_in = ?wait, url = %self.settings.url, "webhook batch not delivered; retrying");
            if sleep_or_cancel(wait, cancel).await {
                return false;
            }
        }
    }

    /// Acks the entries older than `max_age` as dropped (counted, logged
    /// with ids and types) and returns the others.
    async fn drop_expired(&self, batch: Vec<OutboxEntry>) -> Vec<OutboxEntry> {
        let max_age = self.settings.max_age.as_millis() as u64;
        let now = now_ms();
        let (expired, fresh): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|e| now.saturating_sub(e.time_ms) > max_age);
        if !expired.is_empty() {
            let described: Vec<String> = expired.iter().map(describe_entry).collect();
            tracing::warn!(count = expired.len(), events = ?described, max_age = ?self.settings.max_age, "webhook events older than webhooks.max_age dropped");
            metrics::dropped("max_age", expired.len());
            self.ack(&expired).await;
        }
        fresh
    }

    async fn ack(&self, entries: &[OutboxEntry]) {
        for attempt in 1..=ACK_ATTEMPTS {
            match self.outbox.ack(entries).await {
                Ok(()) => return,
                Err(e) if attempt == ACK_ATTEMPTS => {
                    // They will be sent again: the receiver dedups by id.
                    tracing::warn!(error = %e, events = entries.len(), "webhook outbox ack failed; the events will be sent again");
                }
                Err(_) => tokio::time::sleep(RETRY_START * attempt).await,
            }
        }
    }

    /// One signed POST of `body`, waiting at most `timeout`.
    pub(crate) async fn post(&self, body: &Bytes, timeout: Duration) -> Outcome {
        let t = now_ms() / 1000;
        let signature = header_value(&self.settings.secret, t, body);
        let started = Instant::now();
        let result = self
            .client
            .post(&self.settings.url)
            .headers(self.headers.clone())
            .header(SIGNATURE_HEADER, signature)
            .timeout(timeout)
            .body(body.clone())
            .send()
            .await;
        let outcome = match result {
            Ok(response) if response.status().is_success() => Outcome::Delivered,
            Ok(response) => Outcome::Status(response.status().as_u16()),
            Err(e) if e.is_timeout() => Outcome::Timeout,
            Err(e) if e.is_connect() => Outcome::Connect,
            Err(e) => Outcome::Failed(e.to_string()),
        };
        metrics::post(outcome.label(), started.elapsed());
        outcome
    }

    /// At shutdown: what the node appended last (its connections' closes
    /// during the drain), sent once each, within [`FINAL_PASS`].
    async fn final_pass(&self) {
        let deadline = tokio::time::Instant::now() + FINAL_PASS.min(self.settings.timeout);
        loop {
            let next = tokio::time::timeout_at(
                deadline,
                self.outbox
                    .next_batch(self.settings.batch_size, Duration::from_millis(100)),
            )
            .await;
            let batch = match next {
                Ok(Ok(batch)) if !batch.is_empty() => batch,
                _ => return,
            };
            let batch = self.drop_expired(batch).await;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if batch.is_empty() || left.is_zero() {
                return;
            }
            if self.post(&batch_body(&batch), left).await != Outcome::Delivered {
                return;
            }
            metrics::sent(batch.len());
            self.ack(&batch).await;
        }
    }
}

/// `{"events":[...]}` from the stored events' JSON, without re-encoding.
pub(crate) fn batch_body(batch: &[OutboxEntry]) -> Bytes {
    let size = batch.iter().map(|e| e.body.len() + 1).sum::<usize>() + 12;
    let mut body = BytesMut::with_capacity(size);
    body.put_slice(b"{\"events\":[");
    for (i, e) in batch.iter().enumerate() {
        if i > 0 {
            body.put_u8(b',');
        }
        body.put_slice(&e.body);
    }
    body.put_slice(b"]}");
    body.freeze()
}

/// `<type> <id>` of a stored event, for logs.
fn describe_entry(e: &OutboxEntry) -> String {
    let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap_or_default();
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("?").to_owned();
    format!("{} {}", field("type"), field("id"))
}

/// Sleeps `wait`; true when `cancel` fired first.
async fn sleep_or_cancel(wait: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(wait) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_broker_memory::MemoryOutbox;
    use herald_core::{HookEvent, HookSet, Tenant};

    fn settings() -> WebhookSettings {
        WebhookSettings {
            // Nothing listens there: connections are refused.
            url: "http://127.0.0.1:9/hooks".into(),
            secret: b"s".to_vec(),
            events: HookSet::all(),
            max_age: Duration::from_secs(60),
            batch_size: 10,
            timeout: Duration::from_secs(1),
            headers: vec![("X-Env".into(), "test".into())],
        }
    }

    async fn outbox_with(time_ms: u64) -> Arc<MemoryOutbox> {
        let outbox = Arc::new(MemoryOutbox::default());
        let mut event = HookEvent::user_online(&Tenant::default_tenant(), "u");
        event.time_ms = time_ms;
        outbox.append(&[event]).await.expect("append");
        outbox
    }

    #[test]
    fn the_batch_is_the_stored_events_in_an_events_array() {
        let entry = |body: &str| OutboxEntry {
            cursor: String::new(),
            time_ms: 0,
            body: Bytes::from(body.to_owned()),
        };
        let body = batch_body(&[entry(r#"{"id":"a"}"#), entry(r#"{"id":"b"}"#)]);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v, serde_json::json!({"events": [{"id": "a"}, {"id": "b"}]}));
        assert_eq!(&batch_body(&[])[..], br#"{"events":[]}"#);
    }

    #[tokio::test]
    async fn events_past_max_age_are_acked_as_dropped_without_a_post() {
        let outbox = outbox_with(1).await;
        let dispatcher = Dispatcher::new(settings(), outbox.clone()).expect("dispatcher");
        let batch = outbox
            .next_batch(10, Duration::from_millis(10))
            .await
            .expect("batch");
        let mut backoff = Backoff::new(RETRY_START, RETRY_CAP);
        let delivered = dispatcher
            .deliver(batch, &mut backoff, &CancellationToken::new())
            .await;
        assert!(delivered);
        assert!(outbox.is_empty(), "dropped events leave the outbox");
    }

    #[tokio::test]
    async fn an_unreachable_receiver_keeps_the_batch_until_cancelled() {
        let outbox = outbox_with(now_ms()).await;
        let dispatcher = Dispatcher::new(settings(), outbox.clone()).expect("dispatcher");
        let batch = outbox
            .next_batch(10, Duration::from_millis(10))
            .await
            .expect("batch");
        assert_eq!(
            dispatcher
                .post(&batch_body(&batch), Duration::from_secs(1))
                .await,
            Outcome::Connect
        );
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            stop.cancel();
        });
        let mut backoff = Backoff::new(RETRY_START, RETRY_CAP);
        let finished = tokio::time::timeout(
            Duration::from_secs(10),
            dispatcher.deliver(batch, &mut backoff, &cancel),
        )
        .await
        .expect("deliver stops on cancel");
        assert!(!finished, "cancelled, not delivered");
        assert_eq!(outbox.len(), 1, "the batch stays in the outbox");
    }
}
