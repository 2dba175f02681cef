//! Publishers over the HTTP API at a fixed total rate: a few concurrent
//! clients, event `i` due at `start + i / rate`, rooms taken round robin.
//! Each event's `s` is its room's sequence number (1, 2, … per room).

use crate::client::stamped_data;
use crate::peers::Peer;
use anyhow::{Context, Result};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// What each event's `data` looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadKind {
    /// The stamp padded with `x` to the size (compresses to almost nothing).
    Padded,
    /// A ~1 KiB agent `tool.completed` event, varied per event (see agent.rs).
    Agent,
}

impl PayloadKind {
    /// The `data` JSON of event `seq` of about `bytes` bytes, stamped now.
    pub fn data(self, seq: u64, bytes: usize) -> String {
        match self {
            PayloadKind::Padded => stamped_data(seq, bytes),
            PayloadKind::Agent => crate::agent::agent_data_at(seq, crate::metrics::now_us(), bytes),
        }
    }
}

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    /// Rooms, used round robin.
    pub rooms: Vec<String>,
    /// Events per second over all publishers.
    pub rate: f64,
    /// Events in total.
    pub count: u64,
    /// Payload bytes per event's `data`.
    pub payload: usize,
    /// Concurrent HTTP clients.
    pub publishers: usize,
    /// What `data` looks like.
    pub kind: PayloadKind,
}

/// What the publishers did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PublishReport {
    /// Events accepted.
    pub ok: u64,
    /// Events refused or failed, by reason.
    pub failed: BTreeMap<String, u64>,
    /// Seconds from first to last publish.
    pub elapsed_s: f64,
    /// Accepted events per second.
    pub rate: f64,
    /// Worst lateness of a publish behind its schedule, ms.
    pub max_behind_ms: f64,
    /// Last offset per room.
    #[serde(skip)]
    pub finals: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct Published {
    offset: u64,
}

/// Where events are published: Herald's API or a peer's.
#[derive(Debug, Clone)]
pub enum Api {
    /// Herald's `POST /api/v1/publish` with an API key.
    Herald {
        /// `http://host:port`.
        base: String,
        /// API key with a publish scope.
        key: String,
    },
    /// A peer's publish endpoint.
    Peer {
        /// `http://host:port`.
        base: String,
        /// Its protocol.
        peer: Peer,
    },
}

impl Api {
    /// Publishes one event; the room position it got (Herald's offset, a
    /// peer's sequence number `seq`), or a failure reason.
    async fn publish(
        &self,
        http: &reqwest::Client,
        room: &str,
        data: &str,
        seq: u64,
    ) -> Result<u64, String> {
        let req = match self {
            Api::Herald { base, key } => http
                .post(format!("{base}/api/v1/publish"))
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"room":"{room}","event":"bench","data":{data}}}"#
                )),
            Api::Peer { base, peer } => peer.publish_request(http, base, room, "bench", data),
        };
        let resp = req.send().await.map_err(|e| {
            if e.is_timeout() {
                "timeout".to_string()
            } else {
                "request error".to_string()
            }
        })?;
        if !resp.status().is_success() {
            return Err(format!("http {}", resp.status().as_u16()));
        }
        match self {
            Api::Herald { .. } => resp
                .json::<Published>()
                .await
                .map(|p| p.offset)
                .map_err(|_| "bad response body".to_string()),
            Api::Peer { .. } => Ok(seq),
        }
    }
}

/// An HTTP client for the API.
pub fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")
}

/// Publishes the plan to Herald; stops early when `stop` flips. Bounded by `count`.
pub async fn run(
    http: &reqwest::Client,
    base: &str,
    api_key: &str,
    plan: &PublishPlan,
    stop: watch::Receiver<bool>,
) -> PublishReport {
    let api = Api::Herald {
        base: base.to_string(),
        key: api_key.to_string(),
    };
    run_to(http, &api, plan, stop).await
}

/// Publishes the plan to `api`; stops early when `stop` flips. Bounded by `count`.
pub async fn run_to(
    http: &reqwest::Client,
    api: &Api,
    plan: &PublishPlan,
    stop: watch::Receiver<bool>,
) -> PublishReport {
    let start = Instant::now();
    let n = plan.publishers.max(1);
    let mut tasks = Vec::with_capacity(n);
    for k in 0..n {
        let (http, api, plan, stop) = (http.clone(), api.clone(), plan.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            one_publisher(k as u64, n as u64, &http, &api, &plan, start, stop).await
        }));
    }
    let mut total = PublishReport::default();
    for t in tasks {
        if let Ok(r) = t.await {
            total.ok += r.ok;
            for (k, v) in r.failed {
                *total.failed.entry(k).or_default() += v;
            }
            total.max_behind_ms = total.max_behind_ms.max(r.max_behind_ms);
            for (room, off) in r.finals {
                let e = total.finals.entry(room).or_default();
                *e = (*e).max(off);
            }
        }
    }
    total.elapsed_s = start.elapsed().as_secs_f64();
    total.rate = total.ok as f64 / total.elapsed_s.max(1e-9);
    total
}

async fn one_publisher(
    k: u64,
    n: u64,
    http: &reqwest::Client,
    api: &Api,
    plan: &PublishPlan,
    start: Instant,
    stop: watch::Receiver<bool>,
) -> PublishReport {
    let mut r = PublishReport::default();
    let rooms = plan.rooms.len().max(1) as u64;
    let mut i = k;
    while i < plan.count {
        if *stop.borrow() {
            break;
        }
        let due = start + Duration::from_secs_f64(i as f64 / plan.rate.max(1e-6));
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due).await;
        } else {
            r.max_behind_ms = r.max_behind_ms.max((now - due).as_secs_f64() * 1000.0);
        }
        let Some(room) = plan.rooms.get((i % rooms) as usize) else {
            break;
        };
        let seq = i / rooms + 1;
        match api
            .publish(http, room, &plan.kind.data(seq, plan.payload), seq)
            .await
        {
            Ok(offset) => {
                r.ok += 1;
                let e = r.finals.entry(room.clone()).or_default();
                *e = (*e).max(offset);
            }
            Err(reason) => *r.failed.entry(reason).or_default() += 1,
        }
        i += n;
    }
    r
}

/// `history_bytes` and `history_events` from `/api/v1/stats` (admin key).
pub async fn history_stats(
    http: &reqwest::Client,
    base: &str,
    api_key: &str,
) -> Result<(u64, u64)> {
    let v: serde_json::Value = http
        .get(format!("{base}/api/v1/stats"))
        .bearer_auth(api_key)
        .send()
        .await
        .context("GET /api/v1/stats")?
        .error_for_status()
        .context("GET /api/v1/stats (needs an admin API key)")?
        .json()
        .await
        .context("stats body")?;
    let b = &v["broker"];
    Ok((
        b["history_bytes"].as_u64().unwrap_or(0),
        b["history_events"].as_u64().unwrap_or(0),
    ))
}
