//! One module per scenario, each with its arguments and its `run`.

pub mod chat;
pub mod connect;
mod connect_backend;
pub mod fanout;
pub mod floor;
pub mod history;
pub mod idle;
pub mod members;
pub mod soak;
pub mod storm;

use crate::metrics::Accounting;
use crate::procfs::{Proc, ProcSample};
use crate::run::Run;
use serde_json::{json, Value};

/// Server figures between two samples, or `null` without `--server-pid`.
pub fn server_delta(run: &Run, before: &ProcSample, after: &ProcSample) -> Value {
    if run.server.is_none() {
        return Value::Null;
    }
    json!({
        "rss_before_kib": before.rss_kib,
        "rss_after_kib": after.rss_kib,
        "cpu_s": after.cpu_s - before.cpu_s,
        "fds_before": before.fds,
        "fds_after": after.fds,
    })
}

/// CPU seconds this bench process has used so far.
pub fn bench_cpu_s() -> f64 {
    Proc::myself().sample().map(|s| s.cpu_s).unwrap_or(0.0)
}

/// Latency and loss figures of a run.
pub fn delivery_figures(run_latency: crate::metrics::Percentiles, acc: &Accounting) -> Value {
    json!({
        "latency_ms": {
            "samples": run_latency.count,
            "p50": run_latency.p50_ms,
            "p90": run_latency.p90_ms,
            "p99": run_latency.p99_ms,
            "p99_9": run_latency.p999_ms,
            "max": run_latency.max_ms,
        },
        "received": acc.received,
        "lost": acc.lost,
        "duplicated": acc.duplicated,
        "out_of_order": acc.out_of_order,
    })
}

/// Failures and errors as JSON objects.
pub fn failure_figures(run: &Run) -> Value {
    json!({
        "by_reason": run.sh.failures(),
        "error_frames": run.sh.errors(),
    })
}

/// Bytes on the wire (read from server sockets over the window) per
/// delivery, and how permessage-deflate went.
pub fn wire_figures(w: &crate::wire::WireStats, bytes: u64, deliveries: u64) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    json!({
        "bytes": bytes,
        "bytes_per_delivery": bytes as f64 / deliveries.max(1) as f64,
        "deflate_offered": w.offered.load(Relaxed),
        "deflate_negotiated": w.negotiated.load(Relaxed),
        "deflate_context_takeover": w.context_takeover.load(Relaxed),
        "messages_inflated": w.inflated.load(Relaxed),
    })
}
