//! `storm`: clients receiving a steady stream are all dropped at once
//! (client side), reconnect with exponential backoff and full jitter, and
//! resume each room with `join_room` + `since`. Time until all are back,
//! events missed, and refused resumes.

use crate::conn::ConnSpec;
use crate::publish::{self, PublishPlan};
use crate::report::Report;
use crate::run::{account, Run};
use crate::Common;
use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// `storm` arguments.
#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    /// Connections.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Rooms they are spread over (namespace with history).
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Seconds of publishing; the drop happens at a third of it.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Events per second published over all rooms.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Bytes of each event's `data`.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
}

/// Runs `storm`.
pub async fn run(c: &Common, a: &StormArgs) -> Result<Report> {
    if a.rate <= 0.0 || a.rooms == 0 || a.duration < 3 {
        bail!("--rate and --rooms must be positive, --duration at least 3");
    }
    let ns = c.ns("benchstore");
    let n = a.conns as u64;
    let rooms: Vec<String> = (0..a.rooms).map(|r| format!("{ns}:{r}")).collect();
    let limit = Duration::from_secs(300 + a.duration + 60);
    let mut run = Run::new("storm", c.ctx(a.conns)?, c.server()?, limit, c.concurrency);
    for i in 0..n {
        run.spawn(ConnSpec {
            reconnect: true,
            ..ConnSpec::listener(i, rooms[(i % a.rooms as u64) as usize].clone())
        });
    }
    run.wait_until(Duration::from_secs(300), |s| {
        s.joined.load(Ordering::Relaxed) >= n
    })
    .await;
    let up = run.sh.joined.load(Ordering::Relaxed);
    let failures_before = run.sh.failures();
    run.sh.recorder.reset();
    let http = publish::http_client()?;
    let plan = PublishPlan {
        rooms,
        rate: a.rate,
        count: (a.rate * a.duration as f64).ceil() as u64,
        payload: a.payload,
        publishers: 2,
    };
    let base = c.url_base();
    let key = c.api_key.clone();
    let stop = run.sh.stop.clone();
    let publisher =
        tokio::spawn(async move { publish::run(&http, &base, &key, &plan, stop).await });
    tokio::time::sleep(Duration::from_secs(a.duration / 3)).await;
    let before = run.server_sample();
    let dropped_at = Instant::now();
    run.drop_all();
    let all_back = run
        .wait_until(Duration::from_secs(a.duration * 2 / 3 + 60), |s| {
            s.rejoined.load(Ordering::Relaxed) >= up
        })
        .await;
    let back_s = dropped_at.elapsed().as_secs_f64();
    let rejoined = run.sh.rejoined.load(Ordering::Relaxed);
    let after_back = run.server_sample();
    let pubs = publisher.await.unwrap_or_default();
    run.drain(Duration::from_secs(10)).await;
    let latency = run.sh.recorder.total();
    let recovered_false = run.sh.recovered_false.load(Ordering::Relaxed);
    let unrecoverable = run.sh.unrecoverable.load(Ordering::Relaxed);
    let replayed = run.sh.replayed.load(Ordering::Relaxed);
    let failures = super::failure_figures(&run);
    let mut server = super::server_delta(&run, &before, &after_back);
    if run.server.is_some() {
        server["cpu_us_per_reconnect"] =
            json!((after_back.cpu_s - before.cpu_s) * 1e6 / rejoined.max(1) as f64);
    }
    let (reports, timeline) = run.finish().await;
    let acc = account(&reports, &pubs.finals);
    Ok(Report {
        scenario: "storm",
        params: json!({
            "conns": a.conns, "rooms": a.rooms, "duration_s": a.duration,
            "rate": a.rate, "payload": a.payload, "namespace": ns,
        }),
        figures: json!({
            "connected_before_drop": up,
            "failures_before_drop": failures_before,
            "all_back": all_back,
            "rejoined": rejoined,
            "time_until_all_back_s": back_s,
            "recovered_false": recovered_false,
            "events_missed": acc.lost + unrecoverable,
            "replayed": replayed,
            "published": pubs,
            "delivery": super::delivery_figures(latency, &acc),
            "server": server,
            "failures": failures,
        }),
        timeline,
    })
}
