//! Webhooks on a node alone, against the real test backend process
//! (tests/backend/backend.py): every event type with its documented
//! fields, signatures, a receiver failing for a while, the `events` filter
//! and `max_age` (docs/protocol.md "Webhooks").

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Longest wait for webhook events to arrive.
const EVENTS_WAIT: Duration = Duration::from_secs(15);

fn config(backend: &Backend, extra: &str) -> String {
    format!(
        r#"
[namespaces.chat]
join = "any"
send = "any"

[webhooks]
url = "{url}"
secret = "{secret}"
timeout = "2s"
{extra}
"#,
        url = backend.url("/webhooks"),
        secret = Backend::SECRET,
    )
}

/// Waits until `done` holds for the events received so far; returns them.
async fn events_until(
    backend: &Backend,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + EVENTS_WAIT;
    loop {
        let events = backend.webhook_events().await;
        if done(&events) {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; received: {}",
            serde_json::to_string_pretty(&events).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn of_type<'a>(events: &'a [Value], ty: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == ty).collect()
}

fn has(events: &[Value], ty: &str, key: &str, value: &str) -> bool {
    events.iter().any(|e| e["type"] == ty && e[key] == value)
}

/// The `member.*` / `room.*` events of `room`, as `type` or `type:user`.
fn room_story(events: &[Value], room: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["room"] == room && e["type"] != "message.sent")
        .map(|e| match e["user_id"].as_str() {
            Some(user) => format!("{}:{user}", e["type"].as_str().unwrap_or("?")),
            None => e["type"].as_str().unwrap_or("?").to_owned(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_arrives_signed_with_its_fields() {
    let backend = Backend::start().await;
    let node = TestNode::start(&config(&backend, "")).await;
    let (mut alice, auth) = node.connect_user("alice").await;
    let connection_id = auth["connection_id"]
        .as_str()
        .expect("connection_id")
        .to_owned();
    let node_id = auth["node_id"].as_str().expect("node_id").to_owned();
    alice.join("chat:1").await;
    let ack = alice
        .request(json!({"type": "send_message", "room": "chat:1", "event": "msg", "data": {"text": "hi"}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let left = alice
        .request(json!({"type": "leave_room", "room": "chat:1"}))
        .await;
    assert_eq!(left["type"], "room_left", "{left}");
    alice.close_handshake(1000, "bye").await;

    let events = events_until(&backend, "user.offline of alice", |e| {
        has(e, "user.offline", "user_id", "alice")
    })
    .await;

    // Every event: signed, a unique id, its type, a time.
    let mut ids = HashSet::new();
    for e in &events {
        assert_eq!(e["_signature_ok"], true, "bad signature on {e}");
        assert!(
            ids.insert(e["id"].as_str().expect("id").to_owned()),
            "duplicate id {e}"
        );
        assert!(e["time_ms"].as_u64().is_some_and(|t| t > 0), "{e}");
        assert_eq!(e["tenant"], Value::Null, "default tenant is null: {e}");
    }
    let kinds: HashSet<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    for kind in [
        "connection.opened",
        "connection.closed",
        "user.online",
        "user.offline",
        "room.occupied",
        "room.vacated",
        "member.joined",
        "member.left",
        "message.sent",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {events:?}");
    }

    let opened = of_type(&events, "connection.opened");
    assert_eq!(opened.len(), 1, "{opened:?}");
    let opened = opened[0];
    assert_eq!(opened["id"], format!("{connection_id}.opened"));
    assert_eq!(opened["user_id"], "alice");
    assert_eq!(opened["connection_id"], connection_id.as_str());
    assert_eq!(opened["node_id"], node_id.as_str());
    assert_eq!(opened["transport"], "websocket");

    let closed = of_type(&events, "connection.closed")[0];
    assert_eq!(closed["id"], format!("{connection_id}.closed"));
    assert_eq!(closed["user_id"], "alice");
    assert_eq!(closed["transport"], "websocket");
    assert_eq!(closed["code"], 1000, "{closed}");
    assert_eq!(closed["reason"], "client_closed", "{closed}");

    for ty in ["user.online", "user.offline"] {
        let e = of_type(&events, ty);
        assert_eq!(e.len(), 1, "{ty}: {e:?}");
        assert_eq!(e[0]["user_id"], "alice");
    }

    let sent = of_type(&events, "message.sent");
    assert_eq!(sent.len(), 1, "{sent:?}");
    let sent = sent[0];
    assert_eq!(sent["room"], "chat:1");
    assert_eq!(sent["event"], "msg");
    assert_eq!(sent["user_id"], "alice");
    assert_eq!(sent["connection_id"], connection_id.as_str());
    assert_eq!(sent["epoch"], ack["epoch"]);
    assert_eq!(sent["offset"], ack["offset"]);
    assert_eq!(sent["data"], json!({"text": "hi"}));

    let joined = of_type(&events, "member.joined")
        .into_iter()
        .find(|e| e["room"] == "chat:1")
        .expect("member.joined chat:1");
    assert_eq!(joined["user_id"], "alice");
    assert_eq!(joined["connection_id"], connection_id.as_str());
    assert_eq!(joined["node_id"], node_id.as_str());

    // The auto-joined rooms and chat:1, each in the order of its life.
    assert_eq!(
        room_story(&events, "chat:1"),
        [
            "room.occupied",
            "member.joined:alice",
            "member.left:alice",
            "room.vacated"
        ]
    );
    for room in ["global", "user:alice"] {
        assert_eq!(
            room_story(&events, room),
            [
                "room.occupied",
                "member.joined:alice",
                "member.left:alice",
                "room.vacated"
            ],
            "{room}"
        );
    }
    // The connection opens before it joins and closes after it left.
    let position = |pred: &dyn Fn(&Value) -> bool| events.iter().position(pred).expect("present");
    let opened_at = position(&|e| e["type"] == "connection.opened");
    let first_join = position(&|e| e["type"] == "member.joined");
    let closed_at = position(&|e| e["type"] == "connection.closed");
    let offline_at = position(&|e| e["type"] == "user.offline");
    assert!(
        opened_at < first_join && closed_at < offline_at,
        "{events:?}"
    );
    let posts = backend.webhook_posts().await;
    assert!(posts.iter().all(|p| p["signature_ok"] == true), "{posts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_for_a_while_gets_every_event_in_order_per_room() {
    let backend = Backend::start().await;
    // Failing (500) until the churn is over and a POST was refused; kept
    // short so the retry backoff (0.5 s doubling, full jitter) stays small.
    backend
        .configure(json!({"webhooks": {"mode": "fail"}}))
        .await;
    let node = TestNode::start(&config(&backend, "batch_size = 7")).await;
    // Three users come and go through two rooms while the receiver fails.
    let mut expected_joins = 0;
    for round in 0..3 {
        let mut clients = Vec::new();
        for user in ["u1", "u2", "u3"] {
            let (mut c, _) = node.connect_user(user).await;
            c.join("chat:a").await;
            if round % 2 == 0 {
                c.join("chat:b").await;
                expected_joins += 1;
            }
            expected_joins += 3; // chat:a, global, user:<id>
            clients.push(c);
        }
        for c in clients {
            c.close_handshake(1000, "bye").await;
        }
    }
    let deadline = Instant::now() + EVENTS_WAIT;
    while !backend
        .webhook_posts()
        .await
        .iter()
        .any(|p| p["status"] == 500)
    {
        assert!(
            Instant::now() < deadline,
            "no POST reached the failing receiver"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        backend.webhook_events().await.is_empty(),
        "nothing accepted while failing"
    );
    backend.configure(json!({"webhooks": {"mode": "ok"}})).await;
    let events = events_until(&backend, "every member.left after recovery", |e| {
        of_type(e, "member.left").len() >= expected_joins && of_type(e, "user.offline").len() >= 9
    })
    .await;
    let posts = backend.webhook_posts().await;
    assert!(
        posts.iter().any(|p| p["status"] == 500),
        "the receiver failed at first: {posts:?}"
    );
    assert!(
        posts.iter().all(|p| p["count"].as_u64() <= Some(7)),
        "batch_size: {posts:?}"
    );
    // Nothing lost, nothing twice.
    assert_eq!(of_type(&events, "member.joined").len(), expected_joins);
    assert_eq!(of_type(&events, "member.left").len(), expected_joins);
    assert_eq!(of_type(&events, "connection.opened").len(), 9);
    assert_eq!(of_type(&events, "connection.closed").len(), 9);
    assert_eq!(of_type(&events, "user.online").len(), 9);
    let ids: HashSet<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), events.len(), "every event once");
    // Per room: occupied, then members joining and leaving (each
    // connection's join before its leave), vacated when empty.
    for room in ["chat:a", "chat:b", "global"] {
        let story: Vec<&Value> = events.iter().filter(|e| e["room"] == room).collect();
        let mut members: HashMap<&str, bool> = HashMap::new();
        let mut occupied = false;
        for e in &story {
            let conn = e["connection_id"].as_str().unwrap_or("");
            match e["type"].as_str() {
                Some("room.occupied") => {
                    assert!(!occupied, "{room}: occupied twice: {story:?}");
                    occupied = true;
                }
                Some("room.vacated") => {
                    assert!(
                        occupied && members.is_empty(),
                        "{room}: vacated while occupied by {members:?}"
                    );
                    occupied = false;
                }
                Some("member.joined") => {
                    assert!(occupied, "{room}: joined an unoccupied room: {story:?}");
                    assert!(members.insert(conn, true).is_none(), "{room}: joined twice");
                }
                Some("member.left") => {
                    assert!(
                        members.remove(conn).is_some(),
                        "{room}: left before joining: {story:?}"
                    );
                }
                other => panic!("{room}: unexpected {other:?}"),
            }
        }
        assert!(
            !occupied && members.is_empty(),
            "{room} ends vacated: {story:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_setting_filters_what_is_sent() {
    let backend = Backend::start().await;
    let node = TestNode::start(&config(
        &backend,
        r#"events = ["user.online", "user.offline"]"#,
    ))
    .await;
    let (mut c, _) = node.connect_user("bob").await;
    c.join("chat:1").await;
    c.close_handshake(1000, "bye").await;
    let events = events_until(&backend, "user.offline of bob", |e| {
        has(e, "user.offline", "user_id", "bob")
    })
    .await;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(kinds, ["user.online", "user.offline"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_older_than_max_age_are_dropped_and_counted() {
    let backend = Backend::start().await;
    backend
        .configure(json!({"webhooks": {"mode": "fail"}}))
        .await;
    // A process: /metrics has one recorder per process.
    let node = TestNode::start_process(&config(
        &backend,
        r#"max_age = "1s"
events = ["user.online", "user.offline"]"#,
    ))
    .await;
    let (c, _) = node.connect_user("carol").await;
    c.close().await;
    let deadline = Instant::now() + EVENTS_WAIT;
    loop {
        let dropped = node
            .metric_sum("herald_webhook_events_dropped_total")
            .await
            .unwrap_or(0.0);
        if dropped >= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "carol's events were not dropped: {dropped}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        node.log().contains("webhooks.max_age"),
        "the drop is logged"
    );
    // The receiver recovers: later events arrive, the dropped ones never.
    backend.configure(json!({"webhooks": {"mode": "ok"}})).await;
    let (d, _) = node.connect_user("dave").await;
    d.close().await;
    let events = events_until(&backend, "dave's user.offline", |e| {
        has(e, "user.offline", "user_id", "dave")
    })
    .await;
    assert!(
        events.iter().all(|e| e["user_id"] == "dave"),
        "only dave's events: {events:?}"
    );
    let sent = node
        .metric_sum("herald_webhook_events_sent_total")
        .await
        .unwrap_or(0.0);
    assert!(sent >= 2.0, "sent counted: {sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_named_and_sse_streams_report_their_transport() {
    let backend = Backend::start().await;
    let node = TestNode::start(&config(&backend, "")).await;
    let token = node.token(
        "erin",
        &[],
        Some("acme"),
        json!({}),
        Duration::from_secs(600),
    );
    let auth = format!("Bearer {token}");
    let stream = common::sse::open_sse(&node, "?rooms=chat:7", &[("Authorization", auth.as_str())])
        .await
        .unwrap_or_else(|(status, body)| panic!("SSE open: {status} {body}"));
    let events = events_until(&backend, "erin's member.joined chat:7", |e| {
        e.iter()
            .any(|x| x["type"] == "member.joined" && x["room"] == "chat:7")
    })
    .await;
    drop(stream);
    let opened = of_type(&events, "connection.opened");
    assert_eq!(opened.len(), 1, "{events:?}");
    assert_eq!(opened[0]["transport"], "sse");
    assert_eq!(opened[0]["tenant"], "acme");
    let joined = events
        .iter()
        .find(|x| x["type"] == "member.joined" && x["room"] == "chat:7")
        .expect("joined");
    assert_eq!(
        joined["tenant"], "acme",
        "the room is named without its tenant: {joined}"
    );
    let events = events_until(&backend, "erin's connection.closed", |e| {
        has(e, "connection.closed", "user_id", "erin")
    })
    .await;
    let closed = of_type(&events, "connection.closed")[0];
    assert_eq!(closed["transport"], "sse");
    assert_eq!(closed["tenant"], "acme");
}
