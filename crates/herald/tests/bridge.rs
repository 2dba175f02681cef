//! Ingest bridges on a three-node cluster (Redis broker) reading a real
//! `nats-server` (core subjects, JetStream durables) and Redis pub/sub:
//! each message reaches its mapped room exactly once cluster-wide; bad
//! messages are counted, dead-lettered (JetStream) and skipped; the Redis
//! leader's death hands the channels to another node. Single nodes riding
//! out NATS and broker failures: `bridge_recovery.rs`.

mod bridge_common;
mod common;

use async_nats::jetstream;
use bridge_common::{nats_subscriptions, nats_with_jobs_stream, samples, WAIT};
use common::cluster::{eventually, offset_of, TestCluster};
use common::*;
use futures_util::StreamExt;
use herald_testkit::{NatsServer, RedisServer};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How many messages each bridge carries in the exactly-once test.
const N: u64 = 20;

/// The `[bridge]` section: a core subject, a JetStream durable and a Redis
/// channel mapping, and the `nats_publish` subject (core or JetStream).
fn bridge_toml(
    nats_url: &str,
    publish_jetstream: bool,
    redis_url: Option<&str>,
    ordered: bool,
) -> String {
    let redis_url = redis_url
        .map(|u| format!("redis_url = \"{u}\""))
        .unwrap_or_default();
    format!(
        r#"
[bridge]
nats_url = "{nats_url}"
{redis_url}
redis_leader_ttl = "1s"
nats_leader_ttl = "1s"
command_timeout = "500ms"
max_message_bytes = 2048

[bridge.nats_publish]
enabled = true
jetstream = {publish_jetstream}
ordered = {ordered}

[[bridge.mappings]]
name = "agents"
nats_subject = "agents.*.events"
ordered = {ordered}
room = "stream:agent-{{1}}"
event = "{{body.type}}"

[[bridge.mappings]]
name = "jobs"
nats_subject = "jobs.*.done"
jetstream_stream = "JOBS"
ordered = {ordered}
room = "stream:job-{{1}}"
event = "job.done"

[[bridge.mappings]]
name = "projects"
redis_channel = "events:project:*"
room = "stream:project-{{1}}"
event = "{{body.type}}"
"#
    )
}

/// Waits until `nodes` nodes are subscribed to the core subjects (1: the
/// leader of an ordered bridge), the durable consumers exist and one node
/// holds the Redis pattern subscription: core NATS and pub/sub keep nothing
/// for a subscriber not there yet.
async fn wait_bridges_ready(
    nats: &NatsServer,
    js: &jetstream::Context,
    redis: &RedisServer,
    prefix: &str,
    nodes: usize,
    publish_jetstream: bool,
) {
    let publish_subject = format!("{prefix}.publish");
    eventually("bridges subscribed", WAIT, || async {
        let agents = nats_subscriptions(nats, "agents.*.events");
        let publish = nats_subscriptions(nats, &publish_subject);
        let numpat = redis.cli(&["PUBSUB", "NUMPAT"]).trim().to_owned();
        let jobs = js
            .get_stream("JOBS")
            .await
            .map_err(|e| e.to_string())?
            .consumer_info(format!("{prefix}-bridge-jobs"))
            .await
            .is_ok();
        let publish_ready = if publish_jetstream {
            match js.get_stream(format!("{prefix}-publish")).await {
                Ok(s) => s.consumer_info(format!("{prefix}-bridge")).await.is_ok(),
                Err(_) => false,
            }
        } else {
            publish == nodes
        };
        if agents == nodes && publish_ready && numpat == "1" && jobs {
            Ok(())
        } else {
            Err(format!(
                "agents subs {agents}, publish ready {publish_ready}, redis NUMPAT {numpat}, jobs durable {jobs}"
            ))
        }
    })
    .await;
}

/// Reads `client`'s events until every room in `rooms` has had its
/// `sentinel` event; returns each room's events before it, in order.
async fn events_until_sentinels(
    client: &mut WsClient,
    rooms: &[&str],
) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut done = BTreeSet::new();
    while done.len() < rooms.len() {
        let ev = client.expect_type("event", WAIT).await;
        let room = ev["room"].as_str().unwrap_or_default().to_owned();
        if ev["event"] == "sentinel" {
            done.insert(room);
        } else {
            assert!(!done.contains(&room), "event after the sentinel: {ev}");
            out.entry(room).or_default().push(ev);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_bridge_reaches_its_room_once_on_a_three_node_cluster() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let (client, js) = nats_with_jobs_stream(&nats).await;
    let c = TestCluster::start(
        3,
        &redis.url(),
        &bridge_toml(&nats.url(), false, None, true),
    )
    .await;
    each_bridge_once(&c, &nats, &redis, &client, &js, 1).await;
}

/// `ordered = false`: every node reads (queue group, shared durable); each
/// message still reaches its room once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unordered_bridges_reach_their_rooms_once_from_every_node() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let (client, js) = nats_with_jobs_stream(&nats).await;
    let c = TestCluster::start(
        3,
        &redis.url(),
        &bridge_toml(&nats.url(), false, None, false),
    )
    .await;
    each_bridge_once(&c, &nats, &redis, &client, &js, 3).await;
}

/// The same bridges on a cluster whose broker is NATS too (the bridges keep
/// their own connection; the engine's subjects and the bridged ones share
/// the server). The harness picks the engine by the URL's scheme; a build
/// without the NATS engine skips this case.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bridges_run_the_same_on_a_nats_broker() {
    if !herald_server::engines::compiled().kinds().contains(&"nats") {
        eprintln!("skipped: this build has no NATS engine");
        return;
    }
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let (client, js) = nats_with_jobs_stream(&nats).await;
    let toml = bridge_toml(&nats.url(), false, Some(&redis.url()), true);
    let c = TestCluster::start(3, &nats.url(), &toml).await;
    each_bridge_once(&c, &nats, &redis, &client, &js, 1).await;
    let rooms = js.get_stream(format!("{}-rooms", c.prefix())).await;
    assert!(rooms.is_ok(), "the NATS engine's stream holds the rooms");
}

/// A client on every node joined to each bridge's room sees each bridged
/// message once: offsets 1..N, every message's `n` once. `core_subscribers`:
/// 1 when ordered (the leader), the node count when not.
async fn each_bridge_once(
    c: &TestCluster,
    nats: &NatsServer,
    redis: &RedisServer,
    client: &async_nats::Client,
    js: &jetstream::Context,
    core_subscribers: usize,
) {
    wait_bridges_ready(nats, js, redis, c.prefix(), core_subscribers, false).await;

    let rooms = [
        "stream:agent-42",
        "stream:job-7",
        "stream:project-9",
        "stream:pub-1",
    ];
    let mut clients = Vec::new();
    for node in c.nodes() {
        let (mut ws, _) = node.connect_user("watcher").await;
        for room in rooms {
            ws.join(room).await;
        }
        clients.push(ws);
    }

    let publish_subject = format!("{}.publish", c.prefix());
    for n in 0..N {
        let step = json!({"type": "agent.step", "n": n}).to_string();
        client
            .publish("agents.42.events", step.into())
            .await
            .expect("core publish");
        js.publish("jobs.7.done", json!({"n": n}).to_string().into())
            .await
            .expect("JetStream publish")
            .await
            .expect("JetStream stored it");
        redis.cli(&[
            "PUBLISH",
            "events:project:9",
            &json!({"type": "build", "n": n}).to_string(),
        ]);
        let body = json!({"room": "stream:pub-1", "event": "published", "data": {"n": n}});
        client
            .publish(publish_subject.clone(), body.to_string().into())
            .await
            .expect("core publish");
    }
    client.flush().await.expect("flush");

    // Every bridged message is published before the sentinel only if it
    // was published at all: wait for the rooms to hold N events first.
    for room in rooms {
        let node = c.node(0);
        eventually(&format!("{room} holds {N} events"), WAIT, || async move {
            let path = format!("/api/v1/rooms/{}/history?limit=1000", enc(room));
            let (s, b) = node.api("GET", &path, Some(ADMIN_KEY), None).await;
            match b["events"].as_array() {
                Some(evs) if s == 200 && evs.len() as u64 >= N => Ok(()),
                _ => Err(format!("{s} {b}")),
            }
        })
        .await;
        c.node(1).publish(room, "sentinel", json!({})).await;
    }

    for (i, ws) in clients.iter_mut().enumerate() {
        let got = events_until_sentinels(ws, &rooms).await;
        for room in rooms {
            let evs = got.get(room).cloned().unwrap_or_default();
            let offsets: Vec<u64> = evs.iter().map(offset_of).collect();
            let expected: Vec<u64> = (1..=N).collect();
            assert_eq!(offsets, expected, "node {i}, room {room}: {evs:?}");
            let ns: BTreeSet<u64> = evs.iter().filter_map(|e| e["data"]["n"].as_u64()).collect();
            assert_eq!(
                ns,
                (0..N).collect(),
                "node {i}, room {room}: each message once"
            );
        }
        assert_eq!(got["stream:agent-42"][0]["event"], "agent.step");
        assert_eq!(got["stream:job-7"][0]["event"], "job.done");
        assert_eq!(got["stream:project-9"][0]["event"], "build");
        assert_eq!(got["stream:pub-1"][0]["event"], "published");
    }
}

/// `name` summed over the cluster's nodes, per `(bridge, <label>)`.
async fn cluster_counts(
    c: &TestCluster,
    name: &str,
    label: &str,
) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for node in c.nodes() {
        for (labels, v) in samples(node, name).await {
            let key = (
                labels.get("bridge").cloned().unwrap_or_default(),
                labels.get(label).cloned().unwrap_or_default(),
            );
            *out.entry(key).or_insert(0) += v as u64;
        }
    }
    out.retain(|_, v| *v > 0);
    out
}

fn counts(expected: &[(&str, &str, u64)]) -> BTreeMap<(String, String), u64> {
    expected
        .iter()
        .map(|(b, l, n)| (((*b).to_owned(), (*l).to_owned()), *n))
        .collect()
}

/// The next message on `sub`, with a deadline.
async fn next_dead_letter(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a dead letter within the wait")
        .expect("the subscription is open")
}

fn header(msg: &async_nats::Message, name: &str) -> String {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_messages_are_counted_dead_lettered_and_skipped() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let (client, js) = nats_with_jobs_stream(&nats).await;
    // Processes: `/metrics` has one recorder per process.
    let c =
        TestCluster::start_process(3, &redis.url(), &bridge_toml(&nats.url(), true, None, true))
            .await;
    let prefix = c.prefix().to_owned();
    let mut mapping_dead = client
        .subscribe(format!("{prefix}.bridge.dead"))
        .await
        .expect("subscribe");
    let mut publish_dead = client
        .subscribe(format!("{prefix}.publish.dead"))
        .await
        .expect("subscribe");
    wait_bridges_ready(&nats, &js, &redis, &prefix, 1, true).await;
    let (mut ws, _) = c.node(0).connect_user("watcher").await;
    let rooms = [
        "stream:agent-1",
        "stream:job-5",
        "stream:project-3",
        "stream:pub-2",
    ];
    for room in rooms {
        ws.join(room).await;
    }

    let core = |subject: &str, payload: String| {
        let (client, subject) = (client.clone(), subject.to_owned());
        async move {
            client
                .publish(subject, payload.into())
                .await
                .expect("core publish")
        }
    };
    let stored = |subject: &str, payload: &str| {
        let (js, subject, payload) = (js.clone(), subject.to_owned(), payload.to_owned());
        async move {
            js.publish(subject, payload.into())
                .await
                .expect("JetStream publish")
                .await
                .expect("stored")
        }
    };
    let big = json!({"type": "x", "pad": "a".repeat(3000)}).to_string();
    core("agents.1.events", "not json".into()).await;
    core("agents.1.events", json!({"no_type": 1}).to_string()).await;
    core("agents.1.events", big).await;
    core("agents.a#b.events", json!({"type": "x"}).to_string()).await;
    stored("jobs.5.done", "garbage").await;
    stored("jobs.x#y.done", &json!({"n": 1}).to_string()).await;
    redis.cli(&["PUBLISH", "events:project:3", "not json"]);
    let publish_subject = format!("{prefix}.publish");
    stored(
        &publish_subject,
        &json!({"event": "e", "data": 1}).to_string(),
    )
    .await;

    // The next good message of each bridge still arrives, at offset 1.
    core("agents.1.events", json!({"type": "ok"}).to_string()).await;
    stored("jobs.5.done", &json!({"n": "ok"}).to_string()).await;
    redis.cli(&[
        "PUBLISH",
        "events:project:3",
        &json!({"type": "ok"}).to_string(),
    ]);
    let good = json!({"room": "stream:pub-2", "event": "ok", "data": {}}).to_string();
    stored(&publish_subject, &good).await;
    let mut seen = BTreeSet::new();
    while seen.len() < rooms.len() {
        let ev = ws.expect_type("event", WAIT).await;
        assert_eq!(
            offset_of(&ev),
            1,
            "only the good message is published: {ev}"
        );
        assert!(
            seen.insert(ev["room"].as_str().unwrap_or_default().to_owned()),
            "{ev}"
        );
    }

    let mut dead = Vec::new();
    for _ in 0..2 {
        let m = next_dead_letter(&mut mapping_dead).await;
        dead.push((
            header(&m, "Herald-Subject"),
            header(&m, "Herald-Reason"),
            m.payload,
        ));
    }
    dead.sort();
    assert_eq!(dead[0].0, "jobs.5.done", "{dead:?}");
    assert!(dead[0].1.contains("not JSON"), "{dead:?}");
    assert_eq!(&dead[0].2[..], b"garbage", "the original message: {dead:?}");
    assert_eq!(dead[1].0, "jobs.x#y.done", "{dead:?}");
    assert!(
        dead[1].1.contains("room"),
        "the refusal names the room: {dead:?}"
    );
    let m = next_dead_letter(&mut publish_dead).await;
    assert_eq!(header(&m, "Herald-Subject"), publish_subject);
    assert!(!header(&m, "Herald-Reason").is_empty(), "{m:?}");

    let invalid = counts(&[
        ("agents", "not_json", 1),
        ("agents", "template", 1),
        ("agents", "too_large", 1),
        ("agents", "refused", 1),
        ("jobs", "not_json", 1),
        ("jobs", "refused", 1),
        ("projects", "not_json", 1),
        ("nats_publish", "refused", 1),
    ]);
    let published = counts(&[
        ("agents", "published", 1),
        ("jobs", "published", 1),
        ("projects", "published", 1),
        ("nats_publish", "published", 1),
        ("agents", "invalid", 4),
        ("jobs", "invalid", 2),
        ("projects", "invalid", 1),
        ("nats_publish", "invalid", 1),
    ]);
    eventually("bridge metrics", WAIT, || async {
        let got = cluster_counts(&c, "herald_bridge_invalid_total", "reason").await;
        let outcomes = cluster_counts(&c, "herald_bridge_messages_total", "outcome").await;
        let dead = cluster_counts(&c, "herald_bridge_dead_letters_total", "").await;
        let dead: u64 = dead.values().sum();
        if got == invalid && outcomes == published && dead == 3 {
            Ok(())
        } else {
            Err(format!(
                "invalid {got:?}, outcomes {outcomes:?}, dead letters {dead}"
            ))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_node_takes_the_redis_channels_when_the_leader_dies() {
    let redis = RedisServer::start();
    let toml = r#"
[bridge]
redis_leader_ttl = "1s"

[[bridge.mappings]]
redis_channel = "events:project:*"
room = "stream:project-{1}"
event = "{body.type}"
"#;
    let c = TestCluster::start_process(3, &redis.url(), toml).await;
    let key = format!("{}:bridge:leader", c.prefix());
    let leader = eventually("a Redis bridge leader", WAIT, || async {
        let holder = redis.cli(&["GET", &key]).trim().to_owned();
        let numpat = redis.cli(&["PUBSUB", "NUMPAT"]).trim().to_owned();
        match (0..3).find(|&i| c.id(i) == holder) {
            Some(i) if numpat == "1" => Ok(i),
            _ => Err(format!("holder `{holder}`, NUMPAT {numpat}")),
        }
    })
    .await;
    let watcher = (leader + 1) % 3;
    let (mut ws, _) = c.node(watcher).connect_user("watcher").await;
    ws.join("stream:project-5").await;
    let publish = |n: u64| {
        redis.cli(&[
            "PUBLISH",
            "events:project:5",
            &json!({"type": "build", "n": n}).to_string(),
        ])
    };
    publish(0);
    let first = ws.expect_type("event", WAIT).await;
    assert_eq!((offset_of(&first), &first["data"]["n"]), (1, &json!(0)));

    c.kill(leader);
    // Publish until a survivor has taken the channel over; what is
    // published in the gap is lost (pub/sub is at most once).
    let mut n = 1;
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while events.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no survivor took the channel over"
        );
        publish(n);
        n += 1;
        if let Incoming::Json(v) = ws.recv(Duration::from_millis(200)).await {
            events.push(v);
        }
    }
    let holder = redis.cli(&["GET", &key]).trim().to_owned();
    assert!(
        holder != c.id(leader) && (0..3).any(|i| c.id(i) == holder),
        "the lock moved to a survivor: `{holder}`"
    );
    for k in n..n + 5 {
        publish(k);
    }
    let last = json!(n + 4);
    while events.last().map(|e| &e["data"]["n"]) != Some(&last) {
        events.push(ws.expect_type("event", WAIT).await);
    }
    // One node bridges: offsets run on from 2 with no duplicate, and the
    // messages keep their order.
    let offsets: Vec<u64> = events.iter().map(offset_of).collect();
    let expected: Vec<u64> = (2..2 + events.len() as u64).collect();
    assert_eq!(offsets, expected, "{events:?}");
    let ns: Vec<u64> = events
        .iter()
        .filter_map(|e| e["data"]["n"].as_u64())
        .collect();
    assert!(ns.windows(2).all(|w| w[0] < w[1]), "{ns:?}");
    assert!(ns.ends_with(&(n..n + 5).collect::<Vec<u64>>()), "{ns:?}");
    ws.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(
        redis.cli(&["PUBSUB", "NUMPAT"]).trim(),
        "1",
        "one subscriber"
    );
}
