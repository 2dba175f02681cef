//! The Redis pub/sub bridge. Pub/sub has no message ids and every
//! subscriber gets every message, so exactly one node of the cluster
//! subscribes: the holder of the lock `<prefix>:bridge:leader` (`SET NX PX
//! redis_leader_ttl`, renewed every third of the TTL by its holder). When
//! the leader dies, its lock expires and another node takes the channels
//! within about 1.3 TTL; what is published meanwhile is lost (pub/sub is
//! at most once by nature).
//!
//! A leader that cannot renew stops handling messages when its lock may
//! have expired (measured from before its last successful renewal), so two
//! nodes never bridge at once unless the clocks of the leader and Redis
//! drift by more than a tenth of the TTL.
//!
//! The leader publishes each mapping's rooms side by side, each room's
//! messages in the order received (per-room lanes, `lanes.rs`).
//!
//! Each mapping has a subscriber connection of its own: `PSUBSCRIBE`
//! messages do not say which pattern they matched, and overlapping patterns
//! on one connection would be indistinguishable.

use crate::handler::{relay_once, Handler};
use crate::lanes::{Lanes, LANES};
use crate::leader::leading;
use crate::BridgeError;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, KeysInterface, LuaInterface, PubsubInterface};
use fred::types::config::{Config, ConnectionConfig, PerformanceConfig, ReconnectPolicy};
use fred::types::{Builder, ConnectHandle, Expiration, SetOptions, Value};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

/// Renews the lock only if this node holds it.
const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// Releases the lock only if this node holds it.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Messages buffered between a subscriber connection and its bridge.
const PUBSUB_BUFFER: usize = 4_096;
/// Longest wait for the shutdown steps.
const SHUTDOWN_WAIT: Duration = Duration::from_millis(1500);

/// One channel mapping.
pub(crate) struct RedisRoute {
    pub(crate) channel: String,
    pub(crate) handler: Handler,
}

/// Settings of the Redis bridges.
pub(crate) struct RedisBridge {
    pub(crate) url: String,
    pub(crate) prefix: String,
    pub(crate) node_id: String,
    pub(crate) ttl: Duration,
    pub(crate) retry_for: Duration,
    pub(crate) command_timeout: Duration,
}

fn build(url: &str, command_timeout: Duration, buffer: usize) -> Result<Builder, BridgeError> {
    let mut config = Config::from_url(url).map_err(|e| BridgeError::RedisUrl(e.to_string()))?;
    config.fail_fast = false;
    let mut policy = ReconnectPolicy::new_exponential(0, 100, 5_000, 2);
    policy.set_jitter(100);
    let mut builder = Builder::from_config(config);
    builder
        .set_performance_config(PerformanceConfig {
            default_command_timeout: command_timeout,
            broadcast_channel_capacity: buffer,
            ..Default::default()
        })
        .set_connection_config(ConnectionConfig {
            connection_timeout: Duration::from_secs(2),
            internal_command_timeout: Duration::from_secs(2),
            max_command_attempts: 1,
            ..Default::default()
        })
        .set_policy(policy);
    Ok(builder)
}

impl RedisBridge {
    /// Starts the leader election and one task per route.
    pub(crate) fn spawn(
        self,
        routes: Vec<RedisRoute>,
        cancel: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<(), BridgeError> {
        let commands = build(&self.url, self.command_timeout, 32)?
            .build()
            .map_err(|e| BridgeError::RedisUrl(e.to_string()))?;
        let (leader_tx, leader_rx) = watch::channel(None::<Instant>);
        for route in routes {
            let subscriber = build(&self.url, self.command_timeout, PUBSUB_BUFFER)?
                .build_subscriber_client()
                .map_err(|e| BridgeError::RedisUrl(e.to_string()))?;
            let lanes = route_lanes(&route.handler, self.retry_for, &cancel, tasks);
            tasks.spawn(run_route(
                subscriber,
                route,
                lanes,
                leader_rx.clone(),
                self.ttl,
                cancel.clone(),
            ));
        }
        tasks.spawn(self.lead(commands, leader_tx, cancel));
        Ok(())
    }

    /// Holds or waits for the lock until cancelled; publishes until when
    /// this node may act as the leader.
    async fn lead(
        self,
        client: Client,
        leader: watch::Sender<Option<Instant>>,
        cancel: CancellationToken,
    ) {
        let connection = client.connect();
        let key = format!("{}:bridge:leader", self.prefix);
        let ttl_ms = self.ttl.as_millis() as i64;
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut holding = false;
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let started = Instant::now();
            let answer = if holding {
                client
                    .eval::<i64, _, _, _>(
                        RENEW,
                        key.as_str(),
                        vec![self.node_id.clone(), ttl_ms.to_string()],
                    )
                    .await
                    .map(|n| n == 1)
            } else {
                client
                    .set::<Value, _, _>(
                        key.as_str(),
                        self.node_id.as_str(),
                        Some(Expiration::PX(ttl_ms)),
                        Some(SetOptions::NX),
                        false,
                    )
                    .await
                    .map(|v| !v.is_null())
            };
            match answer {
                Ok(true) => {
                    if !holding {
                        info!(node = %self.node_id, %key, "bridge: this node now reads the Redis channels");
                    }
                    holding = true;
                    // The lock lives at least `ttl` from when Redis ran the
                    // command, which was after `started`; keep a margin.
                    let _ = leader.send(Some(started + self.ttl * 9 / 10));
                }
                Ok(false) => {
                    if holding {
                        info!(node = %self.node_id, %key, "bridge: another node holds the Redis channels");
                    }
                    holding = false;
                    let _ = leader.send(None);
                }
                // The lock may still be ours until the last validity ends;
                // the routes stop on their own when it passes.
                Err(e) => tracing::debug!(error = %e, "bridge: Redis leader lock not renewed"),
            }
        }
        let _ = leader.send(None);
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        if holding && client.is_connected() {
            // Hand over now rather than after the TTL.
            let release =
                client.eval::<i64, _, _, _>(RELEASE, key.as_str(), vec![self.node_id.clone()]);
            let _ = tokio::time::timeout_at(deadline, release).await;
        }
        close(client, connection, deadline).await;
    }
}

async fn close<C: ClientLike>(client: C, mut connection: ConnectHandle, deadline: Instant) {
    let _ = tokio::time::timeout_at(deadline, client.quit()).await;
    if tokio::time::timeout_at(deadline, &mut connection)
        .await
        .is_err()
    {
        connection.abort();
    }
}

/// A channel message queued on a lane: the channel and the payload.
type Job = (String, Vec<u8>);

/// The per-room lanes of one channel mapping.
fn route_lanes(
    handler: &Handler,
    retry_for: Duration,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
) -> Lanes<Job> {
    let (work_handler, work_cancel, drop_handler) =
        (handler.clone(), cancel.clone(), handler.clone());
    Lanes::spawn(
        move |(channel, payload): Job| {
            let (handler, cancel) = (work_handler.clone(), work_cancel.clone());
            // Redis pub/sub messages have no headers: nothing to continue.
            async move { relay_once(&handler, &channel, &payload, None, retry_for, &cancel).await }
        },
        move |(channel, _): Job| {
            let handler = drop_handler.clone();
            async move { handler.dropped(&channel, "the node is shutting down") }
        },
        cancel,
        tasks,
    )
}

/// Subscribes while this node leads, and queues what arrives on the lane of
/// its room (each room published in the order received).
async fn run_route(
    client: SubscriberClient,
    route: RedisRoute,
    lanes: Lanes<Job>,
    mut leader: watch::Receiver<Option<Instant>>,
    ttl: Duration,
    cancel: CancellationToken,
) {
    let connection = client.connect();
    let mut messages = client.message_rx();
    let mut subscribed = false;
    // Re-checks leadership even when no renewal arrives (Redis away).
    let mut tick = tokio::time::interval(ttl / 10);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
            changed = leader.changed() => if changed.is_err() { break },
            m = messages.recv() => match m {
                Ok(msg) => {
                    if leading(&leader) {
                        let payload: &[u8] = match &msg.value {
                            Value::Bytes(b) => b,
                            Value::String(s) => s.as_bytes(),
                            _ => b"",
                        };
                        let lane = route.handler.lane(&msg.channel, payload, LANES);
                        if !lanes.send(lane, (msg.channel.to_string(), payload.to_vec())).await {
                            break;
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    route.handler.warn_source("messages lost: the bridge fell behind", &format!("{n} messages"));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
        }
        let lead = leading(&leader);
        if lead && !subscribed {
            match client.psubscribe(route.channel.as_str()).await {
                Ok(()) => {
                    subscribed = true;
                    info!(bridge = route.handler.label(), channel = %route.channel, "bridge: subscribed");
                }
                Err(e) => route
                    .handler
                    .warn_source("cannot subscribe", &e.to_string()),
            }
        } else if !lead && subscribed {
            let _ = client.punsubscribe(route.channel.as_str()).await;
            subscribed = false;
            info!(bridge = route.handler.label(), channel = %route.channel, "bridge: unsubscribed");
        }
    }
    let deadline = Instant::now() + SHUTDOWN_WAIT;
    if subscribed {
        let _ =
            tokio::time::timeout_at(deadline, client.punsubscribe(route.channel.as_str())).await;
    }
    close(client, connection, deadline).await;
}
