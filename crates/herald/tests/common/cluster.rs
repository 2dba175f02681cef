//! `TestCluster`: several nodes (in-process, or `herald serve` processes
//! for tests that kill one) sharing one Redis (a
//! single server or a Redis Cluster) under a key prefix unique to the test,
//! plus the bounded waits and the core scenarios that run against both
//! kinds of Redis (`cluster.rs` and `cluster_sharded.rs`).

use super::node::TestNode;
use super::ws::{describe_ws_error, upgrade_status, TokenIn, WsClient};
use super::{enc, ADMIN_KEY, FRAME_WAIT};
use serde_json::{json, Value};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The registry heartbeat every test node runs with; a dead node must be
/// reaped within two of these.
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// Namespaces every cluster node gets: `stream` (history, no presence),
/// `chat` (presence, anyone may send) and `live` (history and presence).
/// The shipped `project` namespace (claim `projects`, presence on) is kept.
pub const NAMESPACES: &str = r#"
[namespaces.stream]
join = "any"
send = "any"
history_size = 10000
history_ttl = "1h"

[namespaces.chat]
join = "any"
send = "any"
presence = true

[namespaces.live]
join = "any"
presence = true
history_size = 10000
history_ttl = "1h"
"#;

static PREFIXES: AtomicU64 = AtomicU64::new(0);

/// A key prefix no other test (or earlier run) uses.
pub fn unique_prefix(tag: &str) -> String {
    let n = PREFIXES.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("herald-{tag}-{}-{n}-{nanos}", std::process::id())
}

/// Polls `probe` every 50 ms until it answers `Ok`, for at most `within`;
/// panics with `what` and the last `Err` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not true within {within:?}; last observed: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Several nodes on one Redis under one prefix. Nodes are stopped on drop.
pub struct TestCluster {
    nodes: Vec<TestNode>,
    ids: Vec<String>,
    prefix: String,
}

impl TestCluster {
    /// Starts `n` nodes (`n1`..`nN`) on `redis_url` with [`NAMESPACES`] and
    /// `extra_toml` merged into their config, and waits until every one
    /// answers 200 on `/ready`. The nodes run in-process.
    pub async fn start(n: usize, redis_url: &str, extra_toml: &str) -> TestCluster {
        Self::start_mode(n, redis_url, extra_toml, false).await
    }

    /// `start` with `herald serve` processes, for tests that SIGKILL a node.
    pub async fn start_process(n: usize, redis_url: &str, extra_toml: &str) -> TestCluster {
        Self::start_mode(n, redis_url, extra_toml, true).await
    }

    async fn start_mode(n: usize, redis_url: &str, extra_toml: &str, process: bool) -> TestCluster {
        let prefix = unique_prefix("it");
        let ids: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let configs: Vec<String> = ids
            .iter()
            .map(|id| node_config(id, redis_url, &prefix, extra_toml))
            .collect();
        let nodes = futures_util::future::join_all(configs.iter().map(|c| async move {
            if process {
                TestNode::start_process(c).await
            } else {
                TestNode::start(c).await
            }
        }))
        .await;
        let cluster = TestCluster { nodes, ids, prefix };
        cluster.wait_ready(Duration::from_secs(20)).await;
        cluster
    }

    /// Node `i` (0-based).
    pub fn node(&self, i: usize) -> &TestNode {
        &self.nodes[i]
    }

    /// All nodes.
    pub fn nodes(&self) -> &[TestNode] {
        &self.nodes
    }

    /// The configured `server.node_id` of node `i`.
    pub fn id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    /// The shared `broker.prefix`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// SIGKILL for node `i`: no drain, no goodbye to the registry (needs
    /// `start_process`).
    pub fn kill(&self, i: usize) {
        self.nodes[i].signal("KILL");
    }

    /// Waits until every node answers 200 on `/ready`.
    pub async fn wait_ready(&self, within: Duration) {
        self.wait_ready_status(200, within).await;
    }

    /// Waits until `/ready` answers `status` on every node in `which`.
    pub async fn wait_ready_on(&self, which: &[usize], status: u16, within: Duration) {
        let nodes: Vec<&TestNode> = which.iter().map(|&i| &self.nodes[i]).collect();
        let nodes = &nodes;
        eventually(
            &format!("/ready {status} on {which:?}"),
            within,
            || async move {
                let mut seen = Vec::new();
                for n in nodes {
                    seen.push(n.get("/ready").await);
                }
                if seen.iter().all(|(s, _)| *s == status) {
                    Ok(())
                } else {
                    Err(format!("{seen:?}"))
                }
            },
        )
        .await;
    }

    /// Waits until `/ready` answers `status` on every node.
    pub async fn wait_ready_status(&self, status: u16, within: Duration) {
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.wait_ready_on(&all, status, within).await;
    }

    /// The logs of every node, labelled, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let log = n.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            out.push_str(&format!("---- {} log tail ----\n", self.ids[i]));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // A clean cluster stop (drain, leave, quit Redis) takes about a
        // second per node: let them run side by side.
        for n in &mut self.nodes {
            n.begin_stop();
        }
    }
}

/// The TOML of one node: [`NAMESPACES`] and `extra` with the broker and
/// node id set.
fn node_config(node_id: &str, redis_url: &str, prefix: &str, extra: &str) -> String {
    let text = format!("{NAMESPACES}\n{extra}");
    let mut table: toml::Table = text.parse().expect("cluster test config is valid TOML");
    let broker = table
        .entry("broker")
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .expect("[broker] is a table");
    broker.insert("kind".into(), "redis".into());
    broker.insert("redis_url".into(), redis_url.into());
    broker.insert("prefix".into(), prefix.into());
    broker
        .entry("node_heartbeat")
        .or_insert_with(|| format!("{}ms", HEARTBEAT.as_millis()).into());
    let server = table
        .entry("server")
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .expect("[server] is a table");
    server.insert("node_id".into(), node_id.into());
    toml::to_string(&table).expect("serialize cluster test config")
}

/// Asserts that the very next frame of `s` is the `sentinel` event at
/// `offset`: anything that must not have arrived would come before it.
pub async fn expect_sentinel(s: &mut WsClient, offset: u64) {
    let ev = s.expect_next_type("event").await;
    assert_eq!(
        (&ev["event"], offset_of(&ev)),
        (&json!("sentinel"), offset),
        "{ev}"
    );
}

/// A one-hour token for `sub` with `projects: [7]`.
pub fn project_token(node: &TestNode, sub: &str) -> String {
    node.token(
        sub,
        &[],
        None,
        json!({"projects": [7]}),
        Duration::from_secs(3600),
    )
}

/// The `offset` of an event frame or publish answer.
pub fn offset_of(v: &Value) -> u64 {
    v["offset"]
        .as_u64()
        .unwrap_or_else(|| panic!("no numeric offset in {v}"))
}

/// The `epoch` of a frame or answer.
pub fn epoch_of(v: &Value) -> String {
    v["epoch"]
        .as_str()
        .unwrap_or_else(|| panic!("no epoch in {v}"))
        .to_owned()
}

/// `join_room` with `since`; returns the reply (asserting `room_joined`).
pub async fn join_since(c: &mut WsClient, room: &str, epoch: &str, offset: u64) -> Value {
    let reply = c
        .request(json!({"type": "join_room", "room": room,
            "since": {"epoch": epoch, "offset": offset}}))
        .await;
    assert_eq!(reply["type"], "room_joined", "join {room} since: {reply}");
    reply
}

/// Presence of `room` through `node`'s API: (user_id, connection_id,
/// node_id) sorted.
pub async fn presence(
    node: &TestNode,
    room: &str,
) -> Result<Vec<(String, String, String)>, String> {
    let path = format!("/api/v1/rooms/{}/presence", enc(room));
    let (s, b) = node.api("GET", &path, Some(ADMIN_KEY), None).await;
    if s != 200 {
        return Err(format!("{s} {b}"));
    }
    let members = b["members"]
        .as_array()
        .ok_or_else(|| format!("no members array: {b}"))?;
    let mut out: Vec<(String, String, String)> = members
        .iter()
        .map(|m| {
            let f = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
            (f("user_id"), f("connection_id"), f("node_id"))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// A user's connections through `node`'s API, as returned.
pub async fn connections(node: &TestNode, user: &str) -> Result<Vec<Value>, String> {
    let path = format!("/api/v1/users/{user}/connections");
    let (s, b) = node.api("GET", &path, Some(ADMIN_KEY), None).await;
    if s != 200 {
        return Err(format!("{s} {b}"));
    }
    b["connections"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("no connections array: {b}"))
}

/// Core: an event published through C reaches a member on A, and a
/// `send_message` on B reaches a member on A; non-members get nothing.
pub async fn scenario_cross_node_delivery(redis_url: &str) {
    let c = TestCluster::start(3, redis_url, "").await;
    let (a, b, cn) = (c.node(0), c.node(1), c.node(2));
    let (mut alice, aauth) = a.connect_token(&project_token(a, "alice")).await;
    assert_eq!(aauth["node_id"], c.id(0), "{aauth}");
    let j = alice.join("project:7").await;
    let epoch = epoch_of(&j);
    let (mut outsider, _) = cn.connect_user("erin").await;

    let answer = cn
        .publish("project:7", "project.updated", json!({"v": 1}))
        .await;
    assert_eq!(offset_of(&answer), 1, "{answer}");
    assert_eq!(epoch_of(&answer), epoch, "one epoch across nodes: {answer}");
    let ev = alice.expect_type("event", FRAME_WAIT).await;
    assert_eq!(ev["room"], "project:7", "{ev}");
    assert_eq!(ev["event"], "project.updated", "{ev}");
    assert_eq!(ev["data"], json!({"v": 1}), "{ev}");
    assert_eq!(ev["epoch"], epoch.as_str(), "{ev}");
    assert_eq!(ev["offset"], 1, "{ev}");
    assert!(ev["ts"].is_u64() && ev["event_id"].is_string(), "{ev}");

    let (mut bob, bauth) = b.connect_user("bob").await;
    assert_eq!(bauth["node_id"], c.id(1), "{bauth}");
    alice.join("chat:x").await;
    bob.join("chat:x").await;
    let ack = bob
        .request(json!({"type": "send_message", "room": "chat:x", "data": {"text": "hi"}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["offset"], 1, "{ack}");
    let m = alice.expect_type("message", FRAME_WAIT).await;
    assert_eq!(m["room"], "chat:x", "{m}");
    assert_eq!(m["data"], json!({"text": "hi"}), "{m}");
    assert_eq!(m["from"]["user_id"], "bob", "{m}");
    assert_eq!(m["from"]["connection_id"], bauth["connection_id"], "{m}");
    assert_eq!(m["epoch"], ack["epoch"], "{m} vs {ack}");
    assert_eq!(m["offset"], 1, "{m}");
    // An idempotency key holds cluster-wide: a retry through another node
    // answers the first offset and delivers nothing again.
    let body = json!({"room": "project:7", "event": "paid", "data": {}, "idempotency_key": "k7"});
    let first = a.publish_body(body.clone()).await;
    let retry = b.publish_body(body).await;
    assert_eq!((offset_of(&first), offset_of(&retry)), (2, 2), "{retry}");
    let ev = alice.expect_type("event", FRAME_WAIT).await;
    assert_eq!((offset_of(&ev), &ev["event"]), (2, &json!("paid")), "{ev}");
    // Nothing else for alice: a sentinel published after the retry is her
    // very next frame (one room, one order across nodes).
    cn.publish("project:7", "sentinel", json!({})).await;
    expect_sentinel(&mut alice, 3).await;
    // The outsider's node published project.updated itself, so a wrong
    // delivery of it would already be queued there.
    outsider.expect_nothing_queued().await;
}

/// Core: sequential publishes alternating between nodes get offsets 1..N of
/// one epoch, then concurrent ones through every node continue them; every
/// subscriber on every node sees exactly 1..total in order.
pub async fn scenario_shared_offsets(redis_url: &str) {
    const SEQUENTIAL: u64 = 300;
    const PER_NODE: u64 = 100;
    let c = TestCluster::start(3, redis_url, "").await;
    let room = "stream:offsets";
    let mut subs = Vec::new();
    let mut epoch = String::new();
    for i in 0..6 {
        let (mut s, _) = c.node(i % 3).connect_user(&format!("sub-{i}")).await;
        let j = s.join(room).await;
        assert_eq!(j["offset"], 0, "{j}");
        if i == 0 {
            epoch = epoch_of(&j);
        }
        assert_eq!(epoch_of(&j), epoch, "one epoch on every node: {j}");
        subs.push(s);
    }
    for n in 1..=SEQUENTIAL {
        let a = c
            .node(n as usize % 3)
            .publish(room, "tick", json!({"n": n}))
            .await;
        assert_eq!(offset_of(&a), n, "publish {n} through node {}: {a}", n % 3);
        assert_eq!(epoch_of(&a), epoch, "{a}");
    }
    let concurrent = c.nodes().iter().map(|node| async move {
        let mut offs = Vec::new();
        for _ in 0..PER_NODE {
            let a = node
                .publish(room, "tick", json!({"concurrent": true}))
                .await;
            offs.push(offset_of(&a));
        }
        offs
    });
    let mut offs: Vec<u64> = futures_util::future::join_all(concurrent)
        .await
        .into_iter()
        .flatten()
        .collect();
    offs.sort_unstable();
    let total = SEQUENTIAL + 3 * PER_NODE;
    assert_eq!(offs, (SEQUENTIAL + 1..=total).collect::<Vec<_>>());
    for (i, s) in subs.iter_mut().enumerate() {
        let evs = s
            .collect_type("event", total as usize, Duration::from_secs(20))
            .await;
        let got: Vec<u64> = evs.iter().map(offset_of).collect();
        assert_eq!(got, (1..=total).collect::<Vec<_>>(), "subscriber {i}");
        assert!(evs.iter().all(|e| e["epoch"] == epoch.as_str()), "sub {i}");
    }
    // No duplicates after them: a sentinel is every subscriber's next frame.
    c.node(0).publish(room, "sentinel", json!({})).await;
    for s in subs.iter_mut() {
        expect_sentinel(s, total + 1).await;
    }
}

/// Core: read some events on A, drop, resume on B with `since`: recovered,
/// the missed events replayed with no gap and no duplicate, then live ones.
pub async fn scenario_resume_across_nodes(redis_url: &str) {
    let c = TestCluster::start(3, redis_url, "").await;
    let (a, b, cn) = (c.node(0), c.node(1), c.node(2));
    let room = "stream:resume";
    let (mut x, _) = a.connect_user("alice").await;
    let epoch = epoch_of(&x.join(room).await);
    for i in 1..=10u64 {
        let ans = cn.publish(room, "e", json!({"i": i})).await;
        assert_eq!(offset_of(&ans), i, "{ans}");
    }
    let evs = x.collect_type("event", 6, FRAME_WAIT).await;
    let got: Vec<u64> = evs.iter().map(offset_of).collect();
    assert_eq!(got, vec![1, 2, 3, 4, 5, 6]);
    drop(x);
    for i in 11..=20u64 {
        a.publish(room, "e", json!({"i": i})).await;
    }
    let (mut y, _) = b.connect_user("alice").await;
    let j = join_since(&mut y, room, &epoch, 6).await;
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(j["epoch"], epoch.as_str(), "{j}");
    assert_eq!(j["offset"], 20, "{j}");
    assert_eq!(j["replayed"], 14, "{j}");
    for i in 21..=25u64 {
        cn.publish(room, "e", json!({"i": i})).await;
    }
    let evs = y.collect_type("event", 19, FRAME_WAIT).await;
    let got: Vec<u64> = evs.iter().map(offset_of).collect();
    assert_eq!(got, (7..=25).collect::<Vec<_>>(), "no gap, no duplicate");
    for e in &evs {
        assert_eq!(e["data"]["i"], e["offset"], "payload matches offset: {e}");
    }
    // No duplicate after them: a sentinel is the next frame.
    a.publish(room, "sentinel", json!({})).await;
    expect_sentinel(&mut y, 26).await;
}

/// Core: members on A and B are listed by C's presence API with their node;
/// `member_joined` / `member_left` cross nodes; a dropped socket leaves.
pub async fn scenario_presence(redis_url: &str) {
    let c = TestCluster::start(3, redis_url, "").await;
    let (a, b, cn) = (c.node(0), c.node(1), c.node(2));
    let room = "project:7";
    let (mut alice, aa) = a.connect_token(&project_token(a, "alice")).await;
    alice.join(room).await;
    let (mut bob, ba) = b.connect_token(&project_token(b, "bob")).await;
    let j = bob.join(room).await;
    let listed = j["members"].as_array().unwrap_or_else(|| panic!("{j}"));
    assert!(
        listed.iter().any(|m| m["user_id"] == "alice"
            && m["connection_id"] == aa["connection_id"]
            && m["node_id"] == c.id(0)),
        "bob's room_joined lists alice on {}: {j}",
        c.id(0)
    );
    expect_member(&mut alice, "member_joined", "bob", &ba["connection_id"]).await;
    let conn = |v: &Value| v["connection_id"].as_str().unwrap_or_default().to_owned();
    let mut want = vec![
        ("alice".to_owned(), conn(&aa), c.id(0).to_owned()),
        ("bob".to_owned(), conn(&ba), c.id(1).to_owned()),
    ];
    want.sort();
    let got = presence(cn, room).await.expect("presence on C");
    assert_eq!(got, want, "presence through {}", c.id(2));

    let (mut carol, ca) = cn.connect_token(&project_token(cn, "carol")).await;
    carol.join(room).await;
    expect_member(&mut alice, "member_joined", "carol", &ca["connection_id"]).await;
    expect_member(&mut bob, "member_joined", "carol", &ca["connection_id"]).await;
    let left = bob
        .request(json!({"type": "leave_room", "room": room}))
        .await;
    assert_eq!(left["type"], "room_left", "{left}");
    expect_member(&mut alice, "member_left", "bob", &ba["connection_id"]).await;
    expect_member(&mut carol, "member_left", "bob", &ba["connection_id"]).await;
    drop(carol);
    expect_member(&mut alice, "member_left", "carol", &ca["connection_id"]).await;
    let only_alice = vec![("alice".to_owned(), conn(&aa), c.id(0).to_owned())];
    let only = &only_alice;
    eventually(
        "presence on B lists only alice",
        FRAME_WAIT,
        || async move {
            let got = presence(b, room).await?;
            if &got == only {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;
}

/// Reads until a `ty` frame arrives and asserts it names `user` and `conn`.
pub async fn expect_member(c: &mut WsClient, ty: &str, user: &str, conn: &Value) {
    let f = c.expect_type(ty, FRAME_WAIT).await;
    assert_eq!(f["user_id"], user, "{ty}: {f}");
    assert_eq!(&f["connection_id"], conn, "{ty}: {f}");
}

/// `GET /api/v1/stats` of `node`: totals and `(node_id, connections, users,
/// rooms)` per node, sorted.
pub async fn stats(node: &TestNode) -> Result<(Value, Vec<(String, u64, u64, u64)>), String> {
    let (s, b) = node
        .api("GET", "/api/v1/stats", Some(ADMIN_KEY), None)
        .await;
    if s != 200 {
        return Err(format!("{s} {b}"));
    }
    let nodes = b["nodes"].as_array().ok_or_else(|| format!("{b}"))?;
    let mut per: Vec<(String, u64, u64, u64)> = nodes
        .iter()
        .map(|n| {
            let f = |k: &str| n[k].as_u64().unwrap_or(u64::MAX);
            let id = n["node_id"].as_str().unwrap_or_default().to_owned();
            (id, f("connections"), f("users"), f("rooms"))
        })
        .collect();
    per.sort();
    Ok((b, per))
}

/// Asserts that an upgrade of `user` on `node` is refused with `status`.
pub async fn upgrade_refused(node: &TestNode, user: &str, status: u16) {
    match WsClient::connect(&node.ws_url(), TokenIn::Header(node.user_token(user))).await {
        Ok(_) => panic!("upgrade on {} accepted, expected HTTP {status}", node.url()),
        Err(e) => assert_eq!(
            upgrade_status(&e),
            Some(status),
            "{}",
            describe_ws_error(&e)
        ),
    }
}
