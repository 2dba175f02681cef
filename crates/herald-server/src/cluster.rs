//! TEMPORARY: the Redis engine is being written; the real wiring is kept
//! in /work/briefs/server_cluster.rs until it lands.

use crate::config::Config;
use herald_broker_redis::RedisSetupError;
use herald_core::TokenVerifier;
use herald_node::{Node, NodeSettings};
use std::sync::Arc;

pub(crate) struct RedisSide;

impl RedisSide {
    pub(crate) async fn close(self) {}
}

pub(crate) fn build(
    _config: &Config,
    _node_id: &str,
    _settings: NodeSettings,
    _verifier: Arc<dyn TokenVerifier>,
) -> Result<(Node, RedisSide), RedisSetupError> {
    Err(RedisSetupError::Url("the redis engine is not wired in yet".into()))
}
