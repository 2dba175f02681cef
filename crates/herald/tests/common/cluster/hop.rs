//! The resume stress on any engine: clients hopping between nodes while
//! every node publishes.

use super::*;
use crate::common::{Incoming, FRAME_WAIT};
use serde_json::json;
use std::time::{Duration, Instant};

/// A tiny seeded PRNG (xorshift64*), so a failing run can be replayed.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

#[derive(Debug, Default)]
struct HopReport {
    offsets: Vec<u64>,
    resumes: usize,
    resumes_while_publishing: usize,
    abandoned: usize,
    errors: Vec<String>,
}

/// Reads `room` for a random short time, recording event offsets.
async fn read_phase(
    c: &mut WsClient,
    rng: &mut XorShift,
    epoch: &str,
    rep: &mut HopReport,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(rng.below(40));
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        match c.recv(left).await {
            Incoming::Timeout => return Ok(()),
            Incoming::Json(v) if v["type"] == "event" => {
                if v["epoch"] != epoch {
                    return Err(format!("event of another epoch: {v}"));
                }
                rep.offsets.push(offset_of(&v));
            }
            Incoming::Json(_) => {}
            other => return Err(format!("connection failed while reading: {other:?}")),
        }
    }
}

/// One client that keeps dropping its socket and resuming on a random node.
async fn hopping_client(
    c: &TestCluster,
    idx: usize,
    epoch: &str,
    mut client: WsClient,
    total: u64,
    publishing: &std::sync::atomic::AtomicBool,
) -> HopReport {
    let room = "stream:hop";
    let name = format!("hopper-{idx}");
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ (idx as u64 + 1).wrapping_mul(7919));
    let mut rep = HopReport::default();
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        if let Err(e) = read_phase(&mut client, &mut rng, epoch, &mut rep).await {
            rep.errors.push(e);
            return rep;
        }
        drop(client);
        let last = rep.offsets.last().copied().unwrap_or(0);
        if last >= total {
            return rep;
        }
        if Instant::now() > deadline {
            rep.errors.push(format!("deadline with last offset {last}"));
            return rep;
        }
        client = loop {
            let mut ws = match reconnect(c.node(rng.below(3) as usize), &name).await {
                Ok(ws) => ws,
                Err(e) => {
                    rep.errors.push(e);
                    return rep;
                }
            };
            ws.send_json(json!({"type": "join_room", "id": "j", "room": room,
                "since": {"epoch": epoch, "offset": last}}))
                .await;
            // Now and then the socket goes away before the join's reply.
            if rng.below(10) != 0 {
                break ws;
            }
            rep.abandoned += 1;
        };
        rep.resumes += 1;
        if publishing.load(std::sync::atomic::Ordering::Relaxed) {
            rep.resumes_while_publishing += 1;
        }
        let joined = loop {
            match client.recv(FRAME_WAIT).await {
                Incoming::Json(v) if v["id"] == "j" => break v,
                Incoming::Json(v) if v["type"] == "event" => {
                    rep.errors.push(format!("event before room_joined: {v}"));
                }
                Incoming::Json(_) => {}
                other => {
                    rep.errors
                        .push(format!("waiting for room_joined: {other:?}"));
                    return rep;
                }
            }
        };
        if joined["recovered"] != true || joined["epoch"] != epoch {
            rep.errors
                .push(format!("since {last} not recovered: {joined}"));
            return rep;
        }
    }
}

/// Three clients keep dropping their sockets and resuming on a random
/// node (now and then before the join's reply) while three nodes publish
/// 6,000 events: each ends with exactly 1..6000, every resume recovered.
pub async fn scenario_resume_stress_hopping(url: &str) {
    const TOTAL: u64 = 6000;
    let c = TestCluster::start(3, url, "").await;
    let publishing = std::sync::atomic::AtomicBool::new(true);
    let mut first = Vec::new();
    let mut epoch = String::new();
    for i in 0..3 {
        let (mut ws, _) = c.node(i).connect_user(&format!("hopper-{i}")).await;
        epoch = epoch_of(&ws.join("stream:hop").await);
        first.push(ws);
    }
    let epoch = epoch.as_str();
    let (c, publishing) = (&c, &publishing);
    let clients = first
        .into_iter()
        .enumerate()
        .map(|(i, ws)| hopping_client(c, i, epoch, ws, TOTAL, publishing));
    let publishers = (0..3u64).map(|p| async move {
        let mut offs = Vec::new();
        let mut n = p + 1;
        while n <= TOTAL {
            let a = c
                .node(p as usize)
                .publish("stream:hop", "t", json!({"n": n}))
                .await;
            offs.push(offset_of(&a));
            n += 3;
        }
        offs
    });
    let publish_all = async {
        let offs = futures_util::future::join_all(publishers).await;
        publishing.store(false, std::sync::atomic::Ordering::Relaxed);
        offs
    };
    let (reports, offs) = tokio::time::timeout(
        Duration::from_secs(55),
        futures_util::future::join(futures_util::future::join_all(clients), publish_all),
    )
    .await
    .expect("stress run within 55 s");
    let mut offs: Vec<u64> = offs.into_iter().flatten().collect();
    offs.sort_unstable();
    assert_eq!(offs, (1..=TOTAL).collect::<Vec<_>>(), "publish answers");
    let want: Vec<u64> = (1..=TOTAL).collect();
    for (i, r) in reports.iter().enumerate() {
        eprintln!(
            "hopper-{i}: {} resumes ({} while publishing), {} abandoned joins",
            r.resumes, r.resumes_while_publishing, r.abandoned
        );
        assert!(r.errors.is_empty(), "hopper-{i}: {:?}", r.errors);
        if r.offsets != want {
            let at = r.offsets.iter().zip(&want).position(|(a, b)| a != b);
            panic!(
                "hopper-{i}: {} offsets, first divergence at {at:?}",
                r.offsets.len()
            );
        }
        assert!(r.resumes_while_publishing >= 3, "hopper-{i}: {r:?}");
    }
}
