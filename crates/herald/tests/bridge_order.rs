//! Ordered bridges (the default) keep a producer's order per room on a
//! three-node cluster: one node at a time reads each bridge (a leader
//! lock), publishing rooms side by side and each room in the order
//! received. Killing the leader hands the bridge to a survivor; through
//! JetStream nothing is lost. `ordered = false` (part 1's queue group /
//! shared durable) is covered by `bridge.rs`'s unordered case.

mod bridge_common;
mod common;

use async_nats::jetstream;
use bridge_common::{nats_subscriptions, nats_with_jobs_stream, WAIT};
use common::cluster::{eventually, offset_of, TestCluster};
use common::*;
use herald_testkit::{NatsServer, RedisServer};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Events per room.
const N: u64 = 40;
/// Rooms per bridge.
const ROOMS: u64 = 3;

fn order_toml(nats_url: &str) -> String {
    format!(
        r#"
[bridge]
nats_url = "{nats_url}"
redis_leader_ttl = "1s"
nats_leader_ttl = "1s"
command_timeout = "500ms"

[bridge.nats_publish]
enabled = true

[[bridge.mappings]]
name = "agents"
nats_subject = "agents.*.events"
room = "stream:agent-{{1}}"
event = "step"

[[bridge.mappings]]
name = "jobs"
nats_subject = "jobs.*.done"
jetstream_stream = "JOBS"
room = "stream:job-{{1}}"
event = "step"

[[bridge.mappings]]
name = "projects"
redis_channel = "events:project:*"
room = "stream:project-{{1}}"
event = "step"
"#
    )
}

/// Which node (index) holds the leader lock of NATS bridge `bridge`.
async fn nats_leader(
    c: &TestCluster,
    js: &jetstream::Context,
    bridge: &str,
) -> Result<usize, String> {
    let kv = js
        .get_key_value(format!("{}-bridge-leaders", c.prefix()))
        .await
        .map_err(|e| e.to_string())?;
    let holder = kv
        .get(bridge)
        .await
        .map_err(|e| e.to_string())?
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default();
    (0..c.nodes().len())
        .find(|&i| c.id(i) == holder)
        .ok_or(format!("holder `{holder}`"))
}

/// Waits for one core subscriber per ordered subject, the JetStream
/// durable and the Redis pattern subscription.
async fn wait_ready(
    c: &TestCluster,
    nats: &NatsServer,
    js: &jetstream::Context,
    redis: &RedisServer,
) {
    let publish_subject = format!("{}.publish", c.prefix());
    eventually("ordered bridges subscribed", WAIT, || async {
        let agents = nats_subscriptions(nats, "agents.*.events");
        let publish = nats_subscriptions(nats, &publish_subject);
        let numpat = redis.cli(&["PUBSUB", "NUMPAT"]).trim().to_owned();
        let durable = match js.get_stream("JOBS").await {
            Ok(s) => s
                .consumer_info(format!("{}-bridge-jobs", c.prefix()))
                .await
                .is_ok(),
            Err(_) => false,
        };
        let leaders = nats_leader(c, js, "jobs").await.is_ok();
        if (agents, publish, numpat.as_str(), durable, leaders) == (1, 1, "1", true, true) {
            Ok(())
        } else {
            Err(format!(
                "agents {agents}, publish {publish}, NUMPAT {numpat}, durable {durable}, jobs leader {leaders}"
            ))
        }
    })
    .await;
}

/// Reads events until every room in `rooms` has `n` of them (or the wait
/// ends), then a short silence: nothing more may come.
async fn collect(ws: &mut WsClient, rooms: &[String], n: u64) -> BTreeMap<String, Vec<Value>> {
    let mut got: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    while rooms
        .iter()
        .any(|r| (got.get(r).map_or(0, Vec::len) as u64) < n)
    {
        let ev = ws.expect_type("event", WAIT).await;
        let room = ev["room"].as_str().unwrap_or_default().to_owned();
        got.entry(room).or_default().push(ev);
    }
    ws.expect_silence(Duration::from_millis(300)).await;
    got
}

/// Each room's events are seq 1..n at offsets 1..n: every event once, in
/// the producer's order.
fn assert_in_order(got: &BTreeMap<String, Vec<Value>>, rooms: &[String], n: u64, who: &str) {
    for room in rooms {
        let evs = got.get(room).cloned().unwrap_or_default();
        let pairs: Vec<(u64, u64)> = evs
            .iter()
            .map(|e| (offset_of(e), e["data"]["seq"].as_u64().unwrap_or(0)))
            .collect();
        let expected: Vec<(u64, u64)> = (1..=n).map(|i| (i, i)).collect();
        assert_eq!(pairs, expected, "{who}, room {room}: (offset, seq)");
    }
}

/// Runs `script` (one command a line) through one `redis-cli`, in order.
fn redis_pipe(redis: &RedisServer, script: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("redis-cli")
        .args(["-u", &redis.url()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-cli");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write to redis-cli");
    assert!(child.wait().expect("redis-cli ran").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_bridge_keeps_the_producers_order_per_room() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let (client, js) = nats_with_jobs_stream(&nats).await;
    let c = TestCluster::start(3, &redis.url(), &order_toml(&nats.url())).await;
    wait_ready(&c, &nats, &js, &redis).await;

    let mut rooms = Vec::new();
    for r in 1..=ROOMS {
        for kind in ["agent", "job", "project", "pub"] {
            rooms.push(format!("stream:{kind}-{r}"));
        }
    }
    let mut clients = Vec::new();
    for node in c.nodes() {
        let (mut ws, _) = node.connect_user("watcher").await;
        for room in &rooms {
            ws.join(room).await;
        }
        clients.push(ws);
    }

    // One producer per bridge, interleaving the rooms, as fast as it can.
    let publish_subject = format!("{}.publish", c.prefix());
    let mut acks = Vec::new();
    for seq in 1..=N {
        for r in 1..=ROOMS {
            let data = json!({"seq": seq}).to_string();
            client
                .publish(format!("agents.{r}.events"), data.clone().into())
                .await
                .expect("core publish");
            acks.push(
                js.publish(format!("jobs.{r}.done"), data.clone().into())
                    .await
                    .expect("JetStream publish"),
            );
            let body =
                json!({"room": format!("stream:pub-{r}"), "event": "step", "data": {"seq": seq}});
            client
                .publish(publish_subject.clone(), body.to_string().into())
                .await
                .expect("core publish");
        }
    }
    // Redis in one pipeline per room round, in order.
    let mut script = String::new();
    for seq in 1..=N {
        for r in 1..=ROOMS {
            script.push_str(&format!(
                "PUBLISH events:project:{r} '{}'\n",
                json!({"seq": seq})
            ));
        }
    }
    redis_pipe(&redis, &script);
    client.flush().await.expect("flush");
    for ack in acks {
        ack.await.expect("stored");
    }

    for (i, ws) in clients.iter_mut().enumerate() {
        let got = collect(ws, &rooms, N).await;
        assert_in_order(&got, &rooms, N, &format!("node {i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_hands_the_bridge_over_and_jetstream_loses_nothing() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let (client, js) = nats_with_jobs_stream(&nats).await;
    let c = TestCluster::start_process(3, &redis.url(), &order_toml(&nats.url())).await;
    wait_ready(&c, &nats, &js, &redis).await;
    let (jobs_leader, agents_leader) = eventually("leaders", WAIT, || async {
        Ok::<_, String>((
            nats_leader(&c, &js, "jobs").await?,
            nats_leader(&c, &js, "agents").await?,
        ))
    })
    .await;
    let killed = [jobs_leader, agents_leader];
    let watcher = (0..3).find(|i| !killed.contains(i)).unwrap_or(0);
    let (mut ws, _) = c.node(watcher).connect_user("watcher").await;
    let job_rooms: Vec<String> = (1..=2).map(|r| format!("stream:job-{r}")).collect();
    for room in &job_rooms {
        ws.join(room).await;
    }
    ws.join("stream:agent-1").await;

    // A steady producer; the leaders die a third of the way through.
    let total = 150u64;
    for seq in 1..=total {
        for room in 1..=2 {
            js.publish(
                format!("jobs.{room}.done"),
                json!({"seq": seq}).to_string().into(),
            )
            .await
            .expect("JetStream publish")
            .await
            .expect("stored");
        }
        client
            .publish("agents.1.events", json!({"seq": seq}).to_string().into())
            .await
            .expect("core publish");
        if seq == total / 3 {
            c.kill(jobs_leader);
            if agents_leader != jobs_leader {
                c.kill(agents_leader);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Core NATS: publish until the survivor's subscription takes them.
    let mut next = total + 1;
    let mut got: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let deadline = std::time::Instant::now() + WAIT;
    let done = |got: &BTreeMap<String, Vec<Value>>, last_core: u64| {
        job_rooms
            .iter()
            .all(|r| got.get(r).map_or(0, Vec::len) as u64 >= total)
            && got
                .get("stream:agent-1")
                .and_then(|v| v.last())
                .is_some_and(|e| e["data"]["seq"].as_u64() == Some(last_core))
    };
    while !done(&got, next - 1) {
        assert!(
            std::time::Instant::now() < deadline,
            "not handed over: {:?}",
            got.iter().map(|(r, v)| (r, v.len())).collect::<Vec<_>>()
        );
        if let Incoming::Json(ev) = ws.recv(Duration::from_millis(100)).await {
            if ev["type"] == "event" {
                let room = ev["room"].as_str().unwrap_or_default().to_owned();
                got.entry(room).or_default().push(ev);
                continue;
            }
        }
        client
            .publish("agents.1.events", json!({"seq": next}).to_string().into())
            .await
            .expect("core publish");
        next += 1;
    }
    ws.expect_silence(Duration::from_millis(300)).await;
    // JetStream: every seq once, in order.
    assert_in_order(&got, &job_rooms, total, "JetStream after the kill");
    // Core: what came is in order, once (gap-free offsets, rising seq);
    // what was published in the failover gap may be lost.
    let core = &got["stream:agent-1"];
    let offsets: Vec<u64> = core.iter().map(offset_of).collect();
    assert_eq!(offsets, (1..=core.len() as u64).collect::<Vec<_>>());
    let seqs: Vec<u64> = core
        .iter()
        .filter_map(|e| e["data"]["seq"].as_u64())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let holder = nats_leader(&c, &js, "jobs").await.expect("a new leader");
    assert!(!killed.contains(&holder), "the lock moved to a survivor");
}
