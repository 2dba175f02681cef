//! `members`: a membership storm on one room. `--listeners` connections
//! stay in the room and time the events an HTTP publisher sends it;
//! `--churners` connections each join and leave the same room over and over
//! (`join_room`, wait for `room_joined`, `leave_room`, wait for
//! `room_left`) until `--joins` joins and as many leaves were answered.
//! Reports joins + leaves per second, the join and leave round trips, and
//! the listeners' fan-out latency during the storm.

use crate::client::{Frame, Ws};
use crate::conn::ConnSpec;
use crate::metrics::{now_us, Recorder};
use crate::publish::{self, PayloadKind, PublishPlan};
use crate::report::Report;
use crate::run::{account, Run, Shared};
use crate::Common;
use anyhow::{bail, Result};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Longest wait for one reply (`room_joined`, `room_left`).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// `members` arguments.
#[derive(Args, Debug, Clone)]
pub struct MembersArgs {
    /// Connections that stay in the room and time its events.
    #[arg(long, default_value_t = 8000)]
    pub listeners: usize,
    /// Connections that join and leave the room over and over.
    #[arg(long, default_value_t = 2000)]
    pub churners: usize,
    /// Joins (and as many leaves) in the storm, over all churners.
    #[arg(long, default_value_t = 50_000)]
    pub joins: u64,
    /// Events per second published into the room during the storm.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Bytes of each event's `data`.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Longest the storm may last, seconds.
    #[arg(long, default_value_t = 110)]
    pub limit: u64,
}

/// Counters of the churners.
#[derive(Default)]
struct Churn {
    /// Joins claimed so far (a churner claims one before each join).
    tickets: AtomicU64,
    /// Churners connected and waiting for the start.
    ready: AtomicU64,
    /// `room_joined` answers.
    joins: AtomicU64,
    /// `room_left` answers.
    leaves: AtomicU64,
    /// Churners that are done (target reached, or failed).
    done: AtomicU64,
    /// Join round trips (`join_room` sent to `room_joined` seen).
    join_rtt: Recorder,
    /// Leave round trips.
    leave_rtt: Recorder,
}

/// Runs `members`.
pub async fn run(c: &Common, a: &MembersArgs) -> Result<Report> {
    if a.rate <= 0.0 || a.churners == 0 || a.joins == 0 {
        bail!("--rate, --churners and --joins must be positive");
    }
    let ns = c.ns("bench");
    let room = c.room(ns, 0);
    let total = a.listeners + a.churners;
    let limit = Duration::from_secs(300 + a.limit + 60);
    let mut run = Run::new("members", c.ctx(total)?, c.server()?, limit, c.concurrency);
    for i in 0..a.listeners as u64 {
        run.spawn(ConnSpec::listener(i, room.clone()));
    }
    let listeners = a.listeners as u64;
    run.wait_until(Duration::from_secs(300), |s| {
        s.joined.load(Ordering::Relaxed) + s.failure_count() >= listeners
    })
    .await;
    let joined = run.sh.joined.load(Ordering::Relaxed);

    let churn = Arc::new(Churn::default());
    let (go_tx, go) = watch::channel(false);
    let mut churners = Vec::with_capacity(a.churners);
    for k in 0..a.churners as u64 {
        let (sh, churn, go, room) = (run.sh.clone(), churn.clone(), go.clone(), room.clone());
        let target = a.joins;
        churners.push(tokio::spawn(async move {
            churner(listeners + k, &room, target, &sh, &churn, go).await;
            churn.done.fetch_add(1, Ordering::Relaxed);
        }));
    }
    let n = a.churners as u64;
    run.wait_until(Duration::from_secs(300), |_| {
        churn.ready.load(Ordering::Relaxed) + churn.done.load(Ordering::Relaxed) >= n
    })
    .await;
    let churners_ready = churn.ready.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The storm: publisher and churners start together.
    run.sh.recorder.reset();
    let http = publish::http_client()?;
    let plan = PublishPlan {
        rooms: vec![room.clone()],
        rate: a.rate,
        count: (a.rate * a.limit as f64).ceil() as u64,
        payload: a.payload,
        publishers: 2,
        kind: PayloadKind::Padded,
    };
    let (pub_stop_tx, pub_stop) = watch::channel(false);
    let api = c.publish_api();
    let publisher =
        tokio::spawn(async move { publish::run_to(&http, &api, &plan, pub_stop).await });
    let before = run.server_sample();
    let t0 = Instant::now();
    let _ = go_tx.send(true);
    run.wait_until(Duration::from_secs(a.limit), |_| {
        churn.done.load(Ordering::Relaxed) >= n
    })
    .await;
    let storm_s = t0.elapsed().as_secs_f64();
    let after = run.server_sample();
    let latency = run.sh.recorder.total();
    let _ = pub_stop_tx.send(true);
    let pubs = publisher.await?;
    run.drain(Duration::from_secs(10)).await;
    for h in churners {
        h.abort();
    }
    let joins = churn.joins.load(Ordering::Relaxed);
    let leaves = churn.leaves.load(Ordering::Relaxed);
    let failures = super::failure_figures(&run);
    let mut server = super::server_delta(&run, &before, &after);
    if run.server.is_some() {
        let cpu = after.cpu_s - before.cpu_s;
        server["cpu_us_per_join_or_leave"] = json!(cpu * 1e6 / (joins + leaves).max(1) as f64);
    }
    let (reports, timeline) = run.finish().await;
    let acc = account(&reports, &pubs.finals);
    let rtt = |r: &Recorder| {
        let p = r.total();
        json!({"samples": p.count, "p50": p.p50_ms, "p99": p.p99_ms, "max": p.max_ms})
    };
    Ok(Report {
        scenario: "members",
        params: json!({
            "listeners": a.listeners, "churners": a.churners, "joins": a.joins,
            "rate": a.rate, "payload": a.payload, "room": room,
        }),
        figures: json!({
            "listeners_joined": joined,
            "churners_ready": churners_ready,
            "joins": joins,
            "leaves": leaves,
            "storm_s": storm_s,
            "joins_and_leaves_per_s": (joins + leaves) as f64 / storm_s.max(1e-9),
            "join_rtt_ms": rtt(&churn.join_rtt),
            "leave_rtt_ms": rtt(&churn.leave_rtt),
            "published": pubs,
            "delivery": super::delivery_figures(latency, &acc),
            "server": server,
            "failures": failures,
        }),
        timeline,
    })
}

/// One churner: connects (paced by the run's gate), waits for the start,
/// then joins and leaves `room` until `target` joins were claimed over all
/// churners. A lost connection or a missing reply ends it (counted).
async fn churner(
    index: u64,
    room: &str,
    target: u64,
    sh: &Shared,
    churn: &Churn,
    mut go: watch::Receiver<bool>,
) {
    let ws = {
        let _permit = sh.connect_gate.clone().acquire_owned().await.ok();
        sh.ctx.connect(index).await
    };
    let mut ws = match ws {
        Ok(ws) => ws,
        Err(reason) => {
            sh.count_failure(&reason);
            return;
        }
    };
    churn.ready.fetch_add(1, Ordering::Relaxed);
    if go.wait_for(|go| *go).await.is_err() {
        return;
    }
    let join = json!({"type": "join_room", "id": 1, "room": room}).to_string();
    let leave = json!({"type": "leave_room", "id": 2, "room": room}).to_string();
    while churn.tickets.fetch_add(1, Ordering::Relaxed) < target {
        let t = now_us();
        if let Err(reason) = request(&mut ws, &join, "room_joined", sh).await {
            sh.count_failure(&reason);
            return;
        }
        churn.join_rtt.record(t, now_us());
        churn.joins.fetch_add(1, Ordering::Relaxed);
        let t = now_us();
        if let Err(reason) = request(&mut ws, &leave, "room_left", sh).await {
            sh.count_failure(&reason);
            return;
        }
        churn.leave_rtt.record(t, now_us());
        churn.leaves.fetch_add(1, Ordering::Relaxed);
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// Sends `frame` and reads until a frame of type `answer` (events of the
/// room arriving meanwhile are skipped; error frames are counted).
async fn request(ws: &mut Ws, frame: &str, answer: &str, sh: &Shared) -> Result<(), String> {
    ws.send(Message::text(frame.to_owned()))
        .await
        .map_err(|_| "send failed".to_string())?;
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| format!("no {answer} within {REPLY_TIMEOUT:?}"))?;
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(c))) => {
                let code = c.map(|c| u16::from(c.code)).unwrap_or(0);
                return Err(format!("closed by server {code}"));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err("connection lost".into()),
        };
        let Ok(f) = serde_json::from_str::<Frame>(&text) else {
            sh.count_error("unparsable frame");
            continue;
        };
        if f.kind == answer {
            return Ok(());
        }
        if f.kind == "error" {
            let code = f.code.as_ref().and_then(|c| c.as_str()).unwrap_or("?");
            sh.count_error(&format!("error frame {code}"));
            return Err(format!("error {code} instead of {answer}"));
        }
    }
}
