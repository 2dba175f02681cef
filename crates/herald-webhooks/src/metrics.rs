//! The dispatcher's metrics (bounded labels: outcomes and drop reasons).

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use std::time::Duration;

/// Why events are dropped, across the node and the dispatcher.
pub const DROP_REASONS: [&str; 5] = [
    "max_age",
    "backlog_full",
    "queue_full",
    "append_failed",
    "shutdown",
];

/// POST outcomes.
pub const OUTCOMES: [&str; 5] = ["ok", "http_error", "timeout", "connect_error", "error"];

pub(crate) fn describe() {
    describe_counter!(
        "herald_webhook_posts_total",
        "Webhook POSTs, by outcome (ok, http_error, timeout, connect_error, error)"
    );
    describe_counter!(
        "herald_webhook_events_sent_total",
        "Webhook events delivered (acknowledged 2xx)"
    );
    describe_counter!(
        "herald_webhook_events_dropped_total",
        "Webhook events given up, by reason (max_age, backlog_full, queue_full, append_failed, shutdown)"
    );
    describe_counter!(
        "herald_webhook_append_failures_total",
        "Failed appends of webhook events to the outbox (retried)"
    );
    describe_histogram!(
        "herald_webhook_post_duration_seconds",
        metrics::Unit::Seconds,
        "Time from sending a webhook POST to its answer"
    );
    describe_gauge!(
        "herald_webhook_backlog",
        "Webhook events waiting in the outbox, as last seen by the dispatcher"
    );
    for outcome in OUTCOMES {
        counter!("herald_webhook_posts_total", "outcome" => outcome).increment(0);
    }
    for reason in DROP_REASONS {
        counter!("herald_webhook_events_dropped_total", "reason" => reason).increment(0);
    }
    counter!("herald_webhook_events_sent_total").increment(0);
    counter!("herald_webhook_append_failures_total").increment(0);
}

pub(crate) fn post(outcome: &'static str, took: Duration) {
    counter!("herald_webhook_posts_total", "outcome" => outcome).increment(1);
    histogram!("herald_webhook_post_duration_seconds").record(took.as_secs_f64());
}

pub(crate) fn sent(n: usize) {
    counter!("herald_webhook_events_sent_total").increment(n as u64);
}

pub(crate) fn dropped(reason: &'static str, n: usize) {
    counter!("herald_webhook_events_dropped_total", "reason" => reason).increment(n as u64);
}

pub(crate) fn backlog(n: u64) {
    gauge!("herald_webhook_backlog").set(n as f64);
}
