//! The bridges' NATS connection and the core NATS bridge. Ordered (the
//! default): the leader node alone subscribes, and publishes each room's
//! messages in the order received. Unordered: a queue subscription per
//! node, so each message goes to one node of the cluster. Either way at
//! most once: core NATS keeps nothing for a node that was away.

use crate::handler::{relay_once, Handler};
use crate::lanes::{Lanes, LANES};

/// A message for a lane: its subject, payload and `traceparent` context.
type Job = (
    async_nats::Subject,
    bytes::Bytes,
    Option<herald_core::TraceContext>,
);
use crate::leader::{leading, Lease};
use crate::plan::NatsConnection;
use crate::BridgeError;
use async_nats::Client;
use futures_util::StreamExt;
use herald_broker_nats::{connect_options, start_client, NatsAuthRef, NatsSetupError};
use herald_engine_kit::backoff::Backoff;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Messages buffered per subscription before the client drops (a slow
/// consumer; core NATS then loses them).
const SUBSCRIPTION_CAPACITY: usize = 8_192;

/// Builds the client with the engine's connection options
/// ([`herald_broker_nats::connect_options`]); it connects (and
/// reconnects) in the background, for ever. Called inside a Tokio runtime.
pub(crate) fn connect(
    c: &NatsConnection,
    node_id: &str,
    command_timeout: Duration,
) -> Result<Client, BridgeError> {
    let a = &c.auth;
    let auth = NatsAuthRef {
        credentials_file: a.credentials_file.as_deref().map(Path::new),
        user_password: a
            .user_password
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str())),
        token: a.token.as_deref(),
        tls_ca_file: a.tls_ca_file.as_deref().map(Path::new),
        tls_client_cert: a
            .tls_client_cert
            .as_ref()
            .map(|(c, k)| (Path::new(c.as_str()), Path::new(k.as_str()))),
    };
    let options = connect_options(
        format!("herald bridge {node_id}"),
        command_timeout,
        SUBSCRIPTION_CAPACITY,
        auth,
    )
    .map_err(setup_error)?;
    start_client(options, &c.url).map_err(setup_error)
}

fn setup_error(e: NatsSetupError) -> BridgeError {
    match e {
        NatsSetupError::Url(m) => BridgeError::NatsUrl(m),
        NatsSetupError::Credentials(m) => BridgeError::NatsCredentials(m),
    }
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
        move |(subject, payload, trace): Job| {
            let (handler, cancel) = (work_handler.clone(), work_cancel.clone());
            async move { relay_once(&handler, &subject, &payload, trace, retry_for, &cancel).await }
        },
        {
            let handler = handler.clone();
            move |(subject, _, _): Job| {
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
                    let trace = crate::handler::nats_trace(msg.headers.as_ref());
                    if !lanes.send(lane, (msg.subject, msg.payload, trace)).await {
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
