//! A build without the `bridge` feature has no ingest bridges: config
//! validation refused any `[bridge]` key, so there is nothing to resolve
//! or start.

use super::ServeError;
use crate::config::Config;
use crate::publish_target::ApiPublish;
use herald_node::Node;
use std::sync::Arc;

/// No bridges: nothing was configured (validation saw to it).
pub(super) struct NoBridges;

/// Nothing to resolve.
pub(super) fn bridge_plan(_: &Config) -> Result<NoBridges, ServeError> {
    Ok(NoBridges)
}

/// Nothing to start.
pub(super) fn start_bridges(
    _: NoBridges,
    _: &str,
    _: &Node,
    _: Arc<ApiPublish>,
) -> Result<(), ServeError> {
    Ok(())
}
