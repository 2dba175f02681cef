//! The engine's metrics. No labels carry room or user names.

use herald_engine_kit::telemetry::Command;
use metrics::{counter, describe_counter, Unit};

/// SSUBSCRIBE of a room's channel.
pub(super) static SUBSCRIBE: Command = Command::new("redis", "subscribe");
/// SUNSUBSCRIBE of a room's channel.
pub(super) static UNSUBSCRIBE: Command = Command::new("redis", "unsubscribe");
/// SPUBLISH of a presence change on a room's channel.
pub(super) static PRESENCE_PUBLISH: Command = Command::new("redis", "presence_publish");

const PUBLISH_FAILED: &str = "herald_redis_publish_failed_total";
const CATCHUP_DELIVERED: &str = "herald_redis_catchup_delivered_total";
const MISSED: &str = "herald_redis_missed_total";
const RECONNECTS: &str = "herald_redis_reconnects_total";

pub(super) fn describe() {
    describe_counter!(
        PUBLISH_FAILED,
        Unit::Count,
        "Publishes the Redis broker refused, by reason (unavailable, internal)"
    );
    describe_counter!(
        CATCHUP_DELIVERED,
        Unit::Count,
        "Publications delivered from a room's stored history instead of pub/sub (gap fills and catch-up after a reconnect or lag)"
    );
    describe_counter!(
        MISSED,
        Unit::Count,
        "Publications of listened rooms that were never delivered: gone from history before a gap could be filled"
    );
    describe_counter!(
        RECONNECTS,
        Unit::Count,
        "Connections (re)established to Redis by the broker's clients (the first connect counts), by client"
    );
    // At zero from the start, so alerts on their increase see a series.
    counter!(MISSED).increment(0);
    counter!(CATCHUP_DELIVERED).increment(0);
    for reason in ["unavailable", "internal"] {
        counter!(PUBLISH_FAILED, "reason" => reason).increment(0);
    }
    herald_engine_kit::telemetry::register_commands(&[&SUBSCRIBE, &UNSUBSCRIBE, &PRESENCE_PUBLISH]);
}

pub(super) fn publish_failed(reason: &'static str) {
    counter!(PUBLISH_FAILED, "reason" => reason).increment(1);
}

pub(super) fn catchup_delivered(n: u64) {
    counter!(CATCHUP_DELIVERED).increment(n);
}

pub(super) fn missed(n: u64) {
    counter!(MISSED).increment(n);
}

pub(super) fn reconnected(client: &'static str) {
    counter!(RECONNECTS, "client" => client).increment(1);
}
