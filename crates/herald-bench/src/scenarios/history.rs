//! `history`: publishes E events over R rooms of a namespace with a large
//! history and reports the server's memory per stored event, both as RSS
//! growth and as its own `history_bytes` from `/api/v1/stats`.

use crate::publish::{self, PayloadKind, PublishPlan};
use crate::report::Report;
use crate::Common;
use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use std::time::Duration;

/// `history` arguments.
#[derive(Args, Debug, Clone)]
pub struct HistoryArgs {
    /// Rooms the events go to.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Events in total (keep events/rooms within the namespace's history_size).
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Bytes of each event's `data`.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Events per second.
    #[arg(long, default_value_t = 5000.0)]
    pub rate: f64,
    /// Concurrent HTTP publishers.
    #[arg(long, default_value_t = 8)]
    pub publishers: usize,
}

/// Runs `history`.
pub async fn run(c: &Common, a: &HistoryArgs) -> Result<Report> {
    if a.rooms == 0 || a.events == 0 || a.rate <= 0.0 {
        bail!("--rooms, --events and --rate must be positive");
    }
    let ns = c.ns("benchhist");
    let server = c.server()?;
    let sample = || server.and_then(|p| p.sample().ok()).unwrap_or_default();
    let http = publish::http_client()?;
    let base = c.url_base();
    let (bytes0, events0) = publish::history_stats(&http, &base, &c.api_key).await?;
    let before = sample();
    let plan = PublishPlan {
        rooms: (0..a.rooms).map(|r| format!("{ns}:{r}")).collect(),
        rate: a.rate,
        count: a.events,
        payload: a.payload,
        publishers: a.publishers,
        kind: PayloadKind::Padded,
    };
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let pubs = publish::run(&http, &base, &c.api_key, &plan, stop).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = sample();
    let (bytes1, events1) = publish::history_stats(&http, &base, &c.api_key).await?;
    let stored = events1.saturating_sub(events0);
    let per = |d: f64| d / (stored.max(1) as f64);
    let server_fig = if server.is_some() {
        json!({
            "rss_before_kib": before.rss_kib,
            "rss_after_kib": after.rss_kib,
            "rss_bytes_per_stored_event": per((after.rss_kib as f64 - before.rss_kib as f64) * 1024.0),
            "cpu_us_per_publish": (after.cpu_s - before.cpu_s) * 1e6 / pubs.ok.max(1) as f64,
        })
    } else {
        serde_json::Value::Null
    };
    Ok(Report {
        scenario: "history",
        params: json!({"rooms": a.rooms, "events": a.events, "payload": a.payload, "namespace": ns}),
        figures: json!({
            "published": pubs,
            "stored_events_added": stored,
            "history_bytes_added": bytes1.saturating_sub(bytes0),
            "history_bytes_per_stored_event": per(bytes1.saturating_sub(bytes0) as f64),
            "server": server_fig,
        }),
        timeline: Vec::new(),
    })
}
