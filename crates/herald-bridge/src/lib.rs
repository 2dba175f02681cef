//! Herald's ingest bridges: messages services already publish to NATS
//! subjects or Redis pub/sub channels, published into rooms once per
//! cluster, through the node's publish path (the checks of `POST
//! /api/v1/publish`).
//!
//! - `[bridge.nats_publish]`: the publish body as JSON on a subject
//!   (default `<prefix>.publish`), core NATS in a queue group or a durable
//!   JetStream consumer.
//! - `[[bridge.mappings]]`: a NATS subject pattern (core or JetStream) or a
//!   Redis channel glob mapped to a room, event and tenant by templates.
//!
//! Which node handles a message: with `ordered = true` (the default), the
//! holder of the bridge's leader lock (a NATS key-value bucket for NATS
//! bridges; a key in that Redis for Redis channels, which are always
//! ordered), publishing each room's messages in the order received while
//! rooms run concurrently (per-room lanes). With `ordered = false`: core
//! NATS, one member of the queue group; JetStream, the node that pulled it
//! from the shared durable consumer. JetStream messages are acknowledged
//! after the publish was accepted. See docs/operations.md, "Bridges".
//!
//! Bridges are independent of `broker.kind`; every task runs on the node's
//! tracker and stops on its token.

#![warn(missing_docs)]

mod config;
mod handler;
mod jetstream;
mod jetstream_ordered;
mod lanes;
mod leader;
mod message;
mod nats;
mod pattern;
mod plan;
mod redis;
mod template;

pub use config::{
    BodyMode, BridgeConfig, BridgeDefaults, BridgeSettingError, Deliver, MappingConfig, NatsAuth,
    NatsPublishConfig,
};
pub use pattern::Pattern;
pub use plan::{BridgePlan, NatsConnection, Route, Source, Transform};
pub use template::Template;

use handler::Handler;
use herald_core::PublishTarget;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the bridges could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The NATS URL is not usable.
    #[error("bridge.nats_url: {0}")]
    NatsUrl(String),
    /// The credentials file cannot be read or parsed.
    #[error("bridge.nats_credentials_file: {0}")]
    NatsCredentials(String),
    /// The Redis URL is not usable.
    #[error("bridge.redis_url: {0}")]
    RedisUrl(String),
}

/// Longest wait for the NATS connection to flush and close on shutdown.
const NATS_CLOSE_WAIT: Duration = Duration::from_millis(1500);

/// Starts every bridge of `plan` on `tasks`, publishing through `target`;
/// they stop when `cancel` fires and close their connections. Connections
/// are made in the background: a NATS or Redis away at start is retried.
pub fn spawn(
    plan: BridgePlan,
    node_id: &str,
    target: Arc<dyn PublishTarget>,
    cancel: CancellationToken,
    tasks: &TaskTracker,
) -> Result<(), BridgeError> {
    if plan.routes.is_empty() {
        return Ok(());
    }
    let client = match &plan.nats {
        Some(c) => Some(nats::connect(c, node_id, plan.command_timeout)?),
        None => None,
    };
    let mut redis_routes = Vec::new();
    for route in plan.routes {
        let handler = Handler::new(
            route.label,
            route.transform,
            target.clone(),
            plan.max_message_bytes,
        );
        // An ordered NATS route is read by the holder of its leader lock.
        let lease = match (&route.source, &client, route.ordered) {
            (Source::NatsCore { .. } | Source::JetStream { .. }, Some(client), true) => {
                let (tx, rx) = tokio::sync::watch::channel(None);
                let lock = leader::NatsLock {
                    client: client.clone(),
                    prefix: plan.prefix.clone(),
                    key: handler.label().to_owned(),
                    node_id: node_id.to_owned(),
                    ttl: plan.nats_leader_ttl,
                    command_timeout: plan.command_timeout,
                };
                tasks.spawn(lock.run(tx, cancel.clone()));
                Some(rx)
            }
            _ => None,
        };
        match (route.source, &client) {
            (
                Source::NatsCore {
                    subject,
                    queue_group,
                },
                Some(client),
            ) => {
                tasks.spawn(nats::run_core(
                    client.clone(),
                    subject,
                    queue_group,
                    handler,
                    lease,
                    plan.retry_for,
                    cancel.clone(),
                    tasks.clone(),
                ));
            }
            (
                Source::JetStream {
                    stream,
                    create_subjects,
                    durable,
                    filter,
                    deliver,
                    dead_letter,
                },
                Some(client),
            ) => {
                let source = jetstream::JetStreamSource {
                    stream,
                    create_subjects,
                    durable,
                    filter,
                    deliver,
                    dead_letter,
                };
                match lease {
                    Some(lease) => tasks.spawn(jetstream_ordered::run(
                        client.clone(),
                        plan.command_timeout,
                        source,
                        handler,
                        lease,
                        cancel.clone(),
                        tasks.clone(),
                    )),
                    None => tasks.spawn(jetstream::run(
                        client.clone(),
                        plan.command_timeout,
                        source,
                        handler,
                        cancel.clone(),
                    )),
                };
            }
            (Source::Redis { channel }, _) => {
                redis_routes.push(redis::RedisRoute { channel, handler });
            }
            // `BridgeConfig::plan` sets `nats` whenever a route reads NATS.
            (_, None) => return Err(BridgeError::NatsUrl("no NATS URL".into())),
        }
    }
    if !redis_routes.is_empty() {
        let url = plan
            .redis_url
            .clone()
            .ok_or_else(|| BridgeError::RedisUrl("no Redis URL".into()))?;
        redis::RedisBridge {
            url,
            prefix: plan.prefix.clone(),
            node_id: node_id.to_owned(),
            ttl: plan.redis_leader_ttl,
            retry_for: plan.retry_for,
            command_timeout: plan.command_timeout,
        }
        .spawn(redis_routes, cancel.clone(), tasks)?;
    }
    if let Some(client) = client {
        tasks.spawn(async move {
            cancel.cancelled().await;
            // The routes stop on the same token; give them a moment to
            // hand back (nak) what they hold, then close.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = tokio::time::timeout(NATS_CLOSE_WAIT, client.drain()).await;
        });
    }
    Ok(())
}
