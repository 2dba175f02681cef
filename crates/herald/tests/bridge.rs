//! Ingest bridges on a three-node cluster (Redis broker) reading a real
//! `nats-server` (core subjects, JetStream durables) and Redis pub/sub:
//! each message reaches its mapped room exactly once cluster-wide; bad
//! messages are counted, dead-lettered (JetStream) and skipped; the Redis
//! leader's death hands the channels to another node.

mod common;

use async_nats::jetstream;
use common::cluster::{eventually, offset_of, TestCluster};
use common::*;
use futures_util::StreamExt;
use herald_testkit::{NatsServer, RedisServer};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How many messages each bridge carries in the exactly-once test.
const N: u64 = 20;
const WAIT: Duration = Duration::from_secs(15);

/// The `[bridge]` section: a core subject, a JetStream durable and a Redis
/// channel mapping, and the `nats_publish` subject (core or JetStream).
fn bridge_toml(nats_url: &str, publish_jetstream: bool) -> String {
    format!(
        r#"
[bridge]
nats_url = "{nats_url}"
redis_leader_ttl = "1s"
max_message_bytes = 2048

[bridge.nats_publish]
enabled = true
jetstream = {publish_jetstream}

[[bridge.mappings]]
name = "agents"
nats_subject = "agents.*.events"
room = "stream:agent-{{1}}"
event = "{{body.type}}"

[[bridge.mappings]]
name = "jobs"
nats_subject = "jobs.*.done"
jetstream_stream = "JOBS"
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

/// A NATS client and JetStream context, with the `JOBS` stream the
/// durable mapping reads (a team's existing stream).
async fn nats_with_jobs_stream(nats: &NatsServer) -> (async_nats::Client, jetstream::Context) {
    let client = async_nats::connect(nats.url()).await.expect("connect to NATS");
    let js = jetstream::new(client.clone());
    js.create_stream(jetstream::stream::Config {
        name: "JOBS".into(),
        subjects: vec!["jobs.*.done".into()],
        ..Default::default()
    })
    .await
    .expect("create the JOBS stream");
    (client, js)
}

/// Subscriptions on `subject` the server holds (from `/subsz`).
fn nats_subscriptions(nats: &NatsServer, subject: &str) -> usize {
    let Some(body) = nats.monitor("/subsz?subs=1&limit=1000") else {
        return 0;
    };
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    v["subscriptions_list"]
        .as_array()
        .map(|subs| subs.iter().filter(|s| s["subject"] == subject).count())
        .unwrap_or(0)
}

/// Waits until every node is subscribed to the core subjects, the durable
/// consumers exist and one node holds the Redis pattern subscription:
/// core NATS and pub/sub keep nothing for a subscriber not there yet.
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
    let c = TestCluster::start(3, &redis.url(), &bridge_toml(&nats.url(), false)).await;
    wait_bridges_ready(&nats, &js, &redis, c.prefix(), 3, false).await;

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
            assert_eq!(ns, (0..N).collect(), "node {i}, room {room}: each message once");
        }
        assert_eq!(got["stream:agent-42"][0]["event"], "agent.step");
        assert_eq!(got["stream:job-7"][0]["event"], "job.done");
        assert_eq!(got["stream:project-9"][0]["event"], "build");
        assert_eq!(got["stream:pub-1"][0]["event"], "published");
    }
}
