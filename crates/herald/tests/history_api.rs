//! `GET /api/v1/rooms/{room}/history?since=&epoch=&limit=` (PROTOCOL.md 2
//! and 5, issue #3): order and frame fields, paging and its bound, epochs,
//! API keys, tenants, percent-encoded names and bad input.

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::Arc;

const HIST: &str = r#"
[namespaces.hist]
join = "any"
history_size = 2000
history_ttl = "1h"

[namespaces.flat]
join = "any"
"#;

fn events(h: &Value) -> &Vec<Value> {
    h["events"]
        .as_array()
        .unwrap_or_else(|| panic!("history has an events array: {h}"))
}

fn offsets(h: &Value) -> Vec<u64> {
    events(h)
        .iter()
        .map(|e| {
            e["offset"]
                .as_u64()
                .unwrap_or_else(|| panic!("offset: {e}"))
        })
        .collect()
}

async fn history(node: &TestNode, room: &str, query: &str) -> Value {
    let path = format!("/api/v1/rooms/{}/history{query}", enc(room));
    let (s, h) = node.api("GET", &path, Some(ADMIN_KEY), None).await;
    assert_eq!(s, 200, "GET {path}: {h}");
    h
}

fn assert_error(status: u16, body: &Value, want_status: u16, code: &str, what: &str) {
    assert_eq!(status, want_status, "{what}: {body}");
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: error message: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_returns_events_in_order_with_the_frame_fields() {
    let node = TestNode::start(HIST).await;
    let (mut c, _) = node.connect_user("alice").await;
    c.join("hist:1").await;
    for i in 1..=5 {
        node.publish("hist:1", &format!("e.{i}"), json!({"i": i, "s": "x"}))
            .await;
    }
    let live = c.collect_type("event", 5, FRAME_WAIT).await;

    let h = history(&node, "hist:1", "").await;
    assert_eq!(h["room"], "hist:1", "{h}");
    assert_eq!(h["offset"], 5, "{h}");
    assert_eq!(h["epoch"], live[0]["epoch"], "{h}");
    assert_eq!(h["complete"], true, "{h}");
    assert_eq!(offsets(&h), vec![1, 2, 3, 4, 5]);
    for (stored, frame) in events(&h).iter().zip(live.iter()) {
        for field in [
            "type", "room", "event", "data", "epoch", "offset", "ts", "event_id",
        ] {
            assert!(
                stored.get(field).is_some(),
                "history event lacks `{field}`: {stored}"
            );
        }
        assert_eq!(
            stored, frame,
            "a stored event equals the live frame of the WebSocket"
        );
    }

    // `since` returns what follows it.
    let h = history(&node, "hist:1", "?since=3").await;
    assert_eq!(offsets(&h), vec![4, 5]);
    assert_eq!(h["complete"], true, "{h}");
    let h = history(&node, "hist:1", "?since=5").await;
    assert!(events(&h).is_empty(), "{h}");
    assert_eq!(h["offset"], 5, "{h}");
    // With the right epoch the same.
    let epoch = live[0]["epoch"].as_str().expect("epoch");
    let h = history(&node, "hist:1", &format!("?since=1&epoch={epoch}&limit=2")).await;
    assert_eq!(offsets(&h), vec![2, 3]);
    assert_eq!(h["complete"], false, "more follows offset 3: {h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_bounds_the_page_and_is_clamped_to_1000() {
    let node = Arc::new(TestNode::start(HIST).await);
    const N: u64 = 1100;
    let mut tasks = Vec::new();
    for p in 0..4u64 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = p;
            while i < N {
                node.publish("hist:big", "e", json!({"i": i})).await;
                i += 4;
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    let h = history(&node, "hist:big", "?limit=7").await;
    assert_eq!(offsets(&h), (1..=7).collect::<Vec<_>>());
    assert_eq!(h["offset"], N, "{h}");
    assert_eq!(h["complete"], false, "{h}");

    let h = history(&node, "hist:big", "?limit=5000").await;
    assert_eq!(events(&h).len(), 1000, "limit above 1000 is clamped");
    assert_eq!(offsets(&h), (1..=1000).collect::<Vec<_>>());
    assert_eq!(h["complete"], false, "{}", h["complete"]);

    let h = history(&node, "hist:big", "?since=1000&limit=5000").await;
    assert_eq!(offsets(&h), (1001..=N).collect::<Vec<_>>());
    assert_eq!(h["complete"], true, "{}", h["complete"]);

    // Without a limit the page is bounded too (the server's default).
    let h = history(&node, "hist:big", "").await;
    let n = events(&h).len();
    assert!((1..=1000).contains(&n), "default page of {n} events");
    assert_eq!(offsets(&h), (1..=n as u64).collect::<Vec<_>>());

    // limit=0 is a bad request, not "unbounded" and not silently 1.
    let (status, body) = node
        .api(
            "GET",
            "/api/v1/rooms/hist%3Abig/history?limit=0",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_error(status, &body, 400, "bad_request", "limit=0");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`limit`")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_epoch_gives_no_events_and_is_not_complete() {
    let node = TestNode::start(HIST).await;
    let a = node.publish("hist:2", "e", json!(1)).await;
    node.publish("hist:2", "e", json!(2)).await;
    let epoch = a["epoch"].as_str().expect("epoch");
    let wrong = if epoch == "0000000000000000" {
        "1111111111111111"
    } else {
        "0000000000000000"
    };
    let h = history(&node, "hist:2", &format!("?since=0&epoch={wrong}")).await;
    assert!(events(&h).is_empty(), "wrong epoch: {h}");
    assert_eq!(h["complete"], false, "wrong epoch is not complete: {h}");
    assert_eq!(h["epoch"], epoch, "the current epoch is reported: {h}");
    assert_eq!(h["offset"], 2, "{h}");

    let h = history(&node, "hist:2", &format!("?since=0&epoch={epoch}")).await;
    assert_eq!(offsets(&h), vec![1, 2]);
    assert_eq!(h["complete"], true, "{h}");

    // A room without history still reports its position.
    node.publish("flat:1", "e", json!(1)).await;
    let h = history(&node, "flat:1", "").await;
    assert!(events(&h).is_empty(), "history_size 0 stores nothing: {h}");
    assert_eq!(h["offset"], 1, "{h}");
    // A since that lies ahead of the stream is not complete.
    let h = history(&node, "hist:2", "?since=50").await;
    assert!(events(&h).is_empty(), "{h}");
    assert_eq!(h["complete"], false, "since in the future: {h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_needs_an_admin_key() {
    let node = TestNode::start(HIST).await;
    node.publish("hist:3", "e", json!(1)).await;
    let path = "/api/v1/rooms/hist%3A3/history";
    let (s, b) = node.api("GET", path, None, None).await;
    assert_error(s, &b, 401, "unauthorized", "no key");
    let (s, b) = node
        .api("GET", path, Some("not-a-key-0000000000000"), None)
        .await;
    assert_error(s, &b, 401, "unauthorized", "unknown key");
    let (s, b) = node.api("GET", path, Some(PUBLISH_KEY), None).await;
    assert_error(s, &b, 403, "forbidden", "publish-only key");
    assert!(b.get("events").is_none(), "no events leak on 403: {b}");
    let (s, _) = node.api("GET", path, Some(ADMIN_KEY), None).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_tenant_scoped() {
    let node = TestNode::start(HIST).await;
    node.publish_body(
        json!({"room": "hist:t", "event": "e", "data": {"who": "acme"}, "tenant": "acme"}),
    )
    .await;
    node.publish_body(
        json!({"room": "hist:t", "event": "e", "data": {"who": "acme2"}, "tenant": "acme"}),
    )
    .await;
    node.publish("hist:t", "e", json!({"who": "default"})).await;

    let h = history(&node, "hist:t", "?tenant=acme").await;
    assert_eq!(offsets(&h), vec![1, 2], "{h}");
    assert!(
        events(&h).iter().all(|e| e["data"]["who"] != "default"),
        "{h}"
    );
    let h = history(&node, "hist:t", "").await;
    assert_eq!(offsets(&h), vec![1], "{h}");
    assert_eq!(events(&h)[0]["data"]["who"], "default", "{h}");
    let h = history(&node, "hist:t", "?tenant=other").await;
    assert!(events(&h).is_empty(), "another tenant sees nothing: {h}");
    assert_eq!(h["offset"], 0, "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_encoded_room_names_and_bad_input() {
    let node = TestNode::start(HIST).await;
    let room = "hist:a/b@c=d.e-f_g:h";
    node.publish(room, "e", json!({"odd": true})).await;
    let h = history(&node, room, "").await;
    assert_eq!(h["room"], room, "{h}");
    assert_eq!(offsets(&h), vec![1], "{h}");
    assert_eq!(events(&h)[0]["room"], room, "{h}");

    let base = "/api/v1/rooms/hist%3A1/history";
    for q in [
        "?since=abc",
        "?since=-1",
        "?since=1.5",
        "?limit=abc",
        "?limit=-3",
    ] {
        let (s, b) = node
            .api("GET", &format!("{base}{q}"), Some(ADMIN_KEY), None)
            .await;
        assert_error(s, &b, 400, "bad_request", q);
    }
    for bad_room in ["bad%20room", "hist%3A%23x", &"a".repeat(300)] {
        let (s, b) = node
            .api(
                "GET",
                &format!("/api/v1/rooms/{bad_room}/history"),
                Some(ADMIN_KEY),
                None,
            )
            .await;
        assert_error(s, &b, 400, "bad_request", bad_room);
    }
    // The node is fine afterwards.
    let (s, _) = node.get("/health").await;
    assert_eq!(s, 200);
}
