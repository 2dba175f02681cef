//! The metrics operators ask for (issue #18 item 4), read from a real
//! node's `GET /metrics`: publishes and deliveries by namespace and event
//! with the `other` fold, broker command latency and errors on Redis and
//! NATS, the sampled send-queue gauges, and connections per transport.

mod common;

use common::sse::open_ok;
use common::*;
use herald_testkit::{NatsServer, RedisServer};
use serde_json::json;
use std::time::{Duration, Instant};

/// The value of the sample of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let (set, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(k, v)| set.split(',').any(|p| p == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

/// Waits (bounded) until the node reaches its broker.
async fn wait_ready(node: &TestNode) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.get("/ready").await.0 != 200 {
        assert!(Instant::now() < deadline, "the node never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `/metrics` until `done` holds (bounded); returns the last text.
async fn metrics_until(node: &TestNode, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, text) = node.get("/metrics").await;
        assert_eq!(status, 200);
        if done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_counted_by_namespace_and_event_with_the_cap() {
    let node = TestNode::start_process("[metrics]\nmax_event_names = 2\n").await;
    let (mut c, _) = node.connect_user("alice").await;
    c.ping_ok().await;
    for event in ["a", "b", "c", "d", "a"] {
        node.publish("user:alice", event, json!(1)).await;
        c.expect_type("event", FRAME_WAIT).await;
    }
    // A namespace nobody configured is labelled `other`; `a` was admitted.
    node.publish("secret:1", "a", json!(1)).await;
    let published = "herald_events_published_total";
    let delivered = "herald_events_delivered_total";
    let text = metrics_until(&node, "the deliveries", |t| {
        sample(t, delivered, &[("namespace", "user"), ("event", "other")]) == Some(2.0)
    })
    .await;
    let at = |name, ns, ev| sample(&text, name, &[("namespace", ns), ("event", ev)]);
    assert_eq!(at(published, "user", "a"), Some(2.0));
    assert_eq!(at(published, "user", "b"), Some(1.0));
    assert_eq!(at(published, "user", "other"), Some(2.0), "c and d fold");
    assert_eq!(at(published, "user", "c"), None, "past the cap");
    assert_eq!(at(published, "other", "a"), Some(1.0));
    assert_eq!(at(delivered, "user", "a"), Some(2.0), "one recipient each");
    assert_eq!(at(delivered, "user", "b"), Some(1.0));
    assert_eq!(at(delivered, "other", "a"), None, "nobody in secret:1");
    // The total the new counters break down is still there.
    assert_eq!(sample(&text, "herald_publish_total", &[]), Some(6.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_cap_counts_every_event_as_other() {
    let node = TestNode::start_process("[metrics]\nmax_event_names = 0\n").await;
    node.publish("user:bob", "anything", json!(1)).await;
    let text = metrics_until(&node, "the publish", |t| {
        t.contains("herald_events_published_total{")
    })
    .await;
    let labels = [("namespace", "user"), ("event", "other")];
    assert_eq!(
        sample(&text, "herald_events_published_total", &labels),
        Some(1.0)
    );
    assert!(!text.contains("event=\"anything\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cap_is_refused_naming_the_key() {
    let (code, _out, err) = run_herald(
        &["config", "check"],
        &[("HERALD_METRICS__MAX_EVENT_NAMES", "20000")],
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("metrics.max_event_names"), "{err}");
}

fn command_count(text: &str, engine: &str, command: &str) -> f64 {
    sample(
        text,
        "herald_broker_command_duration_seconds_count",
        &[("engine", engine), ("command", command)],
    )
    .unwrap_or(0.0)
}

fn command_errors(text: &str, engine: &str, command: &str) -> f64 {
    sample(
        text,
        "herald_broker_command_errors_total",
        &[("engine", engine), ("command", command)],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_commands_are_timed_and_their_errors_counted() {
    let mut redis = RedisServer::start();
    let node = TestNode::start_process(&format!(
        "[broker]\nkind = \"redis\"\nredis_url = \"{}\"\nprefix = \"mops-{}\"\ncommand_timeout = \"500ms\"\n",
        redis.url(),
        std::process::id()
    ))
    .await;
    wait_ready(&node).await;
    node.publish("user:carol", "m", json!(1)).await;
    let text = metrics_until(&node, "a timed redis publish", |t| {
        command_count(t, "redis", "publish") >= 1.0
    })
    .await;
    assert_eq!(
        command_errors(&text, "redis", "publish"),
        0.0,
        "registered at zero"
    );
    assert!(text.contains("herald_broker_command_duration_seconds_bucket{engine=\"redis\",command=\"publish\",le=\"0.0001\"}"), "latency buckets from 100 µs");
    redis.kill();
    // The node answers 503 while Redis is gone; each refusal is an error
    // of the publish command.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = node
            .api(
                "POST",
                "/api/v1/publish",
                Some(ADMIN_KEY),
                Some(json!({"room": "user:carol", "event": "m", "data": 2})),
            )
            .await;
        if status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "publish kept answering {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    metrics_until(&node, "a counted redis publish error", |t| {
        command_errors(t, "redis", "publish") >= 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_commands_are_timed() {
    let nats = NatsServer::start();
    let node = TestNode::start_process(&format!(
        "[broker]\nkind = \"nats\"\nnats_url = \"{}\"\nprefix = \"mops{}\"\n",
        nats.url(),
        std::process::id()
    ))
    .await;
    wait_ready(&node).await;
    node.publish("user:dave", "m", json!(1)).await;
    let text = metrics_until(&node, "a timed nats publish", |t| {
        command_count(t, "nats", "publish") >= 1.0 && command_count(t, "nats", "position") >= 1.0
    })
    .await;
    assert_eq!(command_errors(&text, "nats", "publish"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_queue_gauges_show_a_stalled_reader() {
    const EVENTS: usize = 12;
    const PAD: usize = 700_000;
    // The queue may hold everything: the reader is slow, not to be cut.
    let node = TestNode::start_process("[limits]\nsend_queue_bytes = 67108864\n").await;
    let mut ws = RawWs::connect_small_window(
        &node.addr(),
        &format!("/ws?token={}", node.user_token("stalled")),
        4096,
    )
    .await;
    let first = ws.next_json(FRAME_WAIT).await.expect("authenticated");
    assert_eq!(first["type"], "authenticated", "{first}");
    // More than the kernel's buffers hold (see ws_framing.rs), unread.
    let pad = "p".repeat(PAD);
    for i in 0..EVENTS {
        node.publish("global", "big", json!({"i": i, "pad": pad}))
            .await;
    }
    let text = metrics_until(&node, "a queue on the gauges", |t| {
        sample(t, "herald_send_queue_bytes", &[]).unwrap_or(0.0) >= PAD as f64
    })
    .await;
    let depth = sample(&text, "herald_send_queue_max_depth", &[]).unwrap_or(0.0);
    assert!((1.0..=EVENTS as f64).contains(&depth), "max depth {depth}");
    let queued: f64 = ["1-9", "10-99"]
        .iter()
        .filter_map(|d| {
            sample(
                &text,
                "herald_send_queue_depth_connections",
                &[("depth", d)],
            )
        })
        .sum();
    assert_eq!(queued, 1.0, "the one stalled connection:\n{text}");
    // Reading it all empties the queue, and the gauges follow.
    let mut seen = 0;
    while seen < EVENTS {
        let v = ws.next_json(Duration::from_secs(30)).await.expect("event");
        if v["type"] == "event" {
            seen += 1;
        }
    }
    metrics_until(&node, "the queue drained", |t| {
        sample(t, "herald_send_queue_bytes", &[]) == Some(0.0)
            && sample(t, "herald_send_queue_depth_connections", &[("depth", "0")]) == Some(1.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_counted_per_transport_and_after_closes() {
    // SSE notices a gone client at its next write: ping often.
    let node = TestNode::start_process(
        "[limits]\nheartbeat_interval = \"500ms\"\nstale_timeout = \"5s\"\n",
    )
    .await;
    let by = |t: &str, transport: &str| {
        sample(
            t,
            "herald_connections_by_transport",
            &[("transport", transport)],
        )
    };
    let (mut ws, _) = node.connect_user("u1").await;
    ws.ping_ok().await;
    let mut sse = open_ok(&node, &format!("?token={}", node.user_token("u2")), &[]).await;
    assert_eq!(sse.next_msg(FRAME_WAIT).await.event, "authenticated");
    let mut sio = RawWs::connect(&node.addr(), "/socket.io/?EIO=4&transport=websocket").await;
    let open = sio.next_frame(FRAME_WAIT).await.expect("Engine.IO open");
    assert!(open.payload.starts_with(b"0"), "open packet");
    let connect = format!(r#"40{{"token":"{}"}}"#, node.user_token("u3"));
    sio.send_frame(1, connect.as_bytes())
        .await
        .expect("CONNECT");
    let answer = sio.next_frame(FRAME_WAIT).await.expect("CONNECT answer");
    assert!(
        answer.payload.starts_with(b"40"),
        "{:?}",
        String::from_utf8_lossy(&answer.payload)
    );
    metrics_until(&node, "one connection per transport", |t| {
        by(t, "websocket") == Some(1.0)
            && by(t, "sse") == Some(1.0)
            && by(t, "socketio") == Some(1.0)
    })
    .await;
    ws.close().await;
    drop(sse);
    drop(sio);
    metrics_until(&node, "every transport back to 0", |t| {
        by(t, "websocket") == Some(0.0)
            && by(t, "sse") == Some(0.0)
            && by(t, "socketio") == Some(0.0)
            && sample(t, "herald_connections", &[]) == Some(0.0)
    })
    .await;
}
