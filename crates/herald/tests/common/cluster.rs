//! `TestCluster`: several nodes (in-process, or `herald serve` processes
//! for tests that kill one) sharing one broker (a Redis server, a Redis
//! Cluster or a NATS server, chosen by the URL's scheme) under a key
//! prefix unique to the test, plus the bounded waits and the scenarios
//! that run against every engine: `basic` (delivery, offsets, resume,
//! presence), `registry` (connections, stats, disconnect, per-user
//! policies), `hop` (the resume stress), `chaos` (a node SIGKILLed) and
//! `outage` (the broker killed and started again). `cluster.rs`, `cluster_sharded.rs` and
//! `cluster_chaos.rs` call them on Redis, `cluster_nats.rs` and
//! `cluster_nats_chaos.rs` on NATS.

mod basic;
mod chaos;
mod hop;
mod outage;
mod registry;

// Each test binary calls only some of the scenarios; an unused glob
// re-export would be reported in the others.
#[allow(unused_imports)]
pub use basic::*;
#[allow(unused_imports)]
pub use chaos::*;
#[allow(unused_imports)]
pub use hop::*;
#[allow(unused_imports)]
pub use outage::*;
#[allow(unused_imports)]
pub use registry::*;

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
    /// Starts `n` nodes (`n1`..`nN`) on the broker at `url` (Redis or
    /// NATS, by its scheme: [`engine_of`]) with [`NAMESPACES`] and
    /// `extra_toml` merged into their config, and waits until every one
    /// answers 200 on `/ready`. The nodes run in-process.
    pub async fn start(n: usize, url: &str, extra_toml: &str) -> TestCluster {
        Self::start_mode(n, url, extra_toml, false).await
    }

    /// `start` with `herald serve` processes, for tests that SIGKILL a node.
    pub async fn start_process(n: usize, url: &str, extra_toml: &str) -> TestCluster {
        Self::start_mode(n, url, extra_toml, true).await
    }

    async fn start_mode(n: usize, url: &str, extra_toml: &str, process: bool) -> TestCluster {
        let prefix = unique_prefix("it");
        let ids: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let configs: Vec<String> = ids
            .iter()
            .map(|id| node_config(id, url, &prefix, extra_toml))
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

/// The engine a broker URL names, from its scheme: `(broker.kind, the key
/// that holds the URL)`. `redis://` and `redis-cluster://` are the Redis
/// engine, `nats://` the NATS one.
pub fn engine_of(url: &str) -> (&'static str, &'static str) {
    match url.split_once("://").map(|(scheme, _)| scheme) {
        Some("redis" | "rediss" | "redis-cluster") => ("redis", "redis_url"),
        Some("nats" | "tls") => ("nats", "nats_url"),
        _ => panic!("no engine for broker URL {url}: want redis://, redis-cluster:// or nats://"),
    }
}

/// The TOML of one node: [`NAMESPACES`] and `extra` with the broker (its
/// kind from the URL's scheme) and node id set.
fn node_config(node_id: &str, url: &str, prefix: &str, extra: &str) -> String {
    let text = format!("{NAMESPACES}\n{extra}");
    let mut table: toml::Table = text.parse().expect("cluster test config is valid TOML");
    let broker = table
        .entry("broker")
        .or_insert_with(|| toml::Value::Table(Default::default()))
        .as_table_mut()
        .expect("[broker] is a table");
    let (kind, url_key) = engine_of(url);
    broker.insert("kind".into(), kind.into());
    broker.insert(url_key.into(), url.into());
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

/// A new connection of `user` on `node`, its `authenticated` frame read;
/// `Err` describes a refused upgrade.
pub async fn reconnect(node: &TestNode, user: &str) -> Result<WsClient, String> {
    let token = node.user_token(user);
    let mut ws = WsClient::connect(&node.ws_url(), TokenIn::Header(token))
        .await
        .map_err(|e| format!("reconnect: {}", describe_ws_error(&e)))?;
    ws.expect_type("authenticated", FRAME_WAIT).await;
    Ok(ws)
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
