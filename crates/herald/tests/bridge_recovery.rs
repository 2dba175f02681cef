//! Ingest bridges riding out failures on a single node: nats-server
//! restarted (with and without its store) and a broker outage under a
//! JetStream message. The nodes run the memory or Redis engine: bridges do
//! not depend on `broker.kind`.

mod bridge_common;
mod common;

use async_nats::jetstream;
use bridge_common::{nats_subscriptions, nats_with_jobs_stream, samples, WAIT};
use common::cluster::{eventually, offset_of};
use common::*;
use herald_testkit::{NatsServer, RedisServer};
use serde_json::json;
use std::collections::BTreeMap;

/// Waits until the node answers 200 on `/ready` (its broker reachable).
async fn ready(node: &TestNode) {
    eventually("/ready 200", WAIT, || async {
        match node.get("/ready").await {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_memory_node_bridges_and_carries_on_after_nats_restarts() {
    let mut nats = NatsServer::start();
    let (client, js) = nats_with_jobs_stream(&nats).await;
    // No `[broker]`: the memory engine; bridges do not depend on it.
    let toml = format!(
        r#"{}
[bridge]
nats_url = "{}"

[[bridge.mappings]]
name = "agents"
nats_subject = "agents.*.events"
room = "stream:agent-{{1}}"
event = "step"

[[bridge.mappings]]
name = "jobs"
nats_subject = "jobs.*.done"
jetstream_stream = "JOBS"
durable = "single-node"
room = "stream:job-{{1}}"
event = "job.done"
"#,
        common::cluster::NAMESPACES,
        nats.url()
    );
    let node = TestNode::start(&toml).await;
    let ready = |nats: &NatsServer, js: &jetstream::Context| {
        let (subs, js) = (nats_subscriptions(nats, "agents.*.events"), js.clone());
        async move {
            let durable = match js.get_stream("JOBS").await {
                Ok(s) => s.consumer_info("single-node").await.is_ok(),
                Err(_) => false,
            };
            if subs == 1 && durable {
                Ok(())
            } else {
                Err(format!("subscriptions {subs}, durable {durable}"))
            }
        }
    };
    eventually("bridge subscribed", WAIT, || ready(&nats, &js)).await;
    let (mut ws, _) = node.connect_user("watcher").await;
    ws.join("stream:agent-1").await;
    ws.join("stream:job-1").await;

    for round in 1..=2u64 {
        let payload = json!({"round": round}).to_string();
        client
            .publish("agents.1.events", payload.clone().into())
            .await
            .expect("core publish");
        js.publish("jobs.1.done", payload.into())
            .await
            .expect("JetStream publish")
            .await
            .expect("stored");
        let mut got = BTreeMap::new();
        while got.len() < 2 {
            let ev = ws.expect_type("event", WAIT).await;
            assert_eq!(ev["data"]["round"], round, "{ev}");
            got.insert(
                ev["room"].as_str().unwrap_or_default().to_owned(),
                offset_of(&ev),
            );
        }
        assert!(got.values().all(|&o| o == round), "{got:?}");
        if round == 1 {
            // The store is kept: the stream and the durable survive.
            nats.restart();
            eventually("bridge subscribed again", WAIT, || ready(&nats, &js)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_publish_stream_is_made_again_after_nats_loses_its_store() {
    let mut nats = NatsServer::start();
    let toml = format!(
        r#"{}
[bridge]
nats_url = "{}"

[bridge.nats_publish]
enabled = true
jetstream = true
"#,
        common::cluster::NAMESPACES,
        nats.url()
    );
    let node = TestNode::start(&toml).await;
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let ready = |js: jetstream::Context| async move {
        match js.get_stream("herald-publish").await {
            Ok(s) => s
                .consumer_info("herald-bridge")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    eventually("publish stream and durable", WAIT, || ready(js.clone())).await;
    let (mut ws, _) = node.connect_user("watcher").await;
    ws.join("stream:pub-1").await;
    for round in 1..=2u64 {
        // Both rounds are the stream's sequence 1: the idempotency key must
        // tell the new stream's first message from the old one's.
        let body = json!({"room": "stream:pub-1", "event": "e", "data": {"round": round}});
        js.publish("herald.publish", body.to_string().into())
            .await
            .expect("JetStream publish")
            .await
            .expect("stored");
        let ev = ws.expect_type("event", WAIT).await;
        assert_eq!(
            (offset_of(&ev), &ev["data"]["round"]),
            (round, &json!(round))
        );
        if round == 1 {
            // Every stream and durable is gone; the bridge makes its own
            // stream and durable again.
            nats.restart_empty();
            eventually("publish stream made again", WAIT, || ready(js.clone())).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_jetstream_message_waits_out_a_broker_outage_and_is_published_once() {
    jetstream_outage(false).await;
}

/// Ordered: the message is held (retried in place, kept "in progress")
/// rather than given back, so the room's later messages stay behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ordered_jetstream_message_is_held_through_a_broker_outage_and_published_once() {
    jetstream_outage(true).await;
}

async fn jetstream_outage(ordered: bool) {
    let nats = NatsServer::start();
    let mut redis = RedisServer::start();
    let (_client, js) = nats_with_jobs_stream(&nats).await;
    let toml = format!(
        r#"{}
[broker]
kind = "redis"
redis_url = "{}"
prefix = "{}"

[bridge]
nats_url = "{}"
command_timeout = "500ms"

[[bridge.mappings]]
name = "jobs"
nats_subject = "jobs.*.done"
jetstream_stream = "JOBS"
durable = "outage"
ordered = {ordered}
room = "stream:job-{{1}}"
event = "job.done"
"#,
        common::cluster::NAMESPACES,
        redis.url(),
        common::cluster::unique_prefix("bridge"),
        nats.url()
    );
    let node = TestNode::start(&toml).await;
    let durable = |js: jetstream::Context| async move {
        js.get_stream("JOBS")
            .await
            .map_err(|e| e.to_string())?
            .consumer_info("outage")
            .await
            .map_err(|e| e.to_string())
    };
    eventually("durable made", WAIT, || durable(js.clone())).await;
    ready(&node).await;
    let (mut ws, _) = node.connect_user("watcher").await;
    ws.join("stream:job-1").await;

    redis.kill();
    js.publish("jobs.1.done", json!({"n": 1}).to_string().into())
        .await
        .expect("JetStream publish")
        .await
        .expect("stored");
    let first_seen = parking_lot::Mutex::new(None::<std::time::Instant>);
    // Answered `unavailable`: unordered, nak'ed and delivered again;
    // ordered, retried in place (held in progress, not delivered again).
    // Not acknowledged either way.
    eventually("the message delivered again", WAIT, || async {
        let info = durable(js.clone()).await?;
        let held = if ordered {
            // Delivered, and still held after more than two ack waits
            // (1 s each with command_timeout = 500ms).
            let mut seen = first_seen.lock();
            if info.num_ack_pending == 1 && seen.is_none() {
                *seen = Some(std::time::Instant::now());
            }
            info.num_ack_pending == 1
                && info.num_redelivered == 0
                && seen.is_some_and(|t| t.elapsed() > std::time::Duration::from_millis(2_500))
        } else {
            info.num_redelivered >= 1
        };
        if held && info.ack_floor.stream_sequence == 0 {
            Ok(())
        } else {
            Err(format!(
                "delivered {:?}, acked {:?}, ack pending {}, pending {}, redelivered {}, waiting {}",
                info.delivered,
                info.ack_floor,
                info.num_ack_pending,
                info.num_pending,
                info.num_redelivered,
                info.num_waiting
            ) + &format!("; node log: {}", node.log()))
        }
    })
    .await;
    redis.restart();
    let ev = ws.expect_type("event", WAIT).await;
    assert_eq!(
        (&ev["room"], &ev["data"]),
        (&json!("stream:job-1"), &json!({"n": 1}))
    );
    eventually("acknowledged", WAIT, || async {
        let info = durable(js.clone()).await?;
        if info.ack_floor.stream_sequence == 1 && info.num_ack_pending == 0 {
            Ok(())
        } else {
            Err(format!("{info:?}"))
        }
    })
    .await;
    node.publish("stream:job-1", "sentinel", json!({})).await;
    let next = ws.expect_type("event", WAIT).await;
    assert_eq!(next["event"], "sentinel", "published once: {next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_core_message_is_dropped_and_counted_after_retry_for_and_the_next_one_arrives() {
    let nats = NatsServer::start();
    let mut redis = RedisServer::start();
    let toml = format!(
        r#"{}
[broker]
kind = "redis"
redis_url = "{}"
prefix = "{}"
command_timeout = "200ms"

[bridge]
nats_url = "{}"
retry_for = "500ms"

[[bridge.mappings]]
name = "agents"
nats_subject = "agents.*.events"
room = "stream:agent-{{1}}"
event = "step"
"#,
        common::cluster::NAMESPACES,
        redis.url(),
        common::cluster::unique_prefix("bridge"),
        nats.url()
    );
    // A process: `/metrics` has one recorder per process.
    let node = TestNode::start_process(&toml).await;
    ready(&node).await;
    eventually("bridge subscribed", WAIT, || async {
        match nats_subscriptions(&nats, "agents.*.events") {
            1 => Ok(()),
            n => Err(format!("{n} subscriptions")),
        }
    })
    .await;
    let client = async_nats::connect(nats.url()).await.expect("connect");
    redis.kill();
    client
        .publish("agents.1.events", json!({"n": 1}).to_string().into())
        .await
        .expect("core publish");
    client.flush().await.expect("flush");
    // Core NATS keeps nothing: after `retry_for` the message is given up.
    eventually("the message dropped", WAIT, || async {
        let outcomes = samples(&node, "herald_bridge_messages_total").await;
        let dropped: f64 = outcomes
            .iter()
            .filter(|(l, _)| l.get("outcome").map(String::as_str) == Some("dropped"))
            .map(|(_, v)| v)
            .sum();
        let retries: f64 = samples(&node, "herald_bridge_retries_total")
            .await
            .iter()
            .map(|(_, v)| v)
            .sum();
        if dropped == 1.0 && retries >= 1.0 {
            Ok(())
        } else {
            Err(format!(
                "dropped {dropped}, retries {retries}: {outcomes:?}; log: {}",
                node.log()
            ))
        }
    })
    .await;
    redis.restart();
    ready(&node).await;
    let (mut ws, _) = node.connect_user("watcher").await;
    ws.join("stream:agent-1").await;
    client
        .publish("agents.1.events", json!({"n": 2}).to_string().into())
        .await
        .expect("core publish");
    let ev = ws.expect_type("event", WAIT).await;
    assert_eq!((offset_of(&ev), &ev["data"]), (1, &json!({"n": 2})), "{ev}");
}
