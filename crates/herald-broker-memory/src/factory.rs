//! The memory engine's factory: one node, history in the node's memory,
//! presence answered from the node's own members, webhook events in a
//! bounded in-memory outbox ([`MemoryOutbox`]).

use crate::{MemoryBroker, MemoryOutbox};
use herald_core::{
    Engine, EngineCapabilities, EngineContext, EngineError, EngineFactory, EngineSettings,
    LocalPresence, SettingError,
};
use std::sync::Arc;
use std::time::Duration;

/// How often the memory engine forgets streams with no history and no
/// members (and expired idempotency keys).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Builds the memory engine (`broker.kind = "memory"`). It reads no
/// `[broker]` key.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryEngine;

impl EngineFactory for MemoryEngine {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> EngineCapabilities {
        EngineCapabilities { multi_node: false }
    }

    fn validate(&self, _settings: &EngineSettings) -> Vec<SettingError> {
        Vec::new()
    }

    fn start(&self, ctx: EngineContext) -> Result<Engine, EngineError> {
        let broker = Arc::new(MemoryBroker::new(ctx.sink).with_history_budget(ctx.history_budget));
        let sweeper = broker.clone();
        let cancel = ctx.cancel;
        ctx.tasks.spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => sweeper.sweep(),
                }
            }
        });
        Ok(Engine {
            broker,
            cluster: None,
            presence: Arc::new(LocalPresence::new(ctx.presence_sink)),
            shutdown: None,
            outbox: Some(Arc::new(MemoryOutbox::default())),
        })
    }
}
