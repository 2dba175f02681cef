//! Connecting to Redis: one command client and one subscriber client per
//! node, both reconnecting on their own with exponential backoff and jitter.

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::ClientLike;
use fred::types::config::{Config, ConnectionConfig, PerformanceConfig, ReconnectPolicy};
use fred::types::Builder;
use std::time::Duration;

/// Settings of the Redis engine (the `[broker]` table, resolved).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://host:port[/db]`, or `redis-cluster://host:port?node=host:port`
    /// for Redis Cluster (sharded pub/sub is used then).
    pub url: String,
    /// Prefix of every key and channel (`broker.prefix`).
    pub prefix: String,
    /// This node's id.
    pub node_id: String,
    /// How often a node renews its registry entry; a node silent for two
    /// periods is declared dead and cleaned up by the survivors.
    pub node_heartbeat: Duration,
    /// Longest wait for one Redis command before answering `unavailable`.
    pub command_timeout: Duration,
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    /// `broker.redis_url` is not a Redis URL fred understands.
    #[error("broker.redis_url: {0}")]
    Url(String),
}

/// The node's Redis connections.
#[derive(Clone)]
pub struct RedisClients {
    /// Commands, scripts and publishes.
    pub commands: Client,
    /// Room channels (SUBSCRIBE, or SSUBSCRIBE on a cluster) and the control
    /// channel.
    pub subscriber: SubscriberClient,
    /// Whether the URL names a Redis Cluster.
    pub clustered: bool,
}

/// Messages buffered between the subscriber connection and its reader
/// before the reader is reported as lagging (it then catches up from the
/// streams). fred sizes all nine of a client's notification channels with
/// this and allocates them up front, so only the subscriber gets it.
const PUBSUB_BUFFER: usize = 16_384;
/// The same for clients that never subscribe (commands, and the ingest
/// consumer's clone): fred's default. 65,536 there cost ~40 MB per client.
const NO_PUBSUB_BUFFER: usize = 32;

fn reconnect_policy() -> ReconnectPolicy {
    // Unbounded attempts, 100 ms doubling to 5 s, up to 100 ms of jitter.
    let mut policy = ReconnectPolicy::new_exponential(0, 100, 5_000, 2);
    policy.set_jitter(100);
    policy
}

impl RedisClients {
    /// Builds both clients and starts connecting them in the background.
    /// They keep retrying while Redis is away; `is_connected` tells.
    pub fn connect(settings: &RedisSettings) -> Result<Self, RedisSetupError> {
        let mut config =
            Config::from_url(&settings.url).map_err(|e| RedisSetupError::Url(e.to_string()))?;
        // Keep retrying the first connection too: a node may start before Redis.
        config.fail_fast = false;
        let clustered = config.server.is_clustered();
        let performance = |broadcast_channel_capacity| PerformanceConfig {
            default_command_timeout: settings.command_timeout,
            broadcast_channel_capacity,
            ..Default::default()
        };
        let connection = ConnectionConfig {
            connection_timeout: Duration::from_secs(2),
            internal_command_timeout: Duration::from_secs(2),
            // A command is never sent twice: a retried publish script could
            // publish twice.
            max_command_attempts: 1,
            ..Default::default()
        };
        let build = |config: Config, buffer: usize| {
            let mut builder = Builder::from_config(config);
            builder
                .set_performance_config(performance(buffer))
                .set_connection_config(connection.clone())
                .set_policy(reconnect_policy());
            builder
        };
        let commands = build(config.clone(), NO_PUBSUB_BUFFER)
            .build()
            .map_err(|e| RedisSetupError::Url(e.to_string()))?;
        let subscriber = build(config, PUBSUB_BUFFER)
            .build_subscriber_client()
            .map_err(|e| RedisSetupError::Url(e.to_string()))?;
        Ok(Self {
            commands,
            subscriber,
            clustered,
        })
    }

    /// Starts the connection tasks and returns their handles, which finish
    /// after [`RedisClients::quit`]; the caller owns them.
    pub fn start(&self) -> [fred::types::ConnectHandle; 2] {
        [self.commands.connect(), self.subscriber.connect()]
    }

    /// Whether both connections are up.
    pub fn is_connected(&self) -> bool {
        self.commands.is_connected() && self.subscriber.is_connected()
    }

    /// Closes both connections.
    pub async fn quit(&self) {
        let _ = self.subscriber.quit().await;
        let _ = self.commands.quit().await;
    }
}
