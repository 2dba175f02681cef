//! Publishing with tracing: the `publish` span of an API call or ingest
//! message and the `broker.publish` span of each engine call under it
//! (herald-telemetry). With tracing off, or a publish not sampled, this
//! is [`Node::publish`] after one check.

use crate::request_id::RequestId;
use axum::http::HeaderMap;
use herald_core::{PublishOutcome, TraceContext};
use herald_node::{Node, NodeError, PublishInput};
use herald_telemetry::{PublishSource, PublishSpan};

/// The publisher's `traceparent` header, when it sent a valid one (a
/// malformed one is ignored and the publish starts a new trace, as the W3C
/// spec asks).
pub(crate) fn traceparent(headers: &HeaderMap) -> Option<TraceContext> {
    TraceContext::parse_traceparent(headers.get("traceparent")?.to_str().ok()?)
}

/// Publishes `input`, traced when the node traces and the publish is
/// sampled (`parent` being the publisher's context, if any; `request_id`
/// the API call's, if it came through the HTTP API).
pub(crate) async fn publish(
    node: &Node,
    input: PublishInput,
    parent: Option<TraceContext>,
    source: PublishSource,
    request_id: Option<&RequestId>,
) -> Result<PublishOutcome, NodeError> {
    let Some(span) = start(node, parent, source, &input, Some(&input.room), request_id) else {
        return node.publish(input).await;
    };
    let result = broker_hop(node, &span, input).await;
    end(span, result.as_ref().map(|_| 1));
    result
}

/// The `publish` span of `input` (for a broadcast, `room` is `None`).
pub(crate) fn start(
    node: &Node,
    parent: Option<TraceContext>,
    source: PublishSource,
    input: &PublishInput,
    room: Option<&str>,
    request_id: Option<&RequestId>,
) -> Option<PublishSpan> {
    node.telemetry()?.publish_span(
        parent,
        source,
        input.tenant.as_str(),
        room,
        &input.event,
        request_id.map(RequestId::as_str),
    )
}

/// One engine call under `span`, in its own `broker.publish` span whose
/// context the engine carries to every node's fan-out.
pub(crate) async fn broker_hop(
    node: &Node,
    span: &PublishSpan,
    input: PublishInput,
) -> Result<PublishOutcome, NodeError> {
    let hop = span.broker_span(node.broker().kind(), &input.room);
    let result = node.publish_traced(input, Some(hop.context())).await;
    match &result {
        Ok(o) => hop.published(&o.position.epoch, o.position.offset, o.duplicate),
        Err(e) => hop.failed(&e.to_string()),
    }
    result
}

/// Ends `span` with the number of events published, or the error.
pub(crate) fn end(span: PublishSpan, outcome: Result<usize, &NodeError>) {
    match outcome {
        Ok(n) => span.end(Ok(n)),
        Err(e) => span.end(Err(&e.to_string())),
    }
}
