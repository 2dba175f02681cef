//! `connect-latency`: what the connect proxy adds to a connect. Connects
//! alternate between a JWT (verified by the node) and an opaque credential
//! (sent to the built-in backend, [`super::connect_backend`], which the
//! node must name in `proxy.connect_url`), so both kinds see the same
//! machine; each is timed from TCP connect to `authenticated` and closed.

use super::connect_backend::ConnectBackend;
use crate::client::CONNECT_TIMEOUT;
use crate::metrics::Percentiles;
use crate::report::Report;
use crate::Common;
use anyhow::{bail, Result};
use clap::Args;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

/// `connect-latency` arguments.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Connects of each kind (JWT and proxied), alternating.
    #[arg(long, default_value_t = 2000)]
    pub conns: u64,
    /// Connects in flight at once.
    #[arg(long, default_value_t = 4)]
    pub parallel: usize,
    /// Where the built-in connect backend listens; the server's
    /// `proxy.connect_url` must be `http://<this>/connect`.
    #[arg(long, default_value = "127.0.0.1:9911")]
    pub backend_listen: SocketAddr,
}

/// The figures of one kind of connect.
#[derive(Default)]
struct Kind {
    latency: Option<Histogram<u64>>,
    failures: BTreeMap<String, u64>,
}

impl Kind {
    fn record(&mut self, result: Result<u64, String>) {
        match result {
            Ok(us) => {
                let h = self.latency.get_or_insert_with(|| {
                    // Valid constant bounds: 1 µs to 60 s, 3 figures.
                    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| {
                        Histogram::new(3).unwrap_or_else(|_| unreachable!("valid sigfig"))
                    })
                });
                let _ = h.record(us.max(1));
            }
            Err(reason) => *self.failures.entry(reason).or_default() += 1,
        }
    }

    fn percentiles(&self) -> Percentiles {
        self.latency
            .as_ref()
            .map(Percentiles::of)
            .unwrap_or_default()
    }

    fn figures(&self) -> Value {
        let p = self.percentiles();
        json!({
            "connects": p.count,
            "p50_ms": p.p50_ms, "p90_ms": p.p90_ms, "p99_ms": p.p99_ms, "max_ms": p.max_ms,
            "failures": self.failures,
        })
    }
}

/// Runs `connect-latency`.
pub async fn run(c: &Common, a: &ConnectArgs) -> Result<Report> {
    if !a.backend_listen.ip().is_loopback() {
        bail!("--backend-listen must be a loopback address");
    }
    let backend = ConnectBackend::start(a.backend_listen).await?;
    let ctx = Arc::new(c.ctx(a.parallel.max(16))?);
    let kinds = Arc::new([Mutex::new(Kind::default()), Mutex::new(Kind::default())]);
    let slots = Arc::new(Semaphore::new(a.parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let t0 = Instant::now();
    for k in 0..a.conns * 2 {
        let permit = slots.clone().acquire_owned().await?;
        let (ctx, kinds) = (ctx.clone(), kinds.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let proxied = k % 2 == 1;
            let user = ctx.user_id(k);
            let credential = if proxied {
                Ok(format!("bench:{user}"))
            } else {
                ctx.token(&user).map_err(|e| format!("token: {e}"))
            };
            let result = match credential {
                Err(e) => Err(e),
                Ok(credential) => {
                    let start = Instant::now();
                    let connect = ctx.connect_credential(&ctx.target, k, &credential);
                    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                        Err(_) => Err("timeout".to_owned()),
                        Ok(Err(e)) => Err(e),
                        Ok(Ok(ws)) => {
                            let us = start.elapsed().as_micros() as u64;
                            drop(ws);
                            Ok(us)
                        }
                    }
                }
            };
            kinds[usize::from(proxied)].lock().record(result);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = t0.elapsed().as_secs_f64();
    let (jwt, proxied) = (kinds[0].lock(), kinds[1].lock());
    let (pj, pp) = (jwt.percentiles(), proxied.percentiles());
    Ok(Report {
        scenario: "connect-latency",
        params: json!({
            "conns_per_kind": a.conns, "parallel": a.parallel,
            "backend": a.backend_listen.to_string(),
        }),
        figures: json!({
            "jwt": jwt.figures(),
            "proxied": proxied.figures(),
            "added_by_the_proxy_ms": {
                "p50": pp.p50_ms - pj.p50_ms,
                "p99": pp.p99_ms - pj.p99_ms,
            },
            "backend_answered": backend.answered.load(Ordering::Relaxed),
            "elapsed_s": elapsed,
        }),
        timeline: Vec::new(),
    })
}
