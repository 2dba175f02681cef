//! The ordered JetStream bridge (`ordered = true`, the default): only the
//! leader node (see `leader.rs`) pulls from the shared durable consumer, and
//! publishes each room's messages in stream order through per-room lanes,
//! acknowledging each message once the node accepted it.
//!
//! - Unavailable: the message is retried in place (the rest of its room
//!   waits behind it), with `+WPI` (in progress) so the server does not
//!   hand it out again meanwhile.
//! - A new leader first waits out the durable's `ack_wait`: what the
//!   previous leader held unacknowledged is then due again, and the server
//!   delivers redeliveries before new messages, in stream order, so a
//!   takeover loses nothing and keeps each room's order.
//! - The idempotency key is the unordered bridge's (`bridge:<stream>:
//!   <created>:<sequence>`): a message delivered twice publishes once.

use crate::handler::{Attempt, Handler};
use crate::jetstream::{
    dead_letter, setup, JetStreamSource, Setup, StepError, BATCH, PULL_WAIT, RECHECK_EVERY,
};
use crate::lanes::{Lanes, LANES};
use crate::leader::{leading, Lease};
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::{self, Message};
use async_nats::Client;
use futures_util::StreamExt;
use herald_engine_kit::backoff::Backoff;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Extra wait on top of `ack_wait` at a takeover: the server's redelivery
/// timer runs a little after the deadline.
const TAKEOVER_MARGIN: Duration = Duration::from_secs(1);

/// A pulled message and its idempotency key.
type Job = (Message, String);

/// What each lane needs.
struct Shared {
    client: Client,
    source: JetStreamSource,
    handler: Handler,
    ack_wait: Duration,
    cancel: CancellationToken,
}

/// Runs one ordered JetStream route until cancelled.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    client: Client,
    command_timeout: Duration,
    source: JetStreamSource,
    handler: Handler,
    mut lease: Lease,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let ack_wait = command_timeout * 2;
    let shared = Arc::new(Shared {
        client: client.clone(),
        source: source.clone(),
        handler: handler.clone(),
        ack_wait,
        cancel: cancel.clone(),
    });
    let lanes = Lanes::spawn(
        {
            let shared = shared.clone();
            move |job: Job| {
                let shared = shared.clone();
                async move { publish(&shared, job).await }
            }
        },
        |(msg, _): Job| async move {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
        },
        &cancel,
        &tasks,
    );
    let mut js = jetstream::new(client.clone());
    js.set_timeout(command_timeout);
    let mut backoff = Backoff::default();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    'follow: loop {
        while !leading(&lease) {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
                changed = lease.changed() => if changed.is_err() { return },
            }
        }
        let mut consumer: Option<(Setup, Instant)> = None;
        let mut waited = false;
        while leading(&lease) && !cancel.is_cancelled() {
            let step = async {
                let (c, checked) = match consumer.take() {
                    Some((c, checked)) if checked.elapsed() < RECHECK_EVERY => (c, checked),
                    _ => (setup(&js, &source, ack_wait).await?, Instant::now()),
                };
                if !waited {
                    // Took the bridge over: let what another leader held
                    // come due first (see the module doc).
                    let wait = c.consumer.cached_info().config.ack_wait + TAKEOVER_MARGIN;
                    tracing::info!(bridge = handler.label(), stream = %source.stream,
                        durable = %source.durable, ?wait, "bridge: leading; consuming after the ack wait");
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                    waited = true;
                }
                pull(
                    &c,
                    &source,
                    &handler,
                    &lanes,
                    &lease,
                    &cancel,
                    command_timeout,
                )
                .await?;
                Ok::<_, StepError>((c, checked))
            };
            match step.await {
                Ok(c) => {
                    consumer = Some(c);
                    backoff.reset();
                }
                Err(StepError::Stopped) => continue 'follow,
                Err(e) => {
                    handler.warn_source("JetStream consumer failing, retrying", &e.to_string());
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
        if cancel.is_cancelled() {
            return;
        }
    }
}

/// Pulls one batch and queues each message on the lane of its room. A
/// message pulled after this node stopped leading (or was cancelled) is
/// handed back at once.
async fn pull(
    setup: &Setup,
    source: &JetStreamSource,
    handler: &Handler,
    lanes: &Lanes<Job>,
    lease: &Lease,
    cancel: &CancellationToken,
    command_timeout: Duration,
) -> Result<(), StepError> {
    let mut batch = setup
        .consumer
        .batch()
        .max_messages(BATCH)
        .expires(PULL_WAIT)
        .messages()
        .await
        .map_err(|e| StepError::Pull(e.to_string()))?;
    loop {
        // The server ends a pull at its expiry; a server that restarted
        // meanwhile never does.
        let next = tokio::time::timeout(PULL_WAIT + command_timeout, batch.next())
            .await
            .map_err(|_| StepError::Pull("no answer from the server".into()))?;
        let Some(next) = next else { return Ok(()) };
        let msg = next.map_err(|e| StepError::Pull(e.to_string()))?;
        if cancel.is_cancelled() || !leading(lease) {
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
        let lane = handler.lane(msg.subject.as_str(), &msg.payload, LANES);
        if !lanes.send(lane, (msg, key)).await {
            return Err(StepError::Stopped);
        }
    }
}

/// Publishes one message (retrying while the node is unavailable, so the
/// room's later messages keep waiting behind it) and acknowledges it.
async fn publish(s: &Shared, (msg, key): Job) {
    let subject = msg.subject.as_str();
    let trace = crate::handler::nats_trace(msg.headers.as_ref());
    let mut backoff = Backoff::default();
    loop {
        match s
            .handler
            .attempt(subject, &msg.payload, Some(&key), trace)
            .await
        {
            Attempt::Published => {
                let _ = msg.ack().await;
                return s.handler.published();
            }
            Attempt::Invalid { reason, message } => {
                if !dead_letter(&s.client, &msg, &s.source, &s.handler, reason, &message).await {
                    // Not dead-lettered: delivered again later (an invalid
                    // message has no place in the room's order anyway).
                    let delay = backoff.next_delay();
                    let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                }
                return;
            }
            Attempt::Unavailable(message) => {
                s.handler.retried(subject, &message);
                // Keeps the server from handing it out again meanwhile.
                let _ = msg.ack_with(AckKind::Progress).await;
                let delay = backoff.next_delay().min(s.ack_wait / 2);
                tokio::select! {
                    () = s.cancel.cancelled() => {
                        let _ = msg.ack_with(AckKind::Nak(None)).await;
                        return;
                    }
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}
