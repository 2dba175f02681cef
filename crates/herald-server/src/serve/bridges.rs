//! Starting the `[bridge]` ingest bridges with the node, in a build with
//! the `bridge` feature; without it there are none to start (config
//! validation refused any `[bridge]` key).

use super::ServeError;
use crate::config::Config;
use crate::publish_target::ApiPublish;
use herald_node::Node;
use std::sync::Arc;

/// The resolved bridges.
#[cfg(feature = "bridge")]
pub(super) type Plan = herald_bridge::BridgePlan;

/// No bridges in this build.
#[cfg(not(feature = "bridge"))]
pub(super) struct Plan;

/// The `[bridge]` bridges, resolved (config validation already checked
/// them; a config built in code may not have been).
#[cfg(feature = "bridge")]
pub(super) fn bridge_plan(config: &Config) -> Result<Plan, ServeError> {
    use crate::config::ConfigError;
    config
        .bridge
        .plan(&config.bridge_defaults())
        .map_err(|errors| {
            ServeError::Config(ConfigError::Many(
                errors
                    .into_iter()
                    .map(|e| ConfigError::Invalid {
                        key: e.key,
                        message: e.message,
                    })
                    .collect(),
            ))
        })
}

/// No bridges in this build: nothing to resolve.
#[cfg(not(feature = "bridge"))]
pub(super) fn bridge_plan(_: &Config) -> Result<Plan, ServeError> {
    Ok(Plan)
}

/// Starts the bridges on the node's tracker and token, publishing through
/// the same path as `POST /api/v1/publish`.
#[cfg(feature = "bridge")]
pub(super) fn start_bridges(
    plan: Plan,
    node_id: &str,
    node: &Node,
    publish: Arc<ApiPublish>,
) -> Result<(), ServeError> {
    if plan.routes.is_empty() {
        return Ok(());
    }
    tracing::info!(bridges = plan.routes.len(), "starting ingest bridges");
    herald_bridge::spawn(plan, node_id, publish, node.cancellation(), node.tasks())?;
    Ok(())
}

/// No bridges in this build: nothing to start.
#[cfg(not(feature = "bridge"))]
pub(super) fn start_bridges(
    _: Plan,
    _: &str,
    _: &Node,
    _: Arc<ApiPublish>,
) -> Result<(), ServeError> {
    Ok(())
}
