//! The node's part of tracing (herald-telemetry): the `fanout` span around
//! a publication's delivery to this node's connections, and the handle
//! the API and ingest paths start their `publish` spans from.
//!
//! With tracing off the node holds no [`Telemetry`], and the fan-out pays
//! one check of an empty cell per publication.

use crate::conn::Connection;
use crate::node::Node;
use herald_core::{Publication, TraceContext};
use herald_telemetry::{FanoutSpan, Telemetry};
use std::sync::{Arc, OnceLock};

/// The `fanout` span of `p` on this node: `None` when tracing is off, or
/// the publication carries no sampled trace (replays never come here).
pub(crate) fn fanout_start(telemetry: &OnceLock<Telemetry>, p: &Publication) -> Option<FanoutSpan> {
    let telemetry = telemetry.get()?;
    let parent = p.trace.as_ref()?;
    telemetry.fanout_span(
        parent,
        p.room.tenant.as_str(),
        p.room.name.as_str(),
        &p.event,
    )
}

/// Ends the span once `p` is queued for `written`: recipients are the
/// connections it was queued on, bytes the frame bytes queued over all of
/// them (each connection's codec's frame, encoded once and shared).
pub(crate) fn fanout_queued(
    span: Option<FanoutSpan>,
    p: &Publication,
    written: &[Arc<Connection>],
) {
    if let Some(span) = span {
        let bytes = written.iter().map(|c| p.encoded(c.codec).len()).sum();
        span.queued(written.len(), bytes);
    }
}

impl Node {
    /// Turns tracing on for this node (once; later calls are ignored):
    /// fan-outs of sampled publications get a `fanout` span, and
    /// [`Node::telemetry`] hands out the tracer for `publish` spans.
    pub fn enable_tracing(&self, telemetry: Telemetry) {
        let _ = self.inner.rooms.telemetry.set(telemetry);
    }

    /// The node's tracer, when tracing is on.
    pub fn telemetry(&self) -> Option<&Telemetry> {
        self.inner.rooms.telemetry.get()
    }

    /// [`Node::publish`] continuing `trace` (the caller's `broker.publish`
    /// span): the engine carries it to every node's fan-out.
    pub async fn publish_traced(
        &self,
        input: crate::PublishInput,
        trace: Option<TraceContext>,
    ) -> Result<herald_core::PublishOutcome, crate::NodeError> {
        self.publish_with(input, trace).await
    }
}
