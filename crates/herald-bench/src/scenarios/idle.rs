//! `idle`: N connections, each auto-joined (user, global) plus one of R
//! rooms, held open. Connect rate, failures, server memory and CPU per
//! connection.

use crate::conn::ConnSpec;
use crate::report::Report;
use crate::run::Run;
use crate::Common;
use anyhow::Result;
use clap::Args;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::Instant;

/// `idle` arguments.
#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Rooms the connections are spread over (one each).
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Seconds to hold them open once all are in.
    #[arg(long, default_value_t = 10)]
    pub hold: u64,
    /// Longest the ramp-up may take, seconds.
    #[arg(long, default_value_t = 300)]
    pub ramp_limit: u64,
}

/// Runs `idle`.
pub async fn run(c: &Common, a: &IdleArgs) -> Result<Report> {
    let ns = c.ns("bench");
    let n = a.conns as u64;
    let limit = Duration::from_secs(a.ramp_limit + a.hold + 30);
    let mut run = Run::new("idle", c.ctx(a.conns)?, c.server()?, limit, c.concurrency);
    let before = run.server_sample();
    let bench_cpu0 = super::bench_cpu_s();
    let t0 = Instant::now();
    for i in 0..n {
        run.spawn(ConnSpec::listener(i, c.room(ns, i % a.rooms.max(1) as u64)));
    }
    let ramp = Duration::from_secs(a.ramp_limit);
    run.wait_until(ramp, |s| {
        s.connects.load(Ordering::Relaxed) + s.failure_count() >= n
    })
    .await;
    let connect_s = t0.elapsed().as_secs_f64();
    run.wait_until(ramp, |s| {
        s.joined.load(Ordering::Relaxed) + s.failure_count() >= n
    })
    .await;
    let join_s = t0.elapsed().as_secs_f64();
    let ramped = run.server_sample();
    let bench_cpu1 = super::bench_cpu_s();
    // Let the server settle (buffers, deferred frees) before measuring memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = run.server_sample();
    let connects = run.sh.connects.load(Ordering::Relaxed);
    let joined = run.sh.joined.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(a.hold)).await;
    let held = run.server_sample();
    let open_at_end = run.sh.open.load(Ordering::Relaxed);
    let mean_connect_ms =
        run.sh.connect_us.load(Ordering::Relaxed) as f64 / connects.max(1) as f64 / 1000.0;
    let failures = super::failure_figures(&run);
    let server = if run.server.is_some() {
        let cpu = ramped.cpu_s - before.cpu_s;
        json!({
            "rss_before_kib": before.rss_kib,
            "rss_connected_kib": settled.rss_kib,
            "rss_end_of_hold_kib": held.rss_kib,
            "kib_per_connection": (settled.rss_kib as f64 - before.rss_kib as f64) / joined.max(1) as f64,
            "cpu_s_during_ramp": cpu,
            "cpu_us_per_connect": cpu * 1e6 / connects.max(1) as f64,
            "fds": held.fds,
        })
    } else {
        serde_json::Value::Null
    };
    let (_reports, timeline) = run.finish().await;
    Ok(Report {
        scenario: "idle",
        params: json!({
            "target": c.target, "conns": a.conns, "rooms": a.rooms, "hold_s": a.hold,
            "namespace": ns,
        }),
        figures: json!({
            "connected": connects,
            "joined": joined,
            "open_at_end_of_hold": open_at_end,
            "failures": failures,
            "connect_phase_s": connect_s,
            "connect_rate_per_s": connects as f64 / connect_s.max(1e-9),
            "connect_and_join_rate_per_s": joined as f64 / join_s.max(1e-9),
            "mean_connect_ms": mean_connect_ms,
            "server": server,
            "bench_cpu_s_during_ramp": bench_cpu1 - bench_cpu0,
        }),
        timeline,
    })
}
