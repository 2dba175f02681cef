//! Tracing (issue #18): the `publish`, `broker.publish` and `fanout` spans
//! reach an OTLP/HTTP receiver of the suite's own (tests/common/otlp.rs),
//! continue the publisher's `traceparent` on one node and across nodes
//! (Redis and NATS), continue an ingest entry's, follow the sampling rules,
//! and a collector that never answers slows neither publishing nor
//! shutdown.

mod common;
#[path = "common/otlp.rs"]
mod otlp;

use common::cluster::*;
use common::*;
use herald_testkit::{NatsServer, RedisServer};
use otlp::{OtlpReceiver, ReceivedSpan};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// OTLP span kinds.
const SERVER: i32 = 2;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

/// The `[telemetry]` section for a receiver at `endpoint`.
fn telemetry(endpoint: &str, ratio: f64) -> String {
    format!(
        "[telemetry]\notlp_endpoint = \"{endpoint}\"\nsample_ratio = {ratio}\n\
         export_interval = \"50ms\"\n"
    )
}

/// A fresh trace id and parent span id (hex), so tests never collide.
fn ids() -> (String, String) {
    let n = now_ms();
    let pid = std::process::id();
    (
        format!("{:016x}{:08x}{:08x}", n, pid, rand_u32()),
        format!("{:08x}{:08x}", pid, rand_u32()),
    )
}

fn rand_u32() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(1);
    N.fetch_add(1, Ordering::SeqCst).wrapping_mul(2_654_435_761) | 1
}

/// `POST /api/v1/publish` with an optional `traceparent` header.
async fn publish(node: &TestNode, room: &str, event: &str, traceparent: Option<&str>) -> Value {
    let headers: Vec<(&str, &str)> = traceparent
        .map(|tp| ("traceparent", tp))
        .into_iter()
        .collect();
    publish_with(node, room, event, &headers).await
}

/// `POST /api/v1/publish` with these extra headers.
async fn publish_with(node: &TestNode, room: &str, event: &str, headers: &[(&str, &str)]) -> Value {
    let mut req = reqwest::Client::new()
        .post(format!("{}/api/v1/publish", node.url()))
        .bearer_auth(ADMIN_KEY)
        .timeout(Duration::from_secs(10))
        .json(&json!({"room": room, "event": event, "data": {"n": 1}}));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await.expect("publish answered");
    assert_eq!(resp.status().as_u16(), 200, "publish {event}");
    resp.json().await.expect("JSON answer")
}

/// A sampled `traceparent` under a fresh trace: (header, trace id,
/// parent span id).
fn sampled() -> (String, String, String) {
    let (trace, parent) = ids();
    (format!("00-{trace}-{parent}-01"), trace, parent)
}

/// Publishes under a fresh sampled `traceparent`; returns its trace id
/// and parent span id.
async fn publish_traced(node: &TestNode, room: &str, event: &str) -> (String, String) {
    let (traceparent, trace, parent) = sampled();
    publish(node, room, event, Some(&traceparent)).await;
    (trace, parent)
}

fn named<'a>(name: &'a str, trace: &'a str) -> impl Fn(&ReceivedSpan) -> bool + 'a {
    move |s| s.name == name && s.trace_id == trace
}

#[tokio::test]
async fn one_node_continues_the_publishers_trace_through_broker_and_fanout() {
    let receiver = OtlpReceiver::start().await;
    let node = TestNode::start(&format!(
        "{NAMESPACES}\n[server]\nnode_id = \"solo\"\n{}",
        telemetry(&receiver.endpoint, 1.0)
    ))
    .await;
    let (mut a, _) = node.connect_user("a").await;
    let (mut b, _) = node.connect_user("b").await;
    a.join("chat:traced").await;
    b.join("chat:traced").await;

    let (traceparent, trace, parent) = sampled();
    let request_id = format!("req-{trace}");
    publish_with(
        &node,
        "chat:traced",
        "moved",
        &[("traceparent", &traceparent), ("x-request-id", &request_id)],
    )
    .await;
    for c in [&mut a, &mut b] {
        let ev = c.expect_type("event", FRAME_WAIT).await;
        assert_eq!(ev["event"], "moved");
    }

    let p = receiver.wait_for("publish", named("publish", &trace)).await;
    assert_eq!(p.parent_span_id, parent, "a child of the publisher's span");
    assert_eq!(p.kind, SERVER);
    assert_eq!(p.attr("herald.room"), "chat:traced");
    assert_eq!(p.attr("herald.event"), "moved");
    assert_eq!(p.attr("herald.source"), "http");
    assert_eq!(p.attr("herald.request_id"), request_id);
    assert_eq!(
        p.resource.get("service.name").map(String::as_str),
        Some("herald")
    );
    assert_eq!(
        p.resource.get("service.instance.id").map(String::as_str),
        Some("solo")
    );
    let hop = receiver
        .wait_for("broker.publish", named("broker.publish", &trace))
        .await;
    assert_eq!(hop.parent_span_id, p.span_id);
    assert_eq!(hop.kind, PRODUCER);
    assert_eq!(hop.attr("messaging.system"), "memory");
    assert_eq!(hop.attr("herald.offset"), "1");
    let fanout = receiver.wait_for("fanout", named("fanout", &trace)).await;
    assert_eq!(fanout.parent_span_id, hop.span_id);
    assert_eq!(fanout.kind, CONSUMER);
    assert_eq!(fanout.attr("herald.recipients"), "2", "{fanout:?}");
    assert_eq!(fanout.attr("herald.node_id"), "solo");
    assert_eq!(fanout.attr("herald.room"), "chat:traced");
    assert_eq!(fanout.attr("herald.event"), "moved");
    let bytes: u64 = fanout.attr("herald.bytes").parse().expect("bytes");
    assert!(bytes > 2 * "moved".len() as u64, "{fanout:?}");
    assert!(fanout.attributes.contains_key("herald.duration_us"));

    // No traceparent (and a malformed one) at ratio 1: new root traces.
    publish(&node, "chat:traced", "rooted", None).await;
    publish(&node, "chat:traced", "garbled", Some("00-not-a-trace-01")).await;
    for event in ["rooted", "garbled"] {
        let root = receiver
            .wait_for(event, |s| {
                s.name == "publish" && s.attr("herald.event") == event
            })
            .await;
        assert_eq!(root.parent_span_id, "", "{event} starts a trace");
        assert_ne!(root.trace_id, trace);
        receiver
            .wait_for("its fanout", named("fanout", &root.trace_id))
            .await;
    }
}

#[tokio::test]
async fn at_ratio_zero_only_a_sampled_traceparent_is_exported() {
    let receiver = OtlpReceiver::start().await;
    let node = TestNode::start(&format!(
        "{NAMESPACES}\n{}",
        telemetry(&receiver.endpoint, 0.0)
    ))
    .await;
    let (mut a, _) = node.connect_user("a").await;
    a.join("chat:ratio").await;
    let (unsampled_trace, parent) = ids();
    publish(&node, "chat:ratio", "quiet", None).await;
    publish(
        &node,
        "chat:ratio",
        "declined",
        Some(&format!("00-{unsampled_trace}-{parent}-00")),
    )
    .await;
    let (trace, _) = publish_traced(&node, "chat:ratio", "loud").await;
    assert_eq!(a.collect_type("event", 3, FRAME_WAIT).await.len(), 3);
    // The sampled publish arrives whole, which proves the exporter works
    // and that everything published before it was sent (or not) already.
    receiver.wait_for("publish", named("publish", &trace)).await;
    receiver.wait_for("fanout", named("fanout", &trace)).await;
    let stray: Vec<ReceivedSpan> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.trace_id != trace)
        .collect();
    assert!(
        stray.is_empty(),
        "unsampled publishes were exported: {stray:#?}"
    );
}

/// A client on node 2, a publish on node 1: node 2's fan-out continues
/// the publisher's trace under node 1's `broker.publish`.
async fn across_nodes(broker_url: &str, engine: &str) {
    let receiver = OtlpReceiver::start().await;
    let c = TestCluster::start(2, broker_url, &telemetry(&receiver.endpoint, 1.0)).await;
    let (mut far, _) = c.node(1).connect_user("far").await;
    far.join("chat:hop").await;
    let (trace, parent) = publish_traced(c.node(0), "chat:hop", "crossed").await;
    let ev = far.expect_type("event", FRAME_WAIT).await;
    assert_eq!(ev["event"], "crossed");

    let hop = receiver
        .wait_for("broker.publish", named("broker.publish", &trace))
        .await;
    assert_eq!(hop.attr("messaging.system"), engine);
    assert_eq!(
        hop.resource.get("service.instance.id").map(String::as_str),
        Some("n1")
    );
    let fanout = receiver
        .wait_for("node 2's fanout", |s| {
            s.name == "fanout"
                && s.trace_id == trace
                && s.resource.get("service.instance.id").map(String::as_str) == Some("n2")
        })
        .await;
    assert_eq!(fanout.parent_span_id, hop.span_id, "{fanout:?}");
    assert_eq!(fanout.attr("herald.recipients"), "1", "{fanout:?}");
    assert_eq!(fanout.attr("herald.node_id"), "n2");
    let p = receiver.wait_for("publish", named("publish", &trace)).await;
    assert_eq!(p.parent_span_id, parent);
}

#[tokio::test]
async fn redis_carries_the_trace_to_the_other_node() {
    let redis = RedisServer::start();
    across_nodes(&redis.url(), "redis").await;
}

#[tokio::test]
async fn nats_carries_the_trace_to_the_other_node() {
    let nats = NatsServer::start();
    across_nodes(&nats.url(), "nats").await;
}

#[tokio::test]
async fn a_redis_ingest_entry_continues_its_traceparent() {
    let redis = RedisServer::start();
    let receiver = OtlpReceiver::start().await;
    let c = TestCluster::start(1, &redis.url(), &telemetry(&receiver.endpoint, 0.0)).await;
    let (mut a, _) = c.node(0).connect_user("a").await;
    a.join("chat:ingested").await;
    let (trace, parent) = ids();
    let body = json!({"room": "chat:ingested", "event": "fed", "data": 1}).to_string();
    redis.cli(&[
        "XADD",
        &format!("{}:ingest", c.prefix()),
        "*",
        "payload",
        &body,
        "traceparent",
        &format!("00-{trace}-{parent}-01"),
    ]);
    let ev = a.expect_type("event", FRAME_WAIT).await;
    assert_eq!(ev["event"], "fed");
    let p = receiver.wait_for("publish", named("publish", &trace)).await;
    assert_eq!(p.parent_span_id, parent, "a child of the entry's span");
    assert_eq!(p.kind, CONSUMER);
    assert_eq!(p.attr("herald.source"), "ingest");
    let hop = receiver
        .wait_for("broker.publish", named("broker.publish", &trace))
        .await;
    let fanout = receiver.wait_for("fanout", named("fanout", &trace)).await;
    assert_eq!(fanout.parent_span_id, hop.span_id);
    assert_eq!(fanout.attr("herald.recipients"), "1");
}

#[tokio::test]
async fn a_collector_that_never_answers_slows_neither_publishing_nor_shutdown() {
    // Accepts connections and never answers: the worst collector, since
    // every export waits for its timeout.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", hole.local_addr().expect("addr"));
    // Told of each connection the exporter opens, that is, of an export
    // now waiting for its timeout.
    let (opened, mut exporting) = tokio::sync::mpsc::unbounded_channel();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            sockets.push(s);
            let _ = opened.send(());
        }
    });
    let mut node = TestNode::start_process(&format!(
        "{NAMESPACES}\n{}export_timeout = \"30s\"\nqueue_size = 4\n",
        telemetry(&endpoint, 1.0)
    ))
    .await;
    let (mut a, _) = node.connect_user("a").await;
    a.join("chat:dead").await;
    // One traced publish, and its export hangs: from then on the export
    // task is stuck, so the queue (4 spans) fills whatever the timing.
    publish(&node, "chat:dead", "first", None).await;
    tokio::time::timeout(Duration::from_secs(10), exporting.recv())
        .await
        .expect("the exporter never reached the collector");
    let published = tokio::time::timeout(Duration::from_secs(15), async {
        for i in 0..40 {
            publish(&node, "chat:dead", &format!("e{i}"), None).await;
        }
    })
    .await;
    assert!(published.is_ok(), "publishing stalled behind the collector");
    assert_eq!(a.collect_type("event", 41, FRAME_WAIT).await.len(), 41);
    eventually(
        "spans dropped and counted",
        Duration::from_secs(10),
        || async {
            match node.metric_sum("herald_trace_spans_dropped_total").await {
                Some(n) if n > 0.0 => Ok(n),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    a.close().await;
    let started = Instant::now();
    node.sigterm();
    let status = node.wait_exit_async(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "the node did not stop cleanly within 10 s of SIGTERM ({:?}); log:\n{}",
        started.elapsed(),
        node.log()
    );
    held.abort();
}
