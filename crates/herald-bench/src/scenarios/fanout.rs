//! `fanout`: N subscribers over R rooms; HTTP publishers at a fixed total
//! rate for T seconds. Deliveries/s, end-to-end latency, loss, duplicates,
//! order, and deliveries per server CPU-second.

use crate::conn::ConnSpec;
use crate::publish::{self, PayloadKind, PublishPlan};
use crate::report::Report;
use crate::run::{account, Run};
use crate::Common;
use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// `fanout` arguments.
#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Subscriber connections.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Rooms they are spread over.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Events per second published, over all rooms.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Bytes of each event's `data`.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// What `data` looks like: the padded stamp, or a realistic agent
    /// event (use `--payload 1024` for ~1 KiB ones); agent events are
    /// checked on arrival (one in eight in full, every one as JSON).
    #[arg(long, value_enum, default_value_t = PayloadKind::Padded)]
    pub payload_kind: PayloadKind,
    /// Concurrent HTTP publishers.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
}

/// Runs `fanout`.
pub async fn run(c: &Common, a: &FanoutArgs) -> Result<Report> {
    if a.rate <= 0.0 || a.rooms == 0 {
        bail!("--rate and --rooms must be positive");
    }
    let ns = c.ns("bench");
    let n = a.conns as u64;
    let rooms: Vec<String> = (0..a.rooms as u64).map(|r| c.room(ns, r)).collect();
    let limit = Duration::from_secs(300 + a.duration + 60);
    let ctx = c
        .ctx(a.conns)?
        .with_agent_check(a.payload_kind == PayloadKind::Agent);
    let mut run = Run::new("fanout", ctx, c.server()?, limit, c.concurrency);
    for i in 0..n {
        run.spawn(ConnSpec::listener(
            i,
            rooms[(i % a.rooms as u64) as usize].clone(),
        ));
    }
    run.wait_until(Duration::from_secs(300), |s| {
        s.joined.load(Ordering::Relaxed) + s.failure_count() >= n
    })
    .await;
    let joined = run.sh.joined.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    run.sh.recorder.reset();
    let http = publish::http_client()?;
    let plan = PublishPlan {
        rooms: rooms.clone(),
        rate: a.rate,
        count: (a.rate * a.duration as f64).ceil() as u64,
        payload: a.payload,
        publishers: a.publishers,
        kind: a.payload_kind,
    };
    let wire = run.sh.ctx.wire.clone();
    let wire0 = wire.bytes.load(Ordering::Relaxed);
    let before = run.server_sample();
    let bench0 = super::bench_cpu_s();
    let t0 = run.elapsed_s();
    let pubs = publish::run_to(&http, &c.publish_api(), &plan, run.sh.stop.clone()).await;
    run.drain(Duration::from_secs(10)).await;
    let after = run.server_sample();
    let bench1 = super::bench_cpu_s();
    let wire_bytes = wire.bytes.load(Ordering::Relaxed) - wire0;
    let window_s = run.elapsed_s() - t0;
    let latency = run.sh.recorder.total();
    let deliveries = run.sh.recorder.deliveries();
    let failures = super::failure_figures(&run);
    let mut server = super::server_delta(&run, &before, &after);
    if run.server.is_some() {
        let cpu = after.cpu_s - before.cpu_s;
        server["deliveries_per_cpu_s"] = json!(deliveries as f64 / cpu.max(1e-9));
        server["cpu_us_per_delivery"] = json!(cpu * 1e6 / deliveries.max(1) as f64);
        server["cpu_share_of_one_core"] = json!(cpu / window_s.max(1e-9));
    }
    let (reports, timeline) = run.finish().await;
    let acc = account(&reports, &pubs.finals);
    Ok(Report {
        scenario: "fanout",
        params: json!({
            "target": c.target, "conns": a.conns, "rooms": a.rooms, "rate": a.rate,
            "duration_s": a.duration, "payload": a.payload, "namespace": ns,
            "payload_kind": a.payload_kind, "deflate": c.deflate,
        }),
        figures: json!({
            "subscribers_joined": joined,
            "members_per_room": a.conns as f64 / a.rooms as f64,
            "published": pubs,
            "deliveries": deliveries,
            "deliveries_per_s": deliveries as f64 / pubs.elapsed_s.max(1e-9),
            "delivery": super::delivery_figures(latency, &acc),
            "server": server,
            "bench_cpu_s": bench1 - bench0,
            "wire": super::wire_figures(&wire, wire_bytes, deliveries),
            "failures": failures,
        }),
        timeline,
    })
}
