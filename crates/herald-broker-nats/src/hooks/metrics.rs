//! The NATS outbox's metrics (no labels: one outbox per cluster).

use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};

const LOST: &str = "herald_nats_hooks_lost_total";
const LEASE_LOST: &str = "herald_nats_hooks_lease_lost_total";
const LEASE_HELD: &str = "herald_webhook_lease_held";
const LEASE_ACQUIRED: &str = "herald_webhook_lease_acquired_total";
const RETRIED: &str = "herald_nats_hooks_pending_retried_total";

pub(super) fn describe() {
    describe_counter!(
        LOST,
        Unit::Count,
        "Webhook events gone from the outbox stream before they were delivered (its max_age or max_msgs bound)"
    );
    describe_counter!(
        LEASE_LOST,
        Unit::Count,
        "Times this node lost the webhook dispatch lease while holding it"
    );
    describe_gauge!(
        LEASE_HELD,
        "1 while this node holds the webhook dispatch lease (sends the cluster's webhooks), else 0"
    );
    describe_counter!(
        LEASE_ACQUIRED,
        Unit::Count,
        "Times this node took the webhook dispatch lease"
    );
    describe_counter!(
        RETRIED,
        Unit::Count,
        "Registry transitions whose webhook event was published by a later pass (the first publish failed, or its node died first)"
    );
}

pub(crate) fn lost(n: u64) {
    counter!(LOST).increment(n);
}

pub(crate) fn lease_lost() {
    counter!(LEASE_LOST).increment(1);
}

pub(crate) fn lease_held(held: bool) {
    gauge!(LEASE_HELD).set(if held { 1.0 } else { 0.0 });
    if held {
        counter!(LEASE_ACQUIRED).increment(1);
    }
}

pub(crate) fn pending_retried() {
    counter!(RETRIED).increment(1);
}
