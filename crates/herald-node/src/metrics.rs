//! The node's Prometheus metrics, registered through the `metrics` facade.
//! Labels are bounded: close reasons, auth failure reasons, transport
//! names, configured namespaces and at most `metrics.max_event_names`
//! event names ([`events`]), never room or user names.

mod events;
mod queues;

pub(crate) use events::EventCounters;
pub use events::{set_max_event_names, DEFAULT_MAX_EVENT_NAMES, OTHER};
pub use queues::{sample_send_queues, QueueSample, DEPTH_BUCKETS};

use crate::transport::Transport;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Counter, Histogram};
use std::sync::OnceLock;
use std::time::Duration;

/// Describes every node metric once at start, so they show with help text.
pub fn describe() {
    describe_gauge!("herald_connections", "Open client connections on this node");
    describe_gauge!(
        "herald_connections_by_transport",
        "Open client connections on this node, by transport"
    );
    describe_counter!(
        "herald_connections_opened_total",
        "Connections authenticated and admitted, by transport"
    );
    describe_counter!(
        "herald_connections_closed_total",
        "Connections closed, by reason and transport"
    );
    describe_counter!("herald_auth_failures_total", "Rejected tokens, by reason");
    describe_counter!(
        "herald_access_checks_total",
        "Proxy-rule checks, by action (join, send), result (allow, deny, unavailable, rejected) and whether the connection's cache answered"
    );
    describe_counter!(
        "herald_rpc_calls_total",
        "Client rpc calls, by result (ok, rejected, unavailable, limit_exceeded, disabled)"
    );
    describe_counter!("herald_messages_received_total", "Client frames received");
    describe_counter!("herald_messages_sent_total", "Frames written to clients");
    describe_counter!(
        "herald_publish_total",
        "Events accepted by the broker from this node"
    );
    describe_histogram!(
        "herald_delivery_latency_seconds",
        metrics::Unit::Seconds,
        "Time from publish accepted to frame written to the socket"
    );
    describe_counter!(
        "herald_send_queue_overflows_total",
        "Connections cut as slow consumers"
    );
    describe_counter!(
        "herald_send_queue_dropped_events_total",
        "Queued events a full send queue removed instead of cutting the connection, by reason (drop, conflate)"
    );
    describe_counter!(
        "herald_events_dropped_notices_total",
        "events_dropped notices queued to clients whose full queue dropped events"
    );
    describe_gauge!(
        "herald_rooms",
        "Rooms with at least one member on this node"
    );
    describe_counter!(
        "herald_rate_limited_total",
        "Client frames refused by the rate limit"
    );
    // Registered at zero so dashboards and alerts see every series from
    // the start, not after the first incident.
    for name in [
        "herald_messages_received_total",
        "herald_messages_sent_total",
        "herald_publish_total",
        "herald_send_queue_overflows_total",
        "herald_rate_limited_total",
        "herald_events_dropped_notices_total",
    ] {
        counter!(name).increment(0);
    }
    for reason in ["drop", "conflate"] {
        counter!("herald_send_queue_dropped_events_total", "reason" => reason).increment(0);
    }
    gauge!("herald_connections").set(0.0);
    for transport in [
        Transport::WEBSOCKET.name,
        Transport::SSE.name,
        Transport::SOCKETIO.name,
    ] {
        counter!("herald_connections_opened_total", "transport" => transport).increment(0);
        gauge!("herald_connections_by_transport", "transport" => transport).set(0.0);
    }
    gauge!("herald_rooms").set(0.0);
    queues::describe();
}

/// Sets the open-connection gauge.
pub fn connections(n: usize) {
    gauge!("herald_connections").set(n as f64);
}

/// Counts an admitted connection of `transport`.
pub fn connection_opened(transport: &'static str) {
    counter!("herald_connections_opened_total", "transport" => transport).increment(1);
    gauge!("herald_connections_by_transport", "transport" => transport).increment(1.0);
}

/// Counts a closed connection of `transport` by reason.
pub fn connection_closed(reason: &'static str, transport: &'static str) {
    counter!("herald_connections_closed_total", "reason" => reason, "transport" => transport)
        .increment(1);
    gauge!("herald_connections_by_transport", "transport" => transport).decrement(1.0);
}

/// Counts a rejected token by reason.
pub fn auth_failure(reason: &'static str) {
    counter!("herald_auth_failures_total", "reason" => reason).increment(1);
}

/// Counts a `proxy` rule check.
pub fn access_check(action: &'static str, result: &'static str, cached: bool) {
    let cached = if cached { "true" } else { "false" };
    counter!("herald_access_checks_total", "action" => action, "result" => result, "cached" => cached)
        .increment(1);
}

/// Counts an `rpc` call by result.
pub fn rpc_call(result: &'static str) {
    counter!("herald_rpc_calls_total", "result" => result).increment(1);
}

/// Counts client frames received.
pub fn message_received() {
    counter!("herald_messages_received_total").increment(1);
}

/// Counts frames written to clients.
pub fn messages_sent(n: u64) {
    static HANDLE: OnceLock<Counter> = OnceLock::new();
    HANDLE
        .get_or_init(|| counter!("herald_messages_sent_total"))
        .increment(n);
}

/// Counts accepted publishes.
pub fn published() {
    counter!("herald_publish_total").increment(1);
}

/// Records one publish-to-write latency.
pub fn delivery_latency(d: Duration) {
    // Per delivered frame: a cached handle skips the registry lookup.
    static HANDLE: OnceLock<Histogram> = OnceLock::new();
    HANDLE
        .get_or_init(|| histogram!("herald_delivery_latency_seconds"))
        .record(d.as_secs_f64());
}

/// Counts a slow-consumer cut.
pub fn send_queue_overflow() {
    counter!("herald_send_queue_overflows_total").increment(1);
}

/// Counts events a full queue shed (by reason) and the `events_dropped`
/// notices it queued.
pub fn events_shed(dropped: u64, conflated: u64, notices: u64) {
    if dropped > 0 {
        counter!("herald_send_queue_dropped_events_total", "reason" => "drop").increment(dropped);
    }
    if conflated > 0 {
        counter!("herald_send_queue_dropped_events_total", "reason" => "conflate")
            .increment(conflated);
    }
    if notices > 0 {
        counter!("herald_events_dropped_notices_total").increment(notices);
    }
}

/// Sets the room gauge.
pub fn rooms(n: usize) {
    gauge!("herald_rooms").set(n as f64);
}

/// Counts a rate-limited frame.
pub fn rate_limited() {
    counter!("herald_rate_limited_total").increment(1);
}
