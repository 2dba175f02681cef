//! The broker killed and started again under load, on any engine: Redis
//! without persistence (comes back empty), NATS with its JetStream store
//! kept or lost.

use super::*;
use crate::common::{Incoming, ADMIN_KEY, FRAME_WAIT};
use herald_testkit::{NatsServer, RedisServer};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// A broker server the outage scenario kills and starts again.
pub trait BrokerServer {
    /// The URL nodes are configured with (its scheme picks the engine).
    fn url(&self) -> String;
    /// SIGKILL: no goodbye to anyone.
    fn kill(&mut self);
    /// Starts it again on the same port.
    fn start_again(&mut self);
    /// Whether what was stored survives `kill` then `start_again`.
    fn keeps_store(&self) -> bool;
}

/// A redis-server without persistence: it comes back empty.
impl BrokerServer for RedisServer {
    fn url(&self) -> String {
        RedisServer::url(self)
    }
    fn kill(&mut self) {
        RedisServer::kill(self);
    }
    fn start_again(&mut self) {
        self.restart();
    }
    fn keeps_store(&self) -> bool {
        false
    }
}

/// A nats-server that comes back with its JetStream store (`keep`) or with
/// an empty one (every stream and bucket lost).
pub struct NatsRestart<'a> {
    /// The server.
    pub server: &'a mut NatsServer,
    /// Whether the store survives the restart.
    pub keep: bool,
}

impl BrokerServer for NatsRestart<'_> {
    fn url(&self) -> String {
        self.server.url()
    }
    fn kill(&mut self) {
        self.server.kill();
    }
    fn start_again(&mut self) {
        if self.keep {
            self.server.restart();
        } else {
            self.server.restart_empty();
        }
    }
    fn keeps_store(&self) -> bool {
        self.keep
    }
}

#[derive(Debug, Default)]
struct Received {
    events: Vec<(String, u64)>,
    errors: Vec<String>,
}

/// Records every event of a subscriber until `expected` is known and all
/// of it arrived (or 60 s passed); the connection must stay open.
async fn record(ws: &mut WsClient, expected: &RefCell<Option<HashSet<(String, u64)>>>) -> Received {
    let mut got = Received::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ws.recv(Duration::from_millis(100)).await {
            Incoming::Json(v) if v["type"] == "event" => {
                got.events.push((epoch_of(&v), offset_of(&v)))
            }
            Incoming::Json(_) => {}
            Incoming::Timeout => {
                if let Some(want) = expected.borrow().as_ref() {
                    let have: HashSet<&(String, u64)> = got.events.iter().collect();
                    if want.iter().all(|e| have.contains(e)) {
                        return got;
                    }
                }
                if Instant::now() > deadline {
                    got.errors.push("deadline".into());
                    return got;
                }
            }
            other => {
                got.errors.push(format!("connection lost: {other:?}"));
                return got;
            }
        }
    }
}

/// Publishes through node `n % 3`: (status, body).
async fn publish_via(c: &TestCluster, n: usize, room: &str) -> (u16, Value) {
    let body = json!({"room": room, "event": "tick", "data": {"n": n}});
    c.node(n % 3)
        .api("POST", "/api/v1/publish", Some(ADMIN_KEY), Some(body))
        .await
}

async fn all_ready(c: &TestCluster, status: u16) -> bool {
    for node in c.nodes() {
        if node.get("/ready").await.0 != status {
            return false;
        }
    }
    true
}

/// The broker killed and started again while three nodes publish and six
/// subscribers (two per node) listen: `/ready` turns 503 on every node
/// and publishes answer 503 `unavailable` while it is away, subscribers
/// stay connected, and every publish answered 200 reaches every
/// subscriber once, in offset order. A broker that kept its store
/// continues the same epoch with no gap at all (publishes answered 503
/// that were stored anyway included); one that lost it starts a new
/// epoch, and a join `since` the old one answers `recovered: false`.
/// Needs `herald serve` processes.
pub async fn scenario_broker_restart_under_load(server: &mut dyn BrokerServer) {
    let keeps_store = server.keeps_store();
    let c = TestCluster::start_process(3, &server.url(), "").await;
    let room = "stream:rr";
    let mut subs = Vec::new();
    for i in 0..6 {
        let (mut ws, _) = c.node(i % 3).connect_user(&format!("s-{i}")).await;
        ws.join(room).await;
        subs.push(ws);
    }
    let expected: RefCell<Option<HashSet<(String, u64)>>> = RefCell::new(None);
    let (cr, ex, rd) = (&c, &expected, server);
    let recorders = subs.iter_mut().map(|ws| record(ws, ex));
    let publisher = async move {
        let mut answers: Vec<(u16, Value, &'static str)> = Vec::new();
        let mut n = 0usize;
        let mut step = |phase| {
            n += 1;
            (n, phase)
        };
        for _ in 0..150 {
            let (n, phase) = step("before");
            let (s, b) = publish_via(cr, n, room).await;
            assert_eq!(s, 200, "publish {n} before the outage: {b}");
            answers.push((s, b, phase));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        rd.kill();
        let went_down = Instant::now();
        while !all_ready(cr, 503).await {
            assert!(
                went_down.elapsed() < Duration::from_secs(15),
                "/ready never 503: {}",
                cr.logs()
            );
            let (n, phase) = step("going down");
            let (s, b) = publish_via(cr, n, room).await;
            answers.push((s, b, phase));
        }
        for _ in 0..6 {
            let (n, phase) = step("down");
            let (s, b) = publish_via(cr, n, room).await;
            assert_eq!(
                (s, &b["error"]["code"]),
                (503, &json!("unavailable")),
                "publish {n} while the broker is away: {b}"
            );
            answers.push((s, b, phase));
        }
        rd.start_again();
        let came_back = Instant::now();
        while !all_ready(cr, 200).await {
            assert!(
                came_back.elapsed() < Duration::from_secs(30),
                "/ready never 200 again: {}",
                cr.logs()
            );
            let (n, phase) = step("coming back");
            let (s, b) = publish_via(cr, n, room).await;
            answers.push((s, b, phase));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for _ in 0..150 {
            let (n, phase) = step("after");
            let (s, b) = publish_via(cr, n, room).await;
            assert_eq!(s, 200, "publish {n} after recovery: {b}");
            answers.push((s, b, phase));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let accepted: HashSet<(String, u64)> = answers
            .iter()
            .filter(|(s, _, _)| *s == 200)
            .map(|(_, b, _)| (epoch_of(b), offset_of(b)))
            .collect();
        *ex.borrow_mut() = Some(accepted);
        answers
    };
    let (got, answers) =
        futures_util::future::join(futures_util::future::join_all(recorders), publisher).await;

    let mut by_phase: Vec<(&str, usize, usize)> = Vec::new();
    for (s, b, phase) in &answers {
        if by_phase.last().map(|p| p.0) != Some(*phase) {
            by_phase.push((phase, 0, 0));
        }
        let counts = by_phase.last_mut().expect("pushed");
        if *s == 200 {
            counts.1 += 1;
        } else {
            counts.2 += 1;
            assert_eq!(
                (*s, &b["error"]["code"]),
                (503, &json!("unavailable")),
                "{phase}: {b}"
            );
        }
    }
    eprintln!("publishes (phase, 200s, 503s): {by_phase:?}");
    let accepted: Vec<(String, u64)> = answers
        .iter()
        .filter(|(s, _, _)| *s == 200)
        .map(|(_, b, _)| (epoch_of(b), offset_of(b)))
        .collect();
    let epochs: HashSet<&String> = accepted.iter().map(|(e, _)| e).collect();
    let want_epochs = if keeps_store { 1 } else { 2 };
    assert_eq!(
        epochs.len(),
        want_epochs,
        "a broker that {} its store: epochs {epochs:?}",
        if keeps_store { "kept" } else { "lost" }
    );
    for (i, r) in got.iter().enumerate() {
        let have: HashSet<&(String, u64)> = r.events.iter().collect();
        let missing: Vec<&(String, u64)> = accepted.iter().filter(|e| !have.contains(e)).collect();
        // Subscriber i is on node i % 3; what it saw last says where it
        // stopped.
        assert!(
            r.errors.is_empty() && missing.is_empty(),
            "subscriber {i} (on {}): {:?}; missed {} accepted publishes: {:?}; \
             its last events: {:?}\n{}",
            c.id(i % 3),
            r.errors,
            missing.len(),
            &missing[..missing.len().min(10)],
            &r.events[r.events.len().saturating_sub(5)..],
            c.logs()
        );
        assert_eq!(have.len(), r.events.len(), "subscriber {i}: duplicates");
        let mut last: HashMap<&str, u64> = HashMap::new();
        for (e, o) in &r.events {
            let prev = last.insert(e, *o).unwrap_or(0);
            assert!(
                *o > prev,
                "subscriber {i}: offset {o} after {prev} in epoch {e}"
            );
        }
    }
    if keeps_store {
        // One stream with no gap: whatever was stored (accepted or not) is
        // every subscriber's 1..=last, in order.
        let last = accepted.iter().map(|(_, o)| *o).max().unwrap_or(0);
        for (i, r) in got.iter().enumerate() {
            let offs: Vec<u64> = r.events.iter().map(|(_, o)| *o).collect();
            if offs != (1..=last).collect::<Vec<_>>() {
                let at = offs.iter().zip(1..).position(|(a, b)| *a != b);
                panic!(
                    "subscriber {i}: {} offsets up to {last}, first divergence at {at:?}",
                    offs.len()
                );
            }
        }
    }
    for ws in &mut subs {
        ws.ping_ok().await;
    }
    resume_after_outage(&c, room, &accepted, keeps_store).await;
}

/// A client that read the first epoch up to its last accepted publish
/// before the outage resumes on another node after it: recovered with the
/// rest replayed when the store was kept, `recovered: false` in the new
/// epoch when it was lost.
async fn resume_after_outage(
    c: &TestCluster,
    room: &str,
    accepted: &[(String, u64)],
    keeps_store: bool,
) {
    let (first_epoch, _) = &accepted[0];
    let seen = accepted
        .iter()
        .filter(|(e, _)| e == first_epoch)
        .map(|(_, o)| *o)
        .max()
        .unwrap_or(0);
    let (last_epoch, last) = accepted.last().expect("accepted publishes");
    // A client retries a 503: right after an empty restart a NATS node
    // may still be re-making its registry buckets and refuse briefly.
    let node = c.node(1);
    let mut ws = eventually("resumer connected", FRAME_WAIT, || async move {
        reconnect(node, "resumer").await
    })
    .await;
    let since = if keeps_store { seen - 5 } else { seen };
    let j = join_since(&mut ws, room, first_epoch, since).await;
    assert_eq!(&epoch_of(&j), last_epoch, "{j}");
    assert_eq!(offset_of(&j), *last, "{j}");
    if keeps_store {
        assert_eq!(j["recovered"], true, "{j}");
        let n = (last - since) as usize;
        assert_eq!(j["replayed"], n, "{j}");
        let evs = ws.collect_type("event", n, FRAME_WAIT).await;
        let offs: Vec<u64> = evs.iter().map(offset_of).collect();
        assert_eq!(offs, (since + 1..=*last).collect::<Vec<_>>());
    } else {
        assert_eq!(
            j["recovered"], false,
            "history of {first_epoch} is gone: {j}"
        );
    }
}
