//! The bridges' NATS connection and the core NATS bridge. Ordered (the
//! default): the leader node alone subscribes, and publishes each room's
//! messages in the order received. Unordered: a queue subscription per
//! node, so each message goes to one node of the cluster. Either way at
//! most once: core NATS keeps nothing for a node that was away.

use crate::handler::{relay_once, Handler};
use crate::lanes::{Lanes, LANES};
use crate::leader::{leading, Lease};
use crate::plan::NatsConnection;
use crate::BridgeError;
use async_nats::{Client, ConnectOptions};
use futures_util::{FutureExt, StreamExt};
use herald_engine_kit::backoff::Backoff;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Messages buffered per subscription before the client drops (a slow
/// consumer; core NATS then loses them).
const SUBSCRIPTION_CAPACITY: usize = 8_192;

fn reconnect_delay(attempt: usize) -> Duration {
    // 100 ms doubling to 5 s, plus up to 100 ms of jitter.
    let base = 100u64.saturating_mul(1u64 << attempt.min(6)).min(5_000);
    Duration::from_millis(base + rand::random_range(0..100))
}

/// Builds the client; it connects (and reconnects) in the background, for
/// ever. Called inside a Tokio runtime.
pub(crate) fn connect(
    c: &NatsConnection,
    node_id: &str,
    command_timeout: Duration,
) -> Result<Client, BridgeError> {
    let mut options = ConnectOptions::new()
        .name(format!("herald bridge {node_id}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(command_timeout))
        .subscription_capacity(SUBSCRIPTION_CAPACITY);
    let auth = &c.auth;
    if let Some(path) = &auth.credentials_file {
        let creds = std::fs::read_to_string(path)
            .map_err(|e| BridgeError::NatsCredentials(format!("{path}: {e}")))?;
        options = options
            .credentials(&creds)
            .map_err(|e| BridgeError::NatsCredentials(format!("{path}: {e}")))?;
    }
    if let Some((user, password)) = &auth.user_password {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &auth.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &auth.tls_ca_file {
        options = options.add_root_certificates(ca.into()).require_tls(true);
    }
    if let Some((cert, key)) = &auth.tls_client_cert {
        options = options
            .add_client_certificate(cert.into(), key.into())
            .require_tls(true);
    }
    let servers: Vec<async_nats::ServerAddr> = c
        .url
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e: std::io::Error| BridgeError::NatsUrl(e.to_string()))?;
    // With `retry_on_initial_connect` the connect future does no I/O: it
    // spawns the connection task and returns the client at once.
    options
        .connect(servers)
        .now_or_never()
        .ok_or_else(|| BridgeError::NatsUrl("the client did not start".into()))?
        .map_err(|e| BridgeError::NatsUrl(e.to_string()))
}

/// Runs one core NATS route until cancelled, publishing through per-room
/// lanes. `lease: None` (unordered): a queue subscription on every node.
/// `Some`: a plain subscription held only while this node leads, so one
/// node reads every message in the order the server sent it. async-nats
/// re-subscribes by itself after a reconnect; a subscription that ends (the
/// client closed) is made again after a backoff.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_core(
    client: Client,
    subject: String,
    queue_group: String,
    handler: Handler,
    mut lease: Option<Lease>,
    retry_for: Duration,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let work_handler = handler.clone();
    let work_cancel = cancel.clone();
    let lanes = Lanes::spawn(
        move |(subject, payload): (async_nats::Subject, bytes::Bytes)| {
            let (handler, cancel) = (work_handler.clone(), work_cancel.clone());
            async move { relay_once(&handler, &subject, &payload, retry_for, &cancel).await }
        },
        {
            let handler = handler.clone();
            move |(subject, _): (async_nats::Subject, bytes::Bytes)| {
                let handler = handler.clone();
                async move { handler.dropped(&subject, "the node is shutting down") }
            }
        },
        &cancel,
        &tasks,
    );
    let mut backoff = Backoff::default();
    // Re-checks the lease even when no renewal arrives (NATS away).
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if let Some(lease) = lease.as_mut() {
            while !leading(lease) {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                    changed = lease.changed() => if changed.is_err() { return },
                }
            }
        }
        let subscribed = tokio::select! {
            () = cancel.cancelled() => return,
            s = async {
                if lease.is_some() {
                    client.subscribe(subject.clone()).await
                } else {
                    client.queue_subscribe(subject.clone(), queue_group.clone()).await
                }
            } => s,
        };
        match subscribed {
            Ok(mut sub) => {
                tracing::info!(bridge = handler.label(), %subject, ordered = lease.is_some(), "bridge: subscribed");
                loop {
                    let next = tokio::select! {
                        biased;
                        () = cancel.cancelled() => {
                            let _ = sub.unsubscribe().await;
                            return;
                        }
                        _ = tick.tick(), if lease.is_some() => {
                            if lease.as_ref().is_some_and(|l| !leading(l)) {
                                let _ = sub.unsubscribe().await;
                                tracing::info!(bridge = handler.label(), %subject, "bridge: unsubscribed (not the leader)");
                                break;
                            }
                            continue;
                        }
                        m = sub.next() => m,
                    };
                    let Some(msg) = next else {
                        handler.warn_source("subscription ended, subscribing again", &subject);
                        break;
                    };
                    backoff.reset();
                    let lane = handler.lane(&msg.subject, &msg.payload, LANES);
                    if !lanes.send(lane, (msg.subject, msg.payload)).await {
                        return;
                    }
                }
                if lease.as_ref().is_some_and(|l| !leading(l)) {
                    continue;
                }
            }
            Err(e) => handler.warn_source("cannot subscribe", &e.to_string()),
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}
