//! The unordered JetStream bridge (`ordered = false`; the ordered one is
//! `jetstream_ordered.rs`, which shares the setup and dead letters here):
//! every node pulls from one shared durable consumer, so each stored
//! message is handed to one node at a time, and acknowledged only once the
//! node's broker accepted the publish.
//!
//! - published: `+ACK`. The publish carries the idempotency key
//!   `bridge:<stream>:<stream created, ns>:<stream sequence>` (unless the
//!   body names its own), so
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

use crate::config::Deliver;
use crate::handler::{Attempt, Handler};
use async_nats::jetstream::consumer::{pull, AckPolicy, Consumer, DeliverPolicy};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, stream, Context, Message};
use async_nats::{Client, HeaderMap};
use futures_util::StreamExt;
use herald_engine_kit::backoff::Backoff;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Messages pulled at once.
pub(crate) const BATCH: usize = 64;
/// Longest wait of one pull for messages.
pub(crate) const PULL_WAIT: Duration = Duration::from_secs(1);
/// How long the server waits for an ack before delivering again.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// How often the stream and durable are looked up again: a pull on a
/// durable (or stream) that NATS lost (a server restarted without its
/// store, an operator deleted it) just comes back empty, so the bridge
/// would otherwise wait for ever.
pub(crate) const RECHECK_EVERY: Duration = Duration::from_secs(5);
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
pub(crate) enum StepError {
    #[error("stream `{stream}`: {message}")]
    Stream { stream: String, message: String },
    #[error("durable consumer `{durable}`: {message}")]
    Consumer { durable: String, message: String },
    #[error("pull: {0}")]
    Pull(String),
    /// The route is stopping (its lanes are gone).
    #[error("stopped")]
    Stopped,
}

/// Runs one JetStream route until cancelled.
pub(crate) async fn run(
    client: Client,
    command_timeout: Duration,
    source: JetStreamSource,
    handler: Handler,
    cancel: CancellationToken,
) {
    let mut js = jetstream::new(client.clone());
    js.set_timeout(command_timeout);
    let mut backoff = Backoff::default();
    let mut consumer: Option<Setup> = None;
    let mut checked = Instant::now();
    let mut announced = false;
    loop {
        if checked.elapsed() >= RECHECK_EVERY {
            consumer = None;
        }
        let step = async {
            let c = match consumer.take() {
                Some(c) => c,
                None => {
                    let c = setup(&js, &source, ACK_WAIT).await?;
                    checked = Instant::now();
                    if !announced {
                        tracing::info!(bridge = handler.label(), stream = %source.stream,
                            durable = %source.durable, filter = %source.filter, "bridge: consuming");
                        announced = true;
                    }
                    c
                }
            };
            let delay = pull_once(&client, &c, &source, &handler, &cancel, command_timeout).await?;
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
                announced = false;
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
pub(crate) async fn setup(
    js: &Context,
    s: &JetStreamSource,
    ack_wait: Duration,
) -> Result<Setup, StepError> {
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
        ack_wait,
        // The per-room lanes hold at most this many (ordered bridges).
        max_ack_pending: 1024,
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
    Ok(Setup {
        consumer,
        stream_created: stream.cached_info().created.unix_timestamp_nanos(),
    })
}

/// A durable ready to pull from, and when its stream was created.
pub(crate) struct Setup {
    pub(crate) consumer: Consumer<pull::Config>,
    /// A stream deleted and made again (or lost by a server restarted
    /// without its store) counts its sequence from 1 again: the creation
    /// time in the idempotency key keeps its messages apart from the old
    /// stream's.
    pub(crate) stream_created: i128,
}

/// Pulls one batch and handles it in order. `Some(delay)` when the node was
/// unavailable: the rest of the batch was nak'ed with that delay.
async fn pull_once(
    client: &Client,
    setup: &Setup,
    source: &JetStreamSource,
    handler: &Handler,
    cancel: &CancellationToken,
    command_timeout: Duration,
) -> Result<Option<Duration>, StepError> {
    let mut batch = setup
        .consumer
        .batch()
        .max_messages(BATCH)
        .expires(PULL_WAIT)
        .messages()
        .await
        .map_err(|e| StepError::Pull(e.to_string()))?;
    let mut backoff = Backoff::default();
    let mut nak_delay: Option<Duration> = None;
    loop {
        // The server ends a pull at its expiry; a server that restarted
        // meanwhile never does, and the batch would wait for ever.
        let next = tokio::time::timeout(PULL_WAIT + command_timeout, batch.next())
            .await
            .map_err(|_| StepError::Pull("no answer from the server".into()))?;
        let Some(next) = next else { break };
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
        let key = match msg.info() {
            Ok(i) => format!(
                "bridge:{}:{}:{}",
                source.stream, setup.stream_created, i.stream_sequence
            ),
            Err(e) => return Err(StepError::Pull(format!("a message without its info: {e}"))),
        };
        if let Some(delay) = handle(client, &msg, &key, source, handler, &mut backoff).await {
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
    key: &str,
    source: &JetStreamSource,
    handler: &Handler,
    backoff: &mut Backoff,
) -> Option<Duration> {
    let subject = msg.subject.as_str();
    let trace = crate::handler::nats_trace(msg.headers.as_ref());
    match handler
        .attempt(subject, &msg.payload, Some(key), trace)
        .await
    {
        Attempt::Published => {
            let _ = msg.ack().await;
            handler.published();
            None
        }
        Attempt::Invalid { reason, message } => {
            if dead_letter(client, msg, source, handler, reason, &message).await {
                None
            } else {
                let delay = backoff.next_delay();
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                Some(delay)
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

/// Counts an invalid message, moves it to the dead-letter subject and
/// terminates it; `false` when the dead letter could not be published (the
/// caller hands the message back for a later try).
pub(crate) async fn dead_letter(
    client: &Client,
    msg: &Message,
    source: &JetStreamSource,
    handler: &Handler,
    reason: &'static str,
    message: &str,
) -> bool {
    let subject = msg.subject.as_str();
    let sequence = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
    handler.invalid(subject, reason, message);
    let mut headers = HeaderMap::new();
    headers.insert("Herald-Reason", header_value(message).as_str());
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
            true
        }
        Err(e) => {
            handler.warn_source("cannot publish the dead letter", &e.to_string());
            false
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
