//! The Redis engine's factory (`broker.kind = "redis"`): connects the
//! node's clients and starts the broker, the cluster registry, the webhook
//! outbox and the ingest consumer, every task on the node's tracker.

use crate::{
    IngestConsumer, IngestFailure, IngestTarget, RedisBroker, RedisClients, RedisCluster,
    RedisHooks, RedisSettings,
};
use async_trait::async_trait;
use herald_core::{
    BrokerError, Engine, EngineCapabilities, EngineContext, EngineError, EngineFactory,
    EngineSettings, MemberRecord, Presence, PresenceChange, PublishRefusal, PublishTarget, RoomKey,
    SettingError,
};
use std::sync::Arc;
use std::time::Duration;

/// Builds the Redis engine. It reads `broker.redis_url`, `broker.prefix`,
/// `broker.node_heartbeat` and `broker.command_timeout`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisEngine;

const KIND: &str = "redis";

fn text<'a>(settings: &'a EngineSettings, key: &str) -> Option<&'a str> {
    settings.get(key).and_then(|v| v.as_str())
}

fn duration(settings: &EngineSettings, key: &str, default: Duration) -> Duration {
    text(settings, key)
        .and_then(|t| herald_core::duration::parse(t).ok())
        .unwrap_or(default)
}

impl RedisEngine {
    /// The engine's settings from the `[broker]` table, for node `node_id`
    /// (missing keys take their defaults; [`EngineFactory::validate`] has
    /// refused bad ones).
    pub fn settings(settings: &EngineSettings, node_id: &str) -> RedisSettings {
        RedisSettings {
            url: text(settings, "redis_url").unwrap_or_default().to_owned(),
            prefix: text(settings, "prefix").unwrap_or("herald").to_owned(),
            node_id: node_id.to_owned(),
            node_heartbeat: duration(settings, "node_heartbeat", Duration::from_secs(5)),
            command_timeout: duration(settings, "command_timeout", Duration::from_secs(2)),
        }
    }
}

impl EngineFactory for RedisEngine {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn capabilities(&self) -> EngineCapabilities {
        EngineCapabilities { multi_node: true }
    }

    fn validate(&self, settings: &EngineSettings) -> Vec<SettingError> {
        let problem = |message: &str| SettingError {
            key: "broker.redis_url".into(),
            message: message.into(),
        };
        match text(settings, "redis_url") {
            None | Some("") => vec![problem(
                "is required with broker.kind = \"redis\" (redis://host:port or \
                 redis-cluster://host:port?node=host:port)",
            )],
            Some(url) if !(url.starts_with("redis://") || url.starts_with("redis-cluster://")) => {
                vec![problem("must start with redis:// or redis-cluster://")]
            }
            Some(_) => Vec::new(),
        }
    }

    fn start(&self, ctx: EngineContext) -> Result<Engine, EngineError> {
        let settings = Self::settings(&ctx.settings, &ctx.node_id);
        let clients = RedisClients::connect(&settings).map_err(|e| EngineError {
            kind: KIND.into(),
            message: e.to_string(),
        })?;
        let connections = clients.start();
        // With webhooks off it starts nothing and the registry skips it.
        let hooks = RedisHooks::new(clients.clone(), &settings, ctx.hooks);
        hooks.spawn(ctx.cancel.clone(), &ctx.tasks);
        let cluster = RedisCluster::with_hooks(clients.clone(), &settings, Some(hooks.clone()));
        let broker = RedisBroker::new(clients.clone(), &settings, ctx.sink, ctx.presence_sink);
        broker.spawn(ctx.cancel.clone(), &ctx.tasks);
        cluster.spawn(ctx.node, ctx.cancel.clone(), &ctx.tasks);
        IngestConsumer::spawn(
            clients.clone(),
            &settings,
            Arc::new(Ingest(ctx.publish)),
            ctx.cancel,
            &ctx.tasks,
        );
        let presence = Arc::new(RedisPresence {
            broker: broker.clone(),
            cluster: cluster.clone(),
        });
        Ok(Engine {
            broker,
            cluster: Some(cluster),
            presence,
            outbox: Some(hooks),
            shutdown: Some(Box::pin(async move {
                clients.quit().await;
                for handle in connections {
                    let _ = tokio::time::timeout(Duration::from_secs(2), handle).await;
                }
            })),
        })
    }
}

/// Presence on Redis: changes go out on the room's channel (in order with
/// its publications), members are the registry's presence hash.
pub struct RedisPresence {
    broker: Arc<RedisBroker>,
    cluster: Arc<RedisCluster>,
}

#[async_trait]
impl Presence for RedisPresence {
    async fn announce(&self, change: &PresenceChange) -> Result<(), BrokerError> {
        self.broker.announce(change).await
    }

    async fn members(&self, room: &RoomKey) -> Result<Vec<MemberRecord>, BrokerError> {
        self.cluster.presence(room).await
    }
}

/// Publishes ingest-stream entries through the node's publish target,
/// like `POST /api/v1/publish`.
struct Ingest(Arc<dyn PublishTarget>);

#[async_trait]
impl IngestTarget for Ingest {
    async fn publish(
        &self,
        entry_id: &str,
        payload: &str,
        trace: Option<herald_core::TraceContext>,
    ) -> Result<(), IngestFailure> {
        // A re-delivered entry (its consumer died between publishing and
        // acknowledging) must not publish twice.
        let key = format!("ingest:{entry_id}");
        self.0
            .publish_json(payload.as_bytes(), Some(&key), trace)
            .await
            .map_err(|e| match e {
                PublishRefusal::Invalid(m) => IngestFailure::Invalid(m),
                PublishRefusal::Unavailable(m) => IngestFailure::Unavailable(m),
            })
    }
}
