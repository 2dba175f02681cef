//! The JetStream bridge: every node pulls from one shared durable consumer,
//! so each stored message is handed to one node at a time, and acknowledged
//! only once the node's broker accepted the publish.
//!
//! - published: `+ACK`. The publish carries the idempotency key
//!   `bridge:<stream>:<stream sequence>` (unless the body names its own), so
//!   a message delivered again (a node died before its ack, an ack was lost)
//!   publishes once.
//! - invalid: the message goes to the dead-letter subject with the headers
//!   `Herald-Reason`, `Herald-Subject`, `Herald-Stream` and
//!   `Herald-Stream-Sequence`, then `+TERM` (never delivered again).
//! - unavailable: `-NAK` with a backoff delay, and the rest of the batch
//!   with it; the node waits that long before pulling again.
//!
//! A batch in hand when the node stops is nak'ed at once, so another node
//! takes it without waiting for the ack timeout.

use crate::backoff::Backoff;
use crate::config::Deliver;
use crate::handler::{Attempt, Handler};
use async_nats::jetstream::consumer::{pull, AckPolicy, Consumer, DeliverPolicy};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, stream, Context, Message};
use async_nats::{Client, HeaderMap};
use futures_util::StreamExt;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Messages pulled at once.
const BATCH: usize = 64;
/// Longest wait of one pull for messages.
const PULL_WAIT: Duration = Duration::from_secs(1);
/// How long the server waits for an ack before delivering again.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Age limit of a publish stream the bridge creates.
const CREATED_STREAM_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// What one JetStream route reads.
#[derive(Debug, Clone)]
pub(crate) struct JetStreamSource {
    pub(crate) stream: String,
    pub(crate) create_subjects: Option<Vec<String>>,
    pub(crate) durable: String,
    pub(crate) filter: String,
    pub(crate) deliver: Deliver,
    pub(crate) dead_letter: String,
}

/// Why setting up or pulling failed (retried after a backoff).
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error("stream `{stream}`: {message}")]
    Stream { stream: String, message: String },
    #[error("durable consumer `{durable}`: {message}")]
    Consumer { durable: String, message: String },
    #[error("pull: {0}")]
    Pull(String),
}

/// Runs one JetStream route until cancelled.
pub(crate) async fn run(
    client: Client,
    command_timeout: Duration,
    source: JetStreamSource,
    mut handler: Handler,
    cancel: CancellationToken,
) {
    let mut js = jetstream::new(client.clone());
    js.set_timeout(command_timeout);
    let mut backoff = Backoff::default();
    let mut consumer: Option<Consumer<pull::Config>> = None;
    loop {
        let step = async {
            let c = match consumer.take() {
                Some(c) => c,
                None => setup(&js, &source).await?,
            };
            let delay = pull_once(&client, &c, &source, &mut handler, &cancel).await?;
            Ok::<_, StepError>((c, delay))
        };
        // Not raced against `cancel`: a batch in hand is nak'ed on cancel
        // (in `pull_once`) rather than dropped unacknowledged; each step is
        // bounded by the pull wait and the command timeout.
        let outcome = step.await;
        if cancel.is_cancelled() {
            return;
        }
        let wait = match outcome {
            Ok((c, None)) => {
                consumer = Some(c);
                backoff.reset();
                continue;
            }
            // Unavailable: the batch was nak'ed with `delay`.
            Ok((c, Some(delay))) => {
                consumer = Some(c);
                delay
            }
            Err(e) => {
                handler.warn_source("JetStream consumer failing, retrying", &e.to_string());
                backoff.next_delay()
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Gets (or creates) the stream and the durable consumer.
async fn setup(js: &Context, s: &JetStreamSource) -> Result<Consumer<pull::Config>, StepError> {
    let stream_error = |message: String| StepError::Stream {
        stream: s.stream.clone(),
        message,
    };
    let stream = match &s.create_subjects {
        Some(subjects) => js
            .get_or_create_stream(stream::Config {
                name: s.stream.clone(),
                subjects: subjects.clone(),
                storage: stream::StorageType::File,
                // Acknowledged messages leave the stream: it holds only
                // what is still to be published.
                retention: stream::RetentionPolicy::WorkQueue,
                max_age: CREATED_STREAM_MAX_AGE,
                ..Default::default()
            })
            .await
            .map_err(|e| stream_error(e.to_string()))?,
        None => js
            .get_stream(&s.stream)
            .await
            .map_err(|e| stream_error(format!("{e} (the stream must exist)")))?,
    };
    let config = pull::Config {
        durable_name: Some(s.durable.clone()),
        filter_subject: s.filter.clone(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        deliver_policy: match s.deliver {
            Deliver::All => DeliverPolicy::All,
            Deliver::New => DeliverPolicy::New,
        },
        ..Default::default()
    };
    let consumer = stream
        .get_or_create_consumer(&s.durable, config)
        .await
        .map_err(|e| StepError::Consumer {
            durable: s.durable.clone(),
            message: e.to_string(),
        })?;
    tracing::info!(bridge = %s.durable, stream = %s.stream, filter = %s.filter, "bridge: consuming");
    Ok(consumer)
}

/// Pulls one batch and handles it in order. `Some(delay)` when the node was
/// unavailable: the rest of the batch was nak'ed with that delay.
async fn pull_once(
    client: &Client,
    consumer: &Consumer<pull::Config>,
    source: &JetStreamSource,
    handler: &mut Handler,
    cancel: &CancellationToken,
) -> Result<Option<Duration>, StepError> {
    let mut batch = consumer
        .batch()
        .max_messages(BATCH)
        .expires(PULL_WAIT)
        .messages()
        .await
        .map_err(|e| StepError::Pull(e.to_string()))?;
    let mut backoff = Backoff::default();
    let mut nak_delay: Option<Duration> = None;
    while let Some(next) = batch.next().await {
        let msg = next.map_err(|e| StepError::Pull(e.to_string()))?;
        if let Some(delay) = nak_delay {
            let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            continue;
        }
        if cancel.is_cancelled() {
            // Hand it back now rather than after the ack timeout.
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            continue;
        }
        if let Some(delay) = handle(client, &msg, source, handler, &mut backoff).await {
            nak_delay = Some(delay);
        }
    }
    Ok(nak_delay)
}

/// Publishes one message and acknowledges it; `Some(delay)` when it was
/// nak'ed because the node is unavailable.
async fn handle(
    client: &Client,
    msg: &Message,
    source: &JetStreamSource,
    handler: &mut Handler,
    backoff: &mut Backoff,
) -> Option<Duration> {
    let sequence = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    let key = format!("bridge:{}:{sequence}", source.stream);
    let subject = msg.subject.as_str();
    match handler.attempt(subject, &msg.payload, Some(&key)).await {
        Attempt::Published => {
            let _ = msg.ack().await;
            handler.published();
            None
        }
        Attempt::Invalid { reason, message } => {
            handler.invalid(subject, reason, &message);
            let mut headers = HeaderMap::new();
            headers.insert("Herald-Reason", header_value(&message).as_str());
            headers.insert("Herald-Subject", subject);
            headers.insert("Herald-Stream", source.stream.as_str());
            headers.insert("Herald-Stream-Sequence", sequence.to_string().as_str());
            let dead = client
                .publish_with_headers(source.dead_letter.clone(), headers, msg.payload.clone())
                .await;
            match dead {
                Ok(()) => {
                    handler.dead_lettered();
                    let _ = msg.ack_with(AckKind::Term).await;
                    None
                }
                Err(e) => {
                    // Not dead-lettered: keep it for a later try.
                    handler.warn_source("cannot publish the dead letter", &e.to_string());
                    let delay = backoff.next_delay();
                    let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                    Some(delay)
                }
            }
        }
        Attempt::Unavailable(message) => {
            handler.retried(subject, &message);
            let delay = backoff.next_delay();
            let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            Some(delay)
        }
    }
}

/// A header value has no line breaks and stays short.
fn header_value(text: &str) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match flat.char_indices().nth(512) {
        Some((cut, _)) => flat[..cut].to_owned(),
        None => flat,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_values_are_one_short_line() {
        assert_eq!(super::header_value("a\r\nb"), "a  b");
        assert_eq!(super::header_value(&"x".repeat(600)).len(), 512);
    }
}
