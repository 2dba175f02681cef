//! What one client can make a node hold (issue #12, group B): event
//! patterns per connection, history bytes per room and per node, and the
//! streams rooms leave behind.

mod common;

use common::cluster::{epoch_of, join_since};
use common::sse::{open_ok, read_opening};
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// The `chat` namespace of herald.example.toml, with small budgets.
const CHAT: &str = r#"
[limits]
messages_per_second = 1000
burst = 1000
history_room_bytes = 20000
history_total_bytes = 100000

[namespaces.chat]
join = "any"
send = "any"
history_size = 50
history_ttl = "10m"
"#;

async fn broker_stats(node: &TestNode) -> Value {
    let (s, b) = node
        .api("GET", "/api/v1/stats", Some(ADMIN_KEY), None)
        .await;
    assert_eq!(s, 200, "{b}");
    b["broker"].clone()
}

fn stat(broker: &Value, key: &str) -> u64 {
    broker[key]
        .as_u64()
        .unwrap_or_else(|| panic!("broker.{key} in {broker}"))
}

/// `herald_history_trimmed_events_total{reason="<reason>"}` from `/metrics`.
async fn trimmed(node: &TestNode, reason: &str) -> f64 {
    let (_, text) = node.get("/metrics").await;
    let label = format!("reason=\"{reason}\"");
    text.lines()
        .filter(|l| l.starts_with("herald_history_trimmed_events_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_past_max_event_patterns_is_refused_and_changes_nothing() {
    let node = TestNode::start("").await;
    let (mut c, _) = node.connect_user("alice").await;
    let patterns: Vec<String> = (0..64).map(|i| format!("p{i}")).collect();
    let reply = c
        .request(json!({"type": "subscribe", "events": patterns}))
        .await;
    assert_eq!(reply["type"], "ack", "64 patterns fit: {reply}");
    // Held patterns are not counted twice.
    let reply = c
        .request(json!({"type": "subscribe", "events": ["p0", "p1"]}))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let refused = c
        .request_error(
            json!({"type": "subscribe", "events": ["p64"]}),
            "limit_exceeded",
        )
        .await;
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_event_patterns") && m.contains("64")),
        "the error names the limit: {refused}"
    );
    // The refused pattern was not added; the others still match.
    node.publish("user:alice", "p64", json!(1)).await;
    node.publish("user:alice", "p63", json!(2)).await;
    let event = c.expect_type("event", FRAME_WAIT).await;
    assert_eq!(event["event"], "p63", "{event}");
    // Room again after an unsubscribe.
    let reply = c
        .request(json!({"type": "unsubscribe", "events": ["p0"]}))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let reply = c
        .request(json!({"type": "subscribe", "events": ["p64"]}))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
}

/// SSE counts distinct patterns, as `subscribe` does: 65 copies of one
/// pattern are one pattern, while 11 distinct ones are over a cap of 10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_event_patterns_are_counted_once_each() {
    let node = TestNode::start("[limits]\nmax_event_patterns = 10\n").await;
    let token = node.user_token("sse-patterns");
    let repeated = vec!["p"; 65].join(",");
    let mut s = open_ok(&node, &format!("?events={repeated}&token={token}"), &[]).await;
    s.expect_event("authenticated", FRAME_WAIT).await;
    let distinct: Vec<String> = (0..11).map(|i| format!("p{i}")).collect();
    let query = format!("?events={}&token={token}", distinct.join(","));
    match common::sse::open_sse(&node, &query, &[]).await {
        Err((status, body)) => {
            assert_eq!(status, 400, "{body}");
            assert_eq!(body["error"]["code"], "limit_exceeded", "{body}");
        }
        Ok(_) => panic!("11 distinct patterns were accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_flood_stays_within_the_byte_budgets() {
    let node = TestNode::start_process(CHAT).await;
    let (mut c, _) = node.connect_user("mallory").await;
    let blob = "x".repeat(5000);
    let rooms: Vec<String> = (0..10).map(|i| format!("chat:flood{i}")).collect();
    let mut first = None;
    for room in &rooms {
        let joined = c.join(room).await;
        first.get_or_insert_with(|| epoch_of(&joined));
        for _ in 0..10 {
            let reply = c
                .request(json!({"type": "send_message", "room": room, "event": "m", "data": blob}))
                .await;
            assert_eq!(reply["type"], "ack", "{reply}");
        }
    }
    // 100 events of 5 kB were sent: 500 kB against a 100 kB node budget.
    let broker = broker_stats(&node).await;
    let bytes = stat(&broker, "history_bytes");
    assert!(bytes > 0, "{broker}");
    assert!(bytes <= 100_000, "history past the node budget: {broker}");
    assert!(trimmed(&node, "room_bytes").await > 0.0);
    assert!(trimmed(&node, "total_bytes").await > 0.0);
    let gauge = node.metric_sum("herald_history_bytes").await;
    assert!(gauge.is_some_and(|g| g <= 100_000.0), "{gauge:?}");
    // The first room lost its events to the budgets: resuming from its
    // start is not a recovery.
    let epoch = first.unwrap_or_default();
    let (mut late, _) = node.connect_user("bob").await;
    let reply = join_since(&mut late, &rooms[0], &epoch, 0).await;
    assert_eq!(reply["recovered"], false, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_joined_left_or_read_leave_no_streams_behind() {
    let node = TestNode::start(CHAT).await;
    let (mut c, _) = node.connect_user("walker").await;
    let before = stat(&broker_stats(&node).await, "streams");
    for i in 0..50 {
        let room = format!("chat:walk{i}");
        c.join(&room).await;
        let reply = c.request(json!({"type": "leave_room", "room": room})).await;
        assert_eq!(reply["type"], "room_left", "{reply}");
        let path = format!("/api/v1/rooms/{}/history", enc(&format!("chat:read{i}")));
        let (s, h) = node.api("GET", &path, Some(ADMIN_KEY), None).await;
        assert_eq!(s, 200, "{h}");
    }
    // SSE streams join their rooms the same way; closing one leaves them.
    let token = node.user_token("walker");
    for i in 0..10 {
        let rooms: Vec<String> = (0..5).map(|j| format!("chat:sse{i}-{j}")).collect();
        let query = format!("?token={token}&rooms={}", rooms.join(","));
        let mut s = open_ok(&node, &query, &[]).await;
        // The five rooms and the auto-joined `user:walker` and `global`.
        read_opening(&mut s, 7).await;
        let open = stat(&broker_stats(&node).await, "streams");
        assert!(open >= before + 5, "the stream's rooms are live: {open}");
        drop(s);
    }
    // Leaving is handled after the ack on some paths, and a closed SSE
    // stream is noticed a moment later: wait for it.
    let deadline = Instant::now() + FRAME_WAIT;
    loop {
        let broker = broker_stats(&node).await;
        if stat(&broker, "streams") <= before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "streams left behind (before: {before}): {broker}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
