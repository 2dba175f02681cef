//! A cluster of three `herald serve` nodes on one real redis-server (issue
//! #4): cross-node delivery, shared offsets, resume on another node,
//! cluster-wide presence, connections, stats, disconnect and per-user
//! policies, and the ingest stream.

mod common;

use common::cluster::*;
use common::*;
use herald_testkit::RedisServer;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_delivery() {
    let redis = RedisServer::start();
    scenario_cross_node_delivery(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_offsets_across_nodes() {
    let redis = RedisServer::start();
    scenario_shared_offsets(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_another_node_is_gap_free() {
    let redis = RedisServer::start();
    scenario_resume_across_nodes(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_cluster_wide() {
    let redis = RedisServer::start();
    scenario_presence(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_stress_hopping_between_nodes() {
    let redis = RedisServer::start();
    scenario_resume_stress_hopping(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_stats_span_the_cluster() {
    let redis = RedisServer::start();
    scenario_connections_and_stats(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_api_reaches_every_node() {
    let redis = RedisServer::start();
    scenario_disconnect_api(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_reject_is_cluster_wide() {
    let redis = RedisServer::start();
    scenario_per_user_reject(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_session_is_cluster_wide() {
    let redis = RedisServer::start();
    scenario_exclusive_session(&redis.url()).await;
}

/// The `pending` counts of every consumer group of `stream`.
fn group_pending(redis: &RedisServer, stream: &str) -> Vec<u64> {
    let out = redis.cli(&["XINFO", "GROUPS", stream]);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0] == "pending")
        .filter_map(|w| w[1].parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_stream_delivers_each_entry_once() {
    const N: u64 = 200;
    let redis = RedisServer::start();
    let c = TestCluster::start(3, &redis.url(), "").await;
    let room = "stream:ingest";
    let (mut s1, _) = c.node(0).connect_user("sub-a").await;
    let (mut s2, _) = c.node(2).connect_user("sub-c").await;
    s1.join(room).await;
    s2.join(room).await;
    let stream = format!("{}:ingest", c.prefix());
    let dead = format!("{stream}:dead");
    let (r, st) = (&redis, stream.as_str());
    eventually(
        "the nodes' consumer group exists",
        FRAME_WAIT,
        || async move {
            let pending = group_pending(r, st);
            (!pending.is_empty())
                .then_some(())
                .ok_or(r.cli(&["XINFO", "GROUPS", st]))
        },
    )
    .await;
    for i in 0..N {
        let payload = json!({"room": room, "event": "ingested", "data": {"i": i}});
        let id = redis.cli(&["XADD", &stream, "*", "payload", &payload.to_string()]);
        assert!(id.contains('-'), "XADD answered {id}");
    }
    for (name, s) in [("sub-a", &mut s1), ("sub-c", &mut s2)] {
        let evs = s
            .collect_type("event", N as usize, Duration::from_secs(20))
            .await;
        let offs: Vec<u64> = evs.iter().map(offset_of).collect();
        assert_eq!(offs, (1..=N).collect::<Vec<_>>(), "{name}: offsets");
        let mut is: Vec<u64> = evs
            .iter()
            .map(|e| e["data"]["i"].as_u64().unwrap_or(u64::MAX))
            .collect();
        is.sort_unstable();
        assert_eq!(
            is,
            (0..N).collect::<Vec<_>>(),
            "{name}: each entry exactly once"
        );
        assert!(evs.iter().all(|e| e["event"] == "ingested"), "{name}");
    }
    // Entries that can never be published go to the dead-letter stream;
    // the good entry after them still flows.
    redis.cli(&["XADD", &stream, "*", "payload", "this is not json"]);
    let bad_room = json!({"room": "bad room!", "event": "x", "data": 1}).to_string();
    redis.cli(&["XADD", &stream, "*", "payload", &bad_room]);
    let good = json!({"room": room, "event": "ingested", "data": {"i": N}}).to_string();
    redis.cli(&["XADD", &stream, "*", "payload", &good]);
    for s in [&mut s1, &mut s2] {
        let ev = s.expect_type("event", FRAME_WAIT).await;
        assert_eq!(
            (offset_of(&ev), &ev["data"]["i"]),
            (N + 1, &json!(N)),
            "{ev}"
        );
    }
    // Each entry once: a sentinel published after them is the next frame.
    c.node(0).publish(room, "sentinel", json!({})).await;
    for s in [&mut s1, &mut s2] {
        expect_sentinel(s, N + 2).await;
    }
    let d = dead.as_str();
    let entries = eventually("two dead letters", Duration::from_secs(15), || async move {
        let len = r.cli(&["XLEN", d]);
        (len.trim() == "2")
            .then(|| r.cli(&["XRANGE", d, "-", "+"]))
            .ok_or(len)
    })
    .await;
    assert!(entries.contains("this is not json"), "{entries}");
    assert!(entries.contains("bad room!"), "{entries}");
    // docs/protocol.md: fields `payload`, `reason`, `id` and `node`.
    for field in ["payload", "reason", "id", "node"] {
        let n = entries.lines().filter(|l| l.trim() == field).count();
        assert_eq!(n, 2, "each dead letter has `{field}`: {entries}");
    }
    eventually("every entry acknowledged", FRAME_WAIT, || async move {
        let pending = group_pending(r, st);
        pending
            .iter()
            .all(|p| *p == 0)
            .then_some(())
            .ok_or(format!("{pending:?}"))
    })
    .await;
}
