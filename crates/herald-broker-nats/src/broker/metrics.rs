//! The engine's metrics: the Redis engine's under `herald_nats_*` where
//! they mean the same, plus the publish retries. No labels carry room or
//! user names.

use metrics::{counter, describe_counter, Unit};

const PUBLISH_FAILED: &str = "herald_nats_publish_failed_total";
const PUBLISH_RETRIES: &str = "herald_nats_publish_retries_total";
const CATCHUP_DELIVERED: &str = "herald_nats_catchup_delivered_total";
const MISSED: &str = "herald_nats_missed_total";
const RECONNECTS: &str = "herald_nats_reconnects_total";
const PURGED: &str = "herald_nats_purged_total";

pub(super) fn describe() {
    describe_counter!(
        PUBLISH_FAILED,
        Unit::Count,
        "Publishes the NATS broker refused, by reason (unavailable, internal)"
    );
    describe_counter!(
        PUBLISH_RETRIES,
        Unit::Count,
        "Publish attempts retried because another publisher took the room's next offset first (wrong last subject sequence)"
    );
    describe_counter!(
        CATCHUP_DELIVERED,
        Unit::Count,
        "Publications delivered from the rooms' stream instead of the delivery subject (gap fills and catch-up after a reconnect or a slow-consumer drop)"
    );
    describe_counter!(
        MISSED,
        Unit::Count,
        "Publications of listened rooms that were never delivered: gone from the stream before a gap could be filled"
    );
    describe_counter!(
        RECONNECTS,
        Unit::Count,
        "Connections (re)established to NATS (the first connect counts)"
    );
    describe_counter!(
        PURGED,
        Unit::Count,
        "Messages purged from the rooms' stream by this node's storage bound"
    );
}

pub(super) fn publish_failed(reason: &'static str) {
    counter!(PUBLISH_FAILED, "reason" => reason).increment(1);
}

pub(super) fn publish_retried() {
    counter!(PUBLISH_RETRIES).increment(1);
}

pub(super) fn catchup_delivered(n: u64) {
    counter!(CATCHUP_DELIVERED).increment(n);
}

pub(super) fn missed(n: u64) {
    counter!(MISSED).increment(n);
}

pub(super) fn reconnected() {
    counter!(RECONNECTS).increment(1);
}

pub(super) fn purged(n: u64) {
    counter!(PURGED).increment(n);
}
