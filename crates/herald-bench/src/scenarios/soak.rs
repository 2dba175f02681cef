//! `soak`: a steady mix for a long time (fan-out from HTTP publishers, chat
//! from a tenth of the clients, churn: clients leaving and resuming), with
//! the server's RSS and open descriptors sampled every few seconds.

use crate::conn::ConnSpec;
use crate::procfs::ProcSample;
use crate::publish::{self, PayloadKind, PublishPlan};
use crate::report::Report;
use crate::run::{account, Run};
use crate::Common;
use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// `soak` arguments.
#[derive(Args, Debug, Clone)]
pub struct SoakArgs {
    /// Connections.
    #[arg(long, default_value_t = 2000)]
    pub conns: usize,
    /// Seconds of steady load.
    #[arg(long, default_value_t = 300)]
    pub duration: u64,
    /// Members per room.
    #[arg(long, default_value_t = 100)]
    pub room_size: usize,
    /// Events per second published over all rooms.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Messages per second sent by each chatting client (one in ten chats).
    #[arg(long, default_value_t = 0.2)]
    pub send_rate: f64,
    /// Mean seconds between a client's voluntary reconnects (churn).
    #[arg(long, default_value_t = 60)]
    pub churn_every: u64,
    /// Seconds between server samples.
    #[arg(long, default_value_t = 5)]
    pub sample: u64,
    /// Seconds of load before the baseline sample.
    #[arg(long, default_value_t = 20)]
    pub warmup: u64,
}

/// Runs `soak`.
pub async fn run(c: &Common, a: &SoakArgs) -> Result<Report> {
    if a.rate <= 0.0 || a.room_size == 0 || a.sample == 0 || a.warmup >= a.duration {
        bail!("--rate, --room-size and --sample must be positive, --warmup below --duration");
    }
    if c.server_pid.is_none() {
        bail!("soak measures the server: give --server-pid");
    }
    let ns = c.ns("benchstore");
    let n = a.conns as u64;
    let nrooms = a.conns.div_ceil(a.room_size).max(1);
    let rooms: Vec<String> = (0..nrooms).map(|r| format!("{ns}:{r}")).collect();
    let limit = Duration::from_secs(300 + a.duration + 60);
    let mut run = Run::new("soak", c.ctx(a.conns)?, c.server()?, limit, c.concurrency);
    let every = Duration::from_secs_f64(1.0 / a.send_rate.max(1e-3));
    for i in 0..n {
        run.spawn(ConnSpec {
            send_every: (i % 10 == 0).then_some(every),
            payload: 100,
            reconnect: true,
            churn_every: Some(Duration::from_secs(a.churn_every.max(1))),
            ..ConnSpec::listener(i, rooms[(i % nrooms as u64) as usize].clone())
        });
    }
    run.wait_until(Duration::from_secs(300), |s| {
        s.joined.load(Ordering::Relaxed) + s.failure_count() >= n
    })
    .await;
    run.sh.recorder.reset();
    run.sh.send_enabled.store(true, Ordering::Relaxed);
    let http = publish::http_client()?;
    let plan = PublishPlan {
        rooms,
        rate: a.rate,
        count: (a.rate * a.duration as f64).ceil() as u64,
        payload: 100,
        publishers: 2,
        kind: PayloadKind::Padded,
    };
    let (base, key, stop) = (c.url_base(), c.api_key.clone(), run.sh.stop.clone());
    let publisher =
        tokio::spawn(async move { publish::run(&http, &base, &key, &plan, stop).await });
    let t0 = run.elapsed_s();
    let mut samples: Vec<(f64, ProcSample)> = Vec::new();
    let steps = a.duration / a.sample;
    for _ in 0..steps {
        tokio::time::sleep(Duration::from_secs(a.sample)).await;
        samples.push((run.elapsed_s() - t0, run.server_sample()));
    }
    run.sh.send_enabled.store(false, Ordering::Relaxed);
    let pubs = publisher.await.unwrap_or_default();
    run.drain(Duration::from_secs(10)).await;
    let latency = run.sh.recorder.total();
    let churned = run.sh.churned.load(Ordering::Relaxed);
    let recovered_false = run.sh.recovered_false.load(Ordering::Relaxed);
    let unrecoverable = run.sh.unrecoverable.load(Ordering::Relaxed);
    let failures = super::failure_figures(&run);
    let (reports, timeline) = run.finish().await;
    let acc = account(&reports, &pubs.finals);
    let base = samples
        .iter()
        .find(|(t, _)| *t >= a.warmup as f64)
        .or(samples.first())
        .map(|(_, s)| *s)
        .unwrap_or_default();
    let last = samples.last().map(|(_, s)| *s).unwrap_or_default();
    let max_rss = samples.iter().map(|(_, s)| s.rss_kib).max().unwrap_or(0);
    let pct = |a: u64, b: u64| (b as f64 - a as f64) * 100.0 / (a.max(1) as f64);
    Ok(Report {
        scenario: "soak",
        params: json!({
            "conns": a.conns, "duration_s": a.duration, "room_size": a.room_size,
            "rate": a.rate, "send_rate": a.send_rate, "churn_every_s": a.churn_every,
            "namespace": ns,
        }),
        figures: json!({
            "rss_baseline_kib": base.rss_kib,
            "rss_last_kib": last.rss_kib,
            "rss_max_kib": max_rss,
            "rss_growth_pct": pct(base.rss_kib, last.rss_kib),
            "fds_baseline": base.fds,
            "fds_last": last.fds,
            "fd_growth": last.fds as i64 - base.fds as i64,
            "server_cpu_s": last.cpu_s - base.cpu_s,
            "churn_reconnects": churned,
            "recovered_false": recovered_false,
            "events_missed": acc.lost + unrecoverable,
            "published": pubs,
            "delivery": super::delivery_figures(latency, &acc),
            "failures": failures,
            "samples": samples.iter().map(|(t, s)| json!({"t_s": t, "rss_kib": s.rss_kib, "fds": s.fds})).collect::<Vec<_>>(),
        }),
        timeline,
    })
}
