//! A cluster of three `herald serve` nodes on one real redis-server (issue
//! #4): cross-node delivery, shared offsets, resume on another node,
//! cluster-wide presence, connections, stats, disconnect and per-user
//! policies, and the ingest stream.

mod common;

use common::cluster::*;
use common::*;
use herald_testkit::RedisServer;
use serde_json::json;
use std::time::{Duration, Instant};

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
            let node = c.node(rng.below(3) as usize);
            let token = node.user_token(&name);
            let mut ws = match WsClient::connect(&node.ws_url(), TokenIn::Header(token)).await {
                Ok(ws) => ws,
                Err(e) => {
                    rep.errors
                        .push(format!("reconnect: {}", describe_ws_error(&e)));
                    return rep;
                }
            };
            ws.expect_type("authenticated", FRAME_WAIT).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_stress_hopping_between_nodes() {
    const TOTAL: u64 = 6000;
    let redis = RedisServer::start();
    let c = TestCluster::start(3, &redis.url(), "").await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_and_stats_span_the_cluster() {
    let redis = RedisServer::start();
    let c = TestCluster::start(3, &redis.url(), "").await;
    // Stats: every user on one node, so totals are unambiguous.
    let _d1 = c.node(0).connect_user("dave").await;
    let _d2 = c.node(0).connect_user("dave").await;
    let _e = c.node(1).connect_user("erin").await;
    let _f = c.node(2).connect_user("frank").await;
    // Each node: its user room(s) plus `global`.
    let want = vec![
        ("n1".to_owned(), 2, 1, 2),
        ("n2".to_owned(), 1, 1, 2),
        ("n3".to_owned(), 1, 1, 2),
    ];
    for node in c.nodes() {
        let want = &want;
        eventually(
            "stats list all nodes",
            Duration::from_secs(10),
            || async move {
                let (b, per) = stats(node).await?;
                if &per == want && b["connections"] == 4 && b["users"] == 3 {
                    Ok(())
                } else {
                    Err(format!("{b}"))
                }
            },
        )
        .await;
    }

    // Connections: alice on every node, joined to project:7 on A.
    let mut alice = Vec::new();
    for (i, node) in c.nodes().iter().enumerate() {
        let (mut ws, auth) = node.connect_token(&project_token(node, "alice")).await;
        assert_eq!(auth["node_id"], c.id(i), "{auth}");
        if i == 0 {
            ws.join("project:7").await;
        }
        alice.push((ws, auth));
    }
    let mut want: Vec<(String, String)> = alice
        .iter()
        .map(|(_, a)| {
            let s = |k: &str| a[k].as_str().unwrap_or_default().to_owned();
            (s("connection_id"), s("node_id"))
        })
        .collect();
    want.sort();
    for node in c.nodes() {
        let (want, a0) = (&want, &alice[0].1);
        eventually(
            "alice's connections",
            Duration::from_secs(5),
            || async move {
                let list = connections(node, "alice").await?;
                let mut got: Vec<(String, String)> = list
                    .iter()
                    .map(|e| {
                        let s = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                        (s("connection_id"), s("node_id"))
                    })
                    .collect();
                got.sort();
                let on_a = list
                    .iter()
                    .find(|e| e["connection_id"] == a0["connection_id"]);
                let rooms_ok = on_a.is_some_and(|e| {
                    e["rooms"].as_array().is_some_and(|r| {
                        r.iter()
                            .any(|r| r == "project:7" || r["room"] == "project:7")
                    })
                });
                let fields_ok = list
                    .iter()
                    .all(|e| e["transport"] == "websocket" && e["connected_at"].is_u64());
                if &got == want && rooms_ok && fields_ok {
                    Ok(())
                } else {
                    Err(format!("{list:?}"))
                }
            },
        )
        .await;
    }
    // A closed connection leaves every node's list.
    let (ws, gone) = alice.remove(1);
    ws.close().await;
    for node in c.nodes() {
        let gone = &gone["connection_id"];
        eventually("closed connection unlisted", FRAME_WAIT, || async move {
            let list = connections(node, "alice").await?;
            if list.len() == 2 && list.iter().all(|e| &e["connection_id"] != gone) {
                Ok(())
            } else {
                Err(format!("{list:?}"))
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_api_reaches_every_node() {
    let redis = RedisServer::start();
    let c = TestCluster::start(3, &redis.url(), "").await;
    let (mut a1, _) = c.node(0).connect_user("alice").await;
    let (mut a2, _) = c.node(1).connect_user("alice").await;
    let (mut b1, _) = c.node(0).connect_user("bob").await;
    let (mut b2, _) = c.node(2).connect_user("bob").await;
    let path = "/api/v1/users/alice/disconnect";
    let (s, body) = c
        .node(2)
        .api("POST", path, Some(ADMIN_KEY), Some(json!({})))
        .await;
    assert_eq!(s, 200, "{body}");
    for ws in [&mut a1, &mut a2] {
        let close = ws.expect_close(FRAME_WAIT).await;
        assert_eq!(close.code, 4013, "{close:?}");
        let d = close
            .disconnect
            .unwrap_or_else(|| panic!("disconnect frame first"));
        assert_eq!(d["code"], 4013, "{d}");
        assert_eq!(d["reconnect"], false, "{d}");
    }
    b1.ping_ok().await;
    b2.ping_ok().await;
    let node = c.node(1);
    eventually("alice unlisted", FRAME_WAIT, || async move {
        let list = connections(node, "alice").await?;
        list.is_empty().then_some(()).ok_or(format!("{list:?}"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_reject_is_cluster_wide() {
    let limits = "[limits]\nmax_connections_per_user = 2\nper_user_policy = \"reject\"\n";
    let redis = RedisServer::start();
    let c = TestCluster::start(3, &redis.url(), limits).await;
    let (a1, _) = c.node(0).connect_user("alice").await;
    let (mut a2, _) = c.node(1).connect_user("alice").await;
    upgrade_refused(c.node(2), "alice", 429).await;
    upgrade_refused(c.node(0), "alice", 429).await;
    let (mut bob, _) = c.node(2).connect_user("bob").await;
    bob.ping_ok().await;
    a2.ping_ok().await;
    // A freed slot is usable from any node.
    a1.close().await;
    let node = c.node(2);
    let mut a3 = eventually("slot freed", FRAME_WAIT, || async move {
        let token = node.user_token("alice");
        match WsClient::connect(&node.ws_url(), TokenIn::Header(token)).await {
            Ok(ws) => Ok(ws),
            Err(e) if upgrade_status(&e) == Some(429) => Err("429".to_owned()),
            Err(e) => panic!("unexpected: {}", describe_ws_error(&e)),
        }
    })
    .await;
    a3.expect_type("authenticated", FRAME_WAIT).await;
    upgrade_refused(c.node(1), "alice", 429).await;
    a2.ping_ok().await;
    a3.ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_session_is_cluster_wide() {
    let redis = RedisServer::start();
    let c = TestCluster::start(
        3,
        &redis.url(),
        "[limits]\nper_user_policy = \"exclusive\"\n",
    )
    .await;
    let (mut c1, _) = c.node(0).connect_user("alice").await;
    let (mut bob, _) = c.node(0).connect_user("bob").await;
    let (mut c2, _) = c.node(1).connect_user("alice").await;
    let close = c1.expect_close(FRAME_WAIT).await;
    assert_eq!(close.code, 4010, "{close:?}");
    let d = close.disconnect.expect("disconnect before 4010");
    assert_eq!(d["code"], 4010, "{d}");
    c2.ping_ok().await;
    let (mut c3, a3) = c.node(2).connect_user("alice").await;
    let close = c2.expect_close(FRAME_WAIT).await;
    assert_eq!(close.code, 4010, "{close:?}");
    assert!(close.disconnect.is_some(), "disconnect before 4010");
    c3.ping_ok().await;
    bob.ping_ok().await;
    let (node, id) = (c.node(0), &a3["connection_id"]);
    eventually("only the newest listed", FRAME_WAIT, || async move {
        let list = connections(node, "alice").await?;
        match list.as_slice() {
            [only] if &only["connection_id"] == id && only["node_id"] == "n3" => Ok(()),
            _ => Err(format!("{list:?}")),
        }
    })
    .await;
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
