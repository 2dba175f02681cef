//! `chat`: clients in rooms of K, each also sending `send_message` into its
//! room at a rate. Same latency and loss accounting as `fanout`.

use crate::conn::ConnSpec;
use crate::report::Report;
use crate::run::{account, Run};
use crate::Common;
use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// `chat` arguments.
#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    /// Connections.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Members per room.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Messages per second each client sends (fractions allowed).
    #[arg(long, default_value_t = 1.0)]
    pub send_rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Bytes of each message's `data`.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
}

/// Runs `chat`.
pub async fn run(c: &Common, a: &ChatArgs) -> Result<Report> {
    if a.send_rate <= 0.0 || a.room_size == 0 {
        bail!("--send-rate and --room-size must be positive");
    }
    let ns = c.ns("bench");
    let n = a.conns as u64;
    let rooms = a.conns.div_ceil(a.room_size) as u64;
    let limit = Duration::from_secs(300 + a.duration + 60);
    let mut run = Run::new("chat", c.ctx(a.conns)?, c.server()?, limit, c.concurrency);
    let every = Duration::from_secs_f64(1.0 / a.send_rate);
    for i in 0..n {
        run.spawn(ConnSpec {
            send_every: Some(every),
            payload: a.payload,
            ..ConnSpec::listener(i, format!("{ns}:chat-{}", i % rooms))
        });
    }
    run.wait_until(Duration::from_secs(300), |s| {
        s.joined.load(Ordering::Relaxed) + s.failure_count() >= n
    })
    .await;
    let joined = run.sh.joined.load(Ordering::Relaxed);
    run.sh.recorder.reset();
    let before = run.server_sample();
    let t0 = run.elapsed_s();
    run.sh.send_enabled.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(a.duration)).await;
    run.sh.send_enabled.store(false, Ordering::Relaxed);
    let send_s = run.elapsed_s() - t0;
    run.drain(Duration::from_secs(10)).await;
    let after = run.server_sample();
    let latency = run.sh.recorder.total();
    let deliveries = run.sh.recorder.deliveries();
    let sent = run.sh.sent.load(Ordering::Relaxed);
    let acks = run.sh.acks.load(Ordering::Relaxed);
    let failures = super::failure_figures(&run);
    let mut server = super::server_delta(&run, &before, &after);
    if run.server.is_some() {
        let cpu = after.cpu_s - before.cpu_s;
        server["deliveries_per_cpu_s"] = json!(deliveries as f64 / cpu.max(1e-9));
    }
    let (reports, timeline) = run.finish().await;
    // Rooms' last offsets come from the acks of the messages sent.
    let acc = account(&reports, &BTreeMap::new());
    Ok(Report {
        scenario: "chat",
        params: json!({
            "conns": a.conns, "room_size": a.room_size, "send_rate": a.send_rate,
            "duration_s": a.duration, "payload": a.payload, "namespace": ns,
        }),
        figures: json!({
            "joined": joined,
            "rooms": rooms,
            "sent": sent,
            "acks": acks,
            "sent_per_s": sent as f64 / send_s.max(1e-9),
            "deliveries": deliveries,
            "deliveries_per_s": deliveries as f64 / send_s.max(1e-9),
            "delivery": super::delivery_figures(latency, &acc),
            "server": server,
            "failures": failures,
        }),
        timeline,
    })
}
