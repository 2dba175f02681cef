//! History and gap-free recovery (PROTOCOL.md 5 and 6, issue #3): the
//! resume stress test, resume after a trim, after a restart, with a wrong
//! epoch or a future offset, and idempotent publish.

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const STREAM: &str = r#"
[namespaces.stream]
join = "any"
history_size = 10000
history_ttl = "1h"

[namespaces.tiny]
join = "any"
history_size = 5
history_ttl = "1h"

[namespaces.keep]
join = "any"
history_size = 100
history_ttl = "1h"
"#;

/// A tiny seeded PRNG (xorshift64*), so a failing run can be replayed.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Joins `room` with `since` and returns `room_joined` (asserting the type).
async fn join_since(c: &mut WsClient, room: &str, epoch: &str, offset: u64) -> Value {
    let reply = c
        .request(json!({
            "type": "join_room",
            "room": room,
            "since": {"epoch": epoch, "offset": offset},
        }))
        .await;
    assert_eq!(reply["type"], "room_joined", "join {room} since: {reply}");
    reply
}

/// Describes the first place where `got` differs from 1..=n.
fn first_divergence(got: &[u64], n: u64) -> Option<String> {
    let expected: Vec<u64> = (1..=n).collect();
    if got == expected.as_slice() {
        return None;
    }
    let idx = got
        .iter()
        .zip(expected.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(expected.len()));
    let lo = idx.saturating_sub(5);
    let hi = (idx + 6).min(got.len());
    Some(format!(
        "{} offsets received (expected {n}); first divergence at index {idx}: expected {:?}, got {:?}; received around it [{lo}..{hi}]: {:?}",
        got.len(),
        expected.get(idx),
        got.get(idx),
        &got[lo..hi]
    ))
}

#[derive(Debug, Default)]
struct ClientReport {
    name: String,
    offsets: Vec<u64>,
    resumes: usize,
    /// `room_joined` replies to a resume that were not `recovered: true`.
    bad_resumes: Vec<Value>,
    /// Joins abandoned before the reply (dropped right after sending).
    abandoned: usize,
    /// Resumes answered while the publishers were still running.
    resumes_while_publishing: usize,
    /// Events replayed over all resumes.
    replayed: u64,
    /// Anything else that went wrong (connection refused, close frames...).
    errors: Vec<String>,
}

/// One resuming client of the stress test: connect, join with `since`,
/// read for a random short time, drop the TCP connection without a close
/// handshake, repeat until offset `total` was seen.
async fn stress_client(
    node: Arc<TestNode>,
    idx: usize,
    epoch: String,
    mut client: WsClient,
    total: u64,
    stop: Arc<AtomicBool>,
    publishing_done: Arc<AtomicBool>,
) -> ClientReport {
    let room = "stream:1";
    let mut rng = XorShift::new(0x9E37_79B9_7F4A_7C15 ^ (idx as u64 + 1).wrapping_mul(7919));
    let mut rep = ClientReport {
        name: format!("client-{idx}"),
        ..Default::default()
    };
    let mut last = 0u64;
    // The first connection joined without `since` before publishing began.
    let mut current =
        Some(client_read_phase(&mut client, &mut rng, room, &epoch, &mut rep, &mut last).await);
    drop(client);
    for _round in 0..5000 {
        if stop.load(Ordering::Relaxed) {
            rep.errors.push("stopped by the overall deadline".into());
            break;
        }
        if let Some(Err(e)) = current.take() {
            rep.errors.push(e);
            break;
        }
        if last >= total {
            break;
        }
        let token = node.user_token(&rep.name);
        let mut c = match WsClient::connect(&node.ws_url(), TokenIn::Header(token)).await {
            Ok(c) => c,
            Err(e) => {
                rep.errors
                    .push(format!("reconnect failed: {}", describe_ws_error(&e)));
                break;
            }
        };
        match c.recv(FRAME_WAIT).await {
            Incoming::Json(v) if v["type"] == "authenticated" => {}
            other => {
                rep.errors
                    .push(format!("expected authenticated, got {other:?}"));
                break;
            }
        }
        // Now and then drop the connection right after sending the join,
        // before the reply (a resume interrupted mid-handshake).
        if rng.below(10) == 0 {
            c.send_json(json!({
                "type": "join_room", "id": 1, "room": room,
                "since": {"epoch": epoch, "offset": last},
            }))
            .await;
            rep.abandoned += 1;
            drop(c);
            continue;
        }
        rep.resumes += 1;
        c.send_json(json!({
            "type": "join_room", "id": 1, "room": room,
            "since": {"epoch": epoch, "offset": last},
        }))
        .await;
        let deadline = Instant::now() + FRAME_WAIT;
        let joined = loop {
            match c
                .recv(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Incoming::Json(v) if v["id"] == 1 => break Some(v),
                Incoming::Json(v) if v["type"] == "event" => {
                    rep.errors.push(format!("event before room_joined: {v}"));
                }
                Incoming::Json(_) => {}
                other => {
                    rep.errors
                        .push(format!("waiting for room_joined: {other:?}"));
                    break None;
                }
            }
        };
        let Some(joined) = joined else { break };
        if !publishing_done.load(Ordering::Relaxed) {
            rep.resumes_while_publishing += 1;
        }
        rep.replayed += joined["replayed"].as_u64().unwrap_or(0);
        if joined["type"] != "room_joined"
            || joined["recovered"] != true
            || joined["epoch"] != epoch.as_str()
        {
            rep.bad_resumes
                .push(json!({"since": last, "reply": joined}));
            if joined["recovered"] != true {
                // Without recovery the client cannot continue gap-free.
                break;
            }
        }
        current =
            Some(client_read_phase(&mut c, &mut rng, room, &epoch, &mut rep, &mut last).await);
        // Abrupt drop: the TCP socket goes away without a close frame.
        drop(c);
    }
    if let Some(Err(e)) = current {
        rep.errors.push(e);
    }
    rep
}

/// Reads events of `room` for a random short time (longer once the last
/// offset was seen, to catch late duplicates).
async fn client_read_phase(
    c: &mut WsClient,
    rng: &mut XorShift,
    room: &str,
    epoch: &str,
    rep: &mut ClientReport,
    last: &mut u64,
) -> Result<(), String> {
    let millis = match rng.below(8) {
        0 => 0,
        1 => rng.below(5),
        _ => 2 + rng.below(40),
    };
    let deadline = Instant::now() + Duration::from_millis(millis);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        match c.recv(left).await {
            Incoming::Timeout => return Ok(()),
            Incoming::Json(v) if v["type"] == "event" && v["room"] == room => {
                let off = v["offset"]
                    .as_u64()
                    .ok_or_else(|| format!("event without a numeric offset: {v}"))?;
                if v["epoch"] != epoch {
                    return Err(format!("event of another epoch: {v}"));
                }
                rep.offsets.push(off);
                *last = (*last).max(off);
            }
            Incoming::Json(v) if v["type"] == "disconnect" => {
                return Err(format!("server sent disconnect: {v}"))
            }
            Incoming::Json(_) => {}
            other => return Err(format!("connection failed while reading: {other:?}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_resume_at_random_points_is_gap_free() {
    const TOTAL: u64 = 10_000;
    const CLIENTS: usize = 6;
    const PUBLISHERS: u64 = 4;
    let node = Arc::new(TestNode::start(STREAM).await);
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let publishing_done = Arc::new(AtomicBool::new(false));

    // Every client joins once (no `since`) before the first publish, so
    // each one must end with the full 1..=TOTAL.
    let mut first = Vec::new();
    let mut epoch = String::new();
    for i in 0..CLIENTS {
        let (mut c, _) = node.connect_user(&format!("client-{i}")).await;
        let j = c.join("stream:1").await;
        assert_eq!(j["offset"], 0, "fresh room: {j}");
        let e = j["epoch"].as_str().expect("epoch").to_owned();
        if i == 0 {
            epoch = e.clone();
        }
        assert_eq!(e, epoch, "all clients see one epoch");
        first.push(c);
    }

    let run = async {
        let mut clients = Vec::new();
        for (i, c) in first.into_iter().enumerate() {
            clients.push(tokio::spawn(stress_client(
                node.clone(),
                i,
                epoch.clone(),
                c,
                TOTAL,
                stop.clone(),
                publishing_done.clone(),
            )));
        }
        // Publishers: each publish is awaited; the server assigns offsets.
        let mut pubs = Vec::new();
        for p in 0..PUBLISHERS {
            let node = node.clone();
            let stop = stop.clone();
            pubs.push(tokio::spawn(async move {
                let mut offsets = Vec::new();
                let mut n = p;
                while n < TOTAL && !stop.load(Ordering::Relaxed) {
                    let a = node
                        .publish("stream:1", "tick", json!({"n": n, "publisher": p}))
                        .await;
                    offsets.push(a["offset"].as_u64().expect("offset in answer"));
                    n += PUBLISHERS;
                }
                offsets
            }));
        }
        let mut published: Vec<u64> = Vec::new();
        for p in pubs {
            published.extend(p.await.expect("publisher task"));
        }
        publishing_done.store(true, Ordering::Relaxed);
        let publish_secs = started.elapsed().as_secs_f64();
        published.sort_unstable();
        assert_eq!(
            published,
            (1..=TOTAL).collect::<Vec<_>>(),
            "publish answers cover offsets 1..={TOTAL} once each"
        );
        let mut reports = Vec::new();
        for c in clients {
            reports.push(c.await.expect("client task panicked"));
        }
        (publish_secs, reports)
    };
    let (publish_secs, reports) = match tokio::time::timeout(Duration::from_secs(90), run).await {
        Ok(r) => r,
        Err(_) => {
            stop.store(true, Ordering::Relaxed);
            panic!("stress test did not finish within 90 s");
        }
    };

    let mut failures = Vec::new();
    for r in &reports {
        eprintln!(
            "{}: {} offsets, {} resumes ({} while publishing, {} events replayed), {} abandoned joins",
            r.name,
            r.offsets.len(),
            r.resumes,
            r.resumes_while_publishing,
            r.replayed,
            r.abandoned
        );
        if !r.errors.is_empty() {
            failures.push(format!("{}: errors {:?}", r.name, r.errors));
        }
        if !r.bad_resumes.is_empty() {
            failures.push(format!(
                "{}: {} resumes not recovered: first {}",
                r.name,
                r.bad_resumes.len(),
                r.bad_resumes[0]
            ));
        }
        if let Some(d) = first_divergence(&r.offsets, TOTAL) {
            failures.push(format!("{}: {d}", r.name));
        }
        if r.resumes_while_publishing < 3 {
            failures.push(format!(
                "{}: only {} resumes while events kept arriving; the test did not exercise recovery",
                r.name, r.resumes_while_publishing
            ));
        }
    }
    eprintln!(
        "published {TOTAL} in {publish_secs:.1} s; whole run {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_trim_is_not_recovered() {
    let node = TestNode::start(STREAM).await;
    let mut epoch = String::new();
    for i in 1..=20u64 {
        let a = node.publish("tiny:1", "e", json!({"i": i})).await;
        assert_eq!(a["offset"], i, "{a}");
        epoch = a["epoch"].as_str().expect("epoch").to_owned();
    }
    let (mut c, _) = node.connect_user("alice").await;
    let j = join_since(&mut c, "tiny:1", &epoch, 2).await;
    assert_eq!(j["recovered"], false, "events 3..15 were trimmed: {j}");
    assert_eq!(j["epoch"], epoch.as_str(), "current epoch: {j}");
    assert_eq!(j["offset"], 20, "current offset: {j}");
    assert_eq!(j["replayed"], 0, "nothing replayed: {j}");
    c.expect_nothing_queued().await;

    // Control: a position inside the window of 5 is recovered.
    let (mut d, _) = node.connect_user("bob").await;
    let j = join_since(&mut d, "tiny:1", &epoch, 15).await;
    assert_eq!(j["recovered"], true, "16..20 are stored: {j}");
    assert_eq!(j["replayed"], 5, "{j}");
    let evs = d.collect_type("event", 5, FRAME_WAIT).await;
    let offs: Vec<u64> = evs.iter().map(|e| e["offset"].as_u64().unwrap()).collect();
    assert_eq!(offs, vec![16, 17, 18, 19, 20]);
    d.expect_nothing_queued().await;

    // The edge: exactly the oldest stored event still missing is fine
    // (since 15 above), one more is not.
    let (mut e, _) = node.connect_user("carol").await;
    let j = join_since(&mut e, "tiny:1", &epoch, 14).await;
    assert_eq!(j["recovered"], false, "offset 15 was trimmed: {j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_restart_gets_a_new_epoch() {
    let mut node = TestNode::start_process(STREAM).await;
    let (mut c, _) = node.connect_user("alice").await;
    let j = c.join("keep:1").await;
    for i in 1..=3 {
        node.publish("keep:1", "e", json!({"i": i})).await;
    }
    let evs = c.collect_type("event", 3, FRAME_WAIT).await;
    let old_epoch = j["epoch"].as_str().expect("epoch").to_owned();
    assert_eq!(evs[2]["epoch"], old_epoch.as_str());
    assert_eq!(evs[2]["offset"], 3);
    drop(c);

    node.sigterm();
    let status = node.wait_exit_async(Duration::from_secs(20)).await;
    assert!(status.is_some(), "node did not exit within 20 s of SIGTERM");

    let node2 = TestNode::start(STREAM).await;
    assert_ne!(node2.port(), node.port(), "new node on a new port");
    let (mut c, _) = node2.connect_user("alice").await;
    let j = join_since(&mut c, "keep:1", &old_epoch, 3).await;
    assert_eq!(j["recovered"], false, "history died with the node: {j}");
    assert!(j["epoch"].is_string(), "{j}");
    assert_ne!(
        j["epoch"],
        old_epoch.as_str(),
        "a restarted broker has a new epoch: {j}"
    );
    assert_eq!(j["offset"], 0, "{j}");
    assert_eq!(j["replayed"], 0, "{j}");
    c.expect_nothing_queued().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_epoch_or_future_offset_is_not_recovered() {
    let node = TestNode::start(STREAM).await;
    let mut epoch = String::new();
    for i in 1..=4 {
        let a = node.publish("keep:2", "e", json!({"i": i})).await;
        epoch = a["epoch"].as_str().expect("epoch").to_owned();
    }
    let (mut c, _) = node.connect_user("alice").await;

    let wrong = if epoch == "0123456789abcdef" {
        "fedcba9876543210"
    } else {
        "0123456789abcdef"
    };
    let j = join_since(&mut c, "keep:2", wrong, 1).await;
    assert_eq!(j["recovered"], false, "wrong epoch: {j}");
    assert_eq!(j["epoch"], epoch.as_str(), "the current epoch: {j}");
    assert_eq!(j["offset"], 4, "{j}");
    assert_eq!(j["replayed"], 0, "{j}");
    c.expect_nothing_queued().await;

    let j = join_since(&mut c, "keep:2", &epoch, 99).await;
    assert_eq!(j["recovered"], false, "offset 99 lies in the future: {j}");
    assert_eq!(j["epoch"], epoch.as_str(), "{j}");
    assert_eq!(j["offset"], 4, "{j}");
    c.expect_nothing_queued().await;

    // Control: the right epoch and a stored offset replay the rest, and the
    // stream continues live after it.
    let j = join_since(&mut c, "keep:2", &epoch, 2).await;
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(j["replayed"], 2, "{j}");
    let evs = c.collect_type("event", 2, FRAME_WAIT).await;
    assert_eq!(evs[0]["offset"], 3);
    assert_eq!(evs[1]["offset"], 4);
    node.publish("keep:2", "e", json!({"i": 5})).await;
    let ev = c.expect_type("event", FRAME_WAIT).await;
    assert_eq!(ev["offset"], 5, "{ev}");
    // And since == head is recovered with nothing to replay.
    let (mut d, _) = node.connect_user("bob").await;
    let j = join_since(&mut d, "keep:2", &epoch, 5).await;
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(j["replayed"], 0, "{j}");
    d.expect_nothing_queued().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_publish_answers_the_first_offset_and_delivers_once() {
    let node = TestNode::start(STREAM).await;
    let (mut c, _) = node.connect_user("alice").await;
    c.join("keep:3").await;
    node.publish("keep:3", "e", json!({"before": true})).await;
    let body = json!({"room": "keep:3", "event": "order.paid", "data": {"order": 7},
        "idempotency_key": "order-7-paid"});
    let a = node.publish_body(body.clone()).await;
    let b = node.publish_body(body.clone()).await;
    assert_eq!(a["offset"], 2, "{a}");
    assert_eq!(
        a["offset"], b["offset"],
        "retry answers the first offset: {a} vs {b}"
    );
    assert_eq!(a["epoch"], b["epoch"], "{a} vs {b}");
    // A few other events later, still within the window, a retry answers
    // the same.
    node.publish("keep:3", "e", json!({"after": 1})).await;
    let c3 = node.publish_body(body).await;
    assert_eq!(c3["offset"], 2, "still the first offset: {c3}");

    let evs = c.collect_type("event", 3, FRAME_WAIT).await;
    let offs: Vec<u64> = evs.iter().map(|e| e["offset"].as_u64().unwrap()).collect();
    assert_eq!(offs, vec![1, 2, 3], "{evs:?}");
    assert_eq!(evs[1]["event"], "order.paid");
    c.expect_nothing_queued().await;

    // History holds the event once.
    let (s, h) = node
        .api(
            "GET",
            "/api/v1/rooms/keep%3A3/history",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(s, 200, "{h}");
    let paid = h["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["event"] == "order.paid")
        .count();
    assert_eq!(paid, 1, "stored once: {h}");
    assert_eq!(h["offset"], 3, "{h}");
}
