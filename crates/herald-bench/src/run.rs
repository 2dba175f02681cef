//! What every scenario shares: the counters the clients update, the
//! progress line, the per-second timeline, and the end-of-run accounting.

use crate::client::Ctx;
use crate::conn::{ConnReport, ConnSpec};
use crate::metrics::{Accounting, Recorder, SecondSample};
use crate::procfs::{Proc, ProcSample};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// State shared by every client task of a run.
pub struct Shared {
    /// How to reach the server.
    pub ctx: Ctx,
    /// Latencies and deliveries.
    pub recorder: Recorder,
    /// Flips to true when the run ends.
    pub stop: watch::Receiver<bool>,
    /// Bumped to drop every connection at once (storm).
    pub drops: watch::Receiver<u32>,
    /// No client task outlives this.
    pub deadline: Instant,
    /// Limits connects in flight during the initial ramp.
    pub connect_gate: Arc<Semaphore>,
    /// Successful connects (initial and reconnects).
    pub connects: AtomicU64,
    /// Sum of successful connect durations, µs.
    pub connect_us: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Clients that finished joining (per session).
    pub joined: AtomicU64,
    /// Clients back in their rooms after a drop.
    pub rejoined: AtomicU64,
    /// `room_joined` with `recovered: false` after a resume.
    pub recovered_false: AtomicU64,
    /// Events known missed because a resume was refused.
    pub unrecoverable: AtomicU64,
    /// Events replayed on resume.
    pub replayed: AtomicU64,
    /// `send_message` frames sent.
    pub sent: AtomicU64,
    /// `ack` frames received.
    pub acks: AtomicU64,
    /// Voluntary reconnects (soak churn).
    pub churned: AtomicU64,
    /// Whether clients with a send rate send now.
    pub send_enabled: AtomicBool,
    /// Storm: from now on a lost session counts as cut (once per client
    /// until it is back in its rooms).
    pub cut_armed: AtomicBool,
    /// Storm: clients whose session was cut while armed.
    pub cut: AtomicU64,
    /// Storm: first and last cut seen, µs after the run started
    /// (`u64::MAX` / 0 before any).
    pub first_cut_us: AtomicU64,
    /// See `first_cut_us`.
    pub last_cut_us: AtomicU64,
    /// Storm: the first cut seen, µs since the Unix epoch (`u64::MAX` before).
    pub first_cut_unix_us: AtomicU64,
    /// When the run started.
    pub started: Instant,
    reconnects_to: Tally,
    reconnect_failures: Tally,
    failures: Tally,
    errors: Tally,
}

/// Counts by name (a reason, a kind, a server), from any task.
#[derive(Default)]
struct Tally(Mutex<BTreeMap<String, u64>>);

impl Tally {
    fn add(&self, name: &str) {
        *self.0.lock().entry(name.to_string()).or_default() += 1;
    }

    fn total(&self) -> u64 {
        self.0.lock().values().sum()
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().clone()
    }
}

impl Shared {
    /// Counts a failed connect or a lost connection, by reason.
    pub fn count_failure(&self, reason: &str) {
        self.failures.add(reason);
    }

    /// Counts an error frame or odd event, by kind.
    pub fn count_error(&self, kind: &str) {
        self.errors.add(kind);
    }

    /// Failures so far, all reasons.
    pub fn failure_count(&self) -> u64 {
        self.failures.total()
    }

    /// Failures by reason.
    pub fn failures(&self) -> BTreeMap<String, u64> {
        self.failures.snapshot()
    }

    /// Errors by kind.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.snapshot()
    }

    /// Notes one client's session cut (storm), with the time.
    pub fn note_cut(&self) {
        self.cut.fetch_add(1, Ordering::Relaxed);
        let t = self.started.elapsed().as_micros() as u64;
        self.first_cut_us.fetch_min(t, Ordering::Relaxed);
        self.last_cut_us.fetch_max(t, Ordering::Relaxed);
        self.first_cut_unix_us
            .fetch_min(crate::metrics::now_us(), Ordering::Relaxed);
    }

    /// When the first cut was seen, if any.
    pub fn first_cut(&self) -> Option<Instant> {
        match self.first_cut_us.load(Ordering::Relaxed) {
            u64::MAX => None,
            us => Some(self.started + Duration::from_micros(us)),
        }
    }

    /// Counts a successful reconnect to `base`.
    pub fn count_reconnect(&self, base: &str) {
        self.reconnects_to.add(base);
    }

    /// Successful reconnects by server base URL.
    pub fn reconnects_to(&self) -> BTreeMap<String, u64> {
        self.reconnects_to.snapshot()
    }

    /// Counts a failed connect of a client that was connected before (also
    /// counted in the failures by reason).
    pub fn count_reconnect_failure(&self, reason: &str) {
        self.reconnect_failures.add(reason);
    }

    /// Failed reconnects by reason.
    pub fn reconnect_failures(&self) -> BTreeMap<String, u64> {
        self.reconnect_failures.snapshot()
    }
}

/// A run in progress.
pub struct Run {
    /// Shared with the clients.
    pub sh: Arc<Shared>,
    stop_tx: watch::Sender<bool>,
    drops_tx: watch::Sender<u32>,
    conns: Vec<JoinHandle<ConnReport>>,
    /// The server, when `--server-pid` was given.
    pub server: Option<Proc>,
    /// When the run started.
    pub started: Instant,
    timeline: Arc<Mutex<Vec<SecondSample>>>,
    ticker: JoinHandle<()>,
}

impl Run {
    /// Starts a run that ends by `limit` at the latest.
    pub fn new(
        label: &'static str,
        ctx: Ctx,
        server: Option<Proc>,
        limit: Duration,
        concurrency: usize,
    ) -> Self {
        let (stop_tx, stop) = watch::channel(false);
        let (drops_tx, drops) = watch::channel(0u32);
        let started = Instant::now();
        let sh = Arc::new(Shared {
            ctx,
            recorder: Recorder::default(),
            stop,
            drops,
            deadline: Instant::now() + limit,
            connect_gate: Arc::new(Semaphore::new(concurrency.max(1))),
            connects: AtomicU64::new(0),
            connect_us: AtomicU64::new(0),
            open: AtomicU64::new(0),
            joined: AtomicU64::new(0),
            rejoined: AtomicU64::new(0),
            recovered_false: AtomicU64::new(0),
            unrecoverable: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            churned: AtomicU64::new(0),
            send_enabled: AtomicBool::new(false),
            cut_armed: AtomicBool::new(false),
            cut: AtomicU64::new(0),
            first_cut_us: AtomicU64::new(u64::MAX),
            last_cut_us: AtomicU64::new(0),
            first_cut_unix_us: AtomicU64::new(u64::MAX),
            started,
            reconnects_to: Tally::default(),
            reconnect_failures: Tally::default(),
            failures: Tally::default(),
            errors: Tally::default(),
        });
        let timeline = Arc::new(Mutex::new(Vec::new()));
        let ticker = tokio::spawn(progress(label, sh.clone(), timeline.clone(), started));
        Self {
            sh,
            stop_tx,
            drops_tx,
            conns: Vec::new(),
            server,
            started,
            timeline,
            ticker,
        }
    }

    /// Starts one client.
    pub fn spawn(&mut self, spec: ConnSpec) {
        self.conns
            .push(tokio::spawn(crate::conn::run(spec, self.sh.clone())));
    }

    /// The server's figures now (zeroes without `--server-pid`).
    pub fn server_sample(&self) -> ProcSample {
        self.server
            .and_then(|p| p.sample().ok())
            .unwrap_or_default()
    }

    /// Waits until `done` holds, polling, for at most `limit`. Returns
    /// whether it held.
    pub async fn wait_until(&self, limit: Duration, done: impl Fn(&Shared) -> bool) -> bool {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if done(&self.sh) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        done(&self.sh)
    }

    /// Waits until deliveries stop arriving (1 s without one), at most `limit`.
    pub async fn drain(&self, limit: Duration) {
        let end = Instant::now() + limit;
        let mut last = self.sh.recorder.deliveries() + self.sh.replayed.load(Ordering::Relaxed);
        let mut quiet_since = Instant::now();
        while Instant::now() < end && quiet_since.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.sh.recorder.deliveries() + self.sh.replayed.load(Ordering::Relaxed);
            if now != last {
                last = now;
                quiet_since = Instant::now();
            }
        }
    }

    /// Drops every connection at once, client side; clients reconnect.
    pub fn drop_all(&self) {
        self.drops_tx.send_modify(|g| *g += 1);
    }

    /// Stops every client and collects their reports (bounded wait).
    pub async fn finish(self) -> (Vec<ConnReport>, Vec<SecondSample>) {
        let _ = self.stop_tx.send(true);
        let mut reports = Vec::with_capacity(self.conns.len());
        let end = Instant::now() + Duration::from_secs(30);
        for h in self.conns {
            let left = end.saturating_duration_since(Instant::now());
            if let Ok(Ok(r)) = tokio::time::timeout(left, h).await {
                reports.push(r);
            }
        }
        self.ticker.abort();
        eprintln!();
        let timeline = self.timeline.lock().clone();
        (reports, timeline)
    }

    /// Seconds since the run started.
    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// Loss accounting over every client's rooms. `finals` holds each room's
/// last offset as the publishers saw it; acks of sent messages add to it.
pub fn account(reports: &[ConnReport], finals: &BTreeMap<String, u64>) -> Accounting {
    let mut finals = finals.clone();
    for r in reports {
        if let Some((room, off)) = &r.acked {
            let e = finals.entry(room.clone()).or_default();
            *e = (*e).max(*off);
        }
    }
    let mut total = Accounting::default();
    for r in reports {
        for seen in &r.rooms {
            let fin = finals.get(&seen.room).copied().unwrap_or(0);
            total.add(&seen.tracker.finish(fin));
        }
    }
    total
}

async fn progress(
    label: &'static str,
    sh: Arc<Shared>,
    timeline: Arc<Mutex<Vec<SecondSample>>>,
    started: Instant,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0u64;
    // Bounded: a run never lasts a day.
    for _ in 0..86_400u32 {
        tick.tick().await;
        let p = sh.recorder.take_second();
        let total = sh.recorder.deliveries();
        let sample = SecondSample {
            t_s: started.elapsed().as_secs_f64(),
            deliveries: total - last,
            p50_ms: p.p50_ms,
            p99_ms: p.p99_ms,
        };
        last = total;
        timeline.lock().push(sample);
        let fails = sh.failure_count();
        let storm = if sh.cut_armed.load(Ordering::Relaxed) {
            format!(
                " cut {:>6} back {:>6}",
                sh.cut.load(Ordering::Relaxed),
                sh.rejoined.load(Ordering::Relaxed)
            )
        } else {
            String::new()
        };
        eprint!(
            "\r[{label}] {:>4.0}s open {:>6} joined {:>6}{storm} fail {:>5} deliv/s {:>7} p50 {:>7.2}ms p99 {:>7.2}ms   ",
            sample.t_s,
            sh.open.load(Ordering::Relaxed),
            sh.joined.load(Ordering::Relaxed),
            fails,
            sample.deliveries,
            sample.p50_ms,
            sample.p99_ms,
        );
        let _ = std::io::stderr().flush();
    }
}
