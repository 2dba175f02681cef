//! The HTTP API's publishing side: keys and scopes, publish and broadcast,
//! idempotency, exclude_connection, bad input and tenant isolation of
//! events (PROTOCOL.md 2, 4 and 5). The admin endpoints (disconnect,
//! connections, presence, stats, tokens) are tested in `api_admin.rs`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);

fn assert_error_body(status: u16, body: &Value, want_status: u16, want_code: &str, what: &str) {
    assert_eq!(status, want_status, "{what}: status {status}, body {body}");
    assert_eq!(
        body["error"]["code"], want_code,
        "{what}: error body {{\"error\":{{code,message}}}}: {body}"
    );
    assert!(
        body["error"]["message"].is_string(),
        "{what}: error.message: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_no_key_or_wrong_key_401_missing_scope_403() {
    let node = TestNode::start("").await;
    let pub_body = json!({"room": "global", "event": "e", "data": 1});
    let (s, b) = node
        .api("POST", "/api/v1/publish", None, Some(pub_body.clone()))
        .await;
    assert_error_body(s, &b, 401, "unauthorized", "publish without key");
    let (s, b) = node
        .api(
            "POST",
            "/api/v1/publish",
            Some("wrong-key"),
            Some(pub_body.clone()),
        )
        .await;
    assert_error_body(s, &b, 401, "unauthorized", "publish with wrong key");
    let (s, b) = node
        .api(
            "POST",
            "/api/v1/publish",
            Some("test-admin-key-000000000"),
            Some(pub_body.clone()),
        )
        .await;
    assert_error_body(s, &b, 401, "unauthorized", "publish with a prefix of a key");
    let (s, _) = node
        .api(
            "POST",
            "/api/v1/publish",
            Some(PUBLISH_KEY),
            Some(pub_body.clone()),
        )
        .await;
    assert_eq!(s, 200, "publish scope may publish");
    let (s, _) = node
        .api(
            "POST",
            "/api/v1/broadcast",
            Some(PUBLISH_KEY),
            Some(json!({"rooms": ["global"], "event": "e", "data": 1})),
        )
        .await;
    assert_eq!(s, 200, "publish scope may broadcast");
    let admin_calls: Vec<(&str, &str, Option<Value>)> = vec![
        ("GET", "/api/v1/stats", None),
        ("GET", "/api/v1/users/alice/connections", None),
        ("POST", "/api/v1/users/alice/disconnect", Some(json!({}))),
        ("GET", "/api/v1/rooms/global/presence", None),
        ("POST", "/api/v1/tokens", Some(json!({"sub": "x"}))),
    ];
    for (m, p, body) in admin_calls {
        let (s, b) = node.api(m, p, Some(PUBLISH_KEY), body.clone()).await;
        assert_error_body(
            s,
            &b,
            403,
            "forbidden",
            &format!("{m} {p} with publish key"),
        );
        let (s, b) = node.api(m, p, None, body).await;
        assert_error_body(s, &b, 401, "unauthorized", &format!("{m} {p} without key"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_broadcast_answer_positions_and_deliver() {
    let node = TestNode::start("").await;
    let t = node.token("alice", &[], None, json!({"projects": [1, 2]}), HOUR);
    let (mut c, _) = node.connect_token(&t).await;
    c.join("project:1").await;
    c.join("project:2").await;
    let a = node.publish("project:1", "e", json!("a")).await;
    assert_eq!(a["room"], "project:1", "{a}");
    assert_eq!(a["offset"], 1, "{a}");
    assert!(a["epoch"].is_string(), "{a}");
    let (s, b) = node
        .api(
            "POST",
            "/api/v1/broadcast",
            Some(ADMIN_KEY),
            Some(json!({"rooms": ["project:1", "project:2"], "event": "b", "data": {"k": 1}})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let results = b["results"]
        .as_array()
        .unwrap_or_else(|| panic!("results: {b}"));
    assert_eq!(results.len(), 2, "{b}");
    let r1 = results
        .iter()
        .find(|r| r["room"] == "project:1")
        .expect("project:1 result");
    let r2 = results
        .iter()
        .find(|r| r["room"] == "project:2")
        .expect("project:2 result");
    assert_eq!(r1["offset"], 2, "{b}");
    assert_eq!(r2["offset"], 1, "{b}");
    assert!(r1["epoch"].is_string() && r2["epoch"].is_string(), "{b}");
    let evs = c.collect_type("event", 3, FRAME_WAIT).await;
    let mut seen: Vec<(String, u64)> = evs
        .iter()
        .map(|e| {
            (
                e["room"].as_str().unwrap_or("").to_owned(),
                e["offset"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("project:1".into(), 1),
            ("project:1".into(), 2),
            ("project:2".into(), 1)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_idempotency_key_answers_first_result_and_delivers_once() {
    let node = TestNode::start("").await;
    let (mut c, _) = node.connect_user("alice").await;
    let body = json!({"room": "user:alice", "event": "once", "data": 1, "idempotency_key": "k-1"});
    let first = node.publish_body(body.clone()).await;
    let second = node.publish_body(body.clone()).await;
    assert_eq!(
        first["offset"], second["offset"],
        "same answer: {first} vs {second}"
    );
    assert_eq!(first["epoch"], second["epoch"]);
    let other = node
        .publish_body(
            json!({"room": "user:alice", "event": "twice", "data": 2, "idempotency_key": "k-2"}),
        )
        .await;
    assert_eq!(other["offset"], 2, "a new key publishes: {other}");
    let evs = c.collect_type("event", 2, FRAME_WAIT).await;
    assert_eq!(evs[0]["event"], "once");
    assert_eq!(evs[1]["event"], "twice", "the repeat was not delivered");
    c.expect_nothing_queued().await;
    // Keys are per tenant: the same key in another tenant publishes.
    let t = node
        .publish_body(json!({"room": "user:alice", "event": "t", "data": 3, "idempotency_key": "k-1", "tenant": "acme"}))
        .await;
    assert_eq!(
        t["offset"], 1,
        "tenant acme's user:alice is a fresh room: {t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclude_connection_skips_only_that_connection() {
    let node = TestNode::start("").await;
    let (mut c1, a1) = node.connect_user("alice").await;
    let (mut c2, _) = node.connect_user("alice").await;
    node.publish_body(json!({"room": "user:alice", "event": "x", "data": 1, "exclude_connection": a1["connection_id"]}))
        .await;
    let e = c2.expect_type("event", FRAME_WAIT).await;
    assert_eq!(e["event"], "x");
    node.publish("user:alice", "y", json!(2)).await;
    let e = c1.expect_type("event", FRAME_WAIT).await;
    assert_eq!(e["event"], "y", "the excluded connection skipped x: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_api_input_gets_400_bad_request() {
    let node = TestNode::start("").await;
    let long = "r".repeat(10 * 1024);
    for (path, body) in [
        ("/api/v1/publish", "{".to_owned()),
        ("/api/v1/publish", "not json".to_owned()),
        ("/api/v1/publish", "[]".to_owned()),
        ("/api/v1/publish", r#"{"event":"e","data":1}"#.to_owned()),
        (
            "/api/v1/publish",
            r#"{"room":5,"event":"e","data":1}"#.to_owned(),
        ),
        (
            "/api/v1/publish",
            r#"{"room":"bad room","event":"e","data":1}"#.to_owned(),
        ),
        (
            "/api/v1/publish",
            r#"{"room":"","event":"e","data":1}"#.to_owned(),
        ),
        (
            "/api/v1/publish",
            format!(r#"{{"room":"{long}","event":"e","data":1}}"#),
        ),
        (
            "/api/v1/broadcast",
            r#"{"rooms":"global","event":"e","data":1}"#.to_owned(),
        ),
        (
            "/api/v1/broadcast",
            r#"{"rooms":["ok","bad room"],"event":"e","data":1}"#.to_owned(),
        ),
        ("/api/v1/tokens", r#"{"roles":["x"]}"#.to_owned()),
        (
            "/api/v1/tokens",
            r#"{"sub":"x","ttl":"forever"}"#.to_owned(),
        ),
    ] {
        let (s, b) = node.api_raw(path, Some(ADMIN_KEY), &body).await;
        let shown: String = body.chars().take(60).collect();
        assert_error_body(s, &b, 400, "bad_request", &format!("{path} {shown}"));
    }
    // A bad room in a path is refused too.
    let (s, b) = node
        .api(
            "GET",
            "/api/v1/rooms/bad%20room/presence",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_error_body(s, &b, 400, "bad_request", "presence of `bad room`");
    // The node still publishes.
    node.publish("global", "ok", json!(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_never_see_each_others_events_in_same_room_name() {
    let node = TestNode::start("").await;
    let ta = node.token("alice", &[], Some("acme"), json!({"projects": [7]}), HOUR);
    let tb = node.token("bob", &[], Some("globex"), json!({"projects": [7]}), HOUR);
    let td = node.token("dora", &[], None, json!({"projects": [7]}), HOUR);
    let (mut a, _) = node.connect_token(&ta).await;
    let (mut b, _) = node.connect_token(&tb).await;
    let (mut d, _) = node.connect_token(&td).await;
    for c in [&mut a, &mut b, &mut d] {
        c.join("project:7").await;
    }
    node.publish_body(
        json!({"room": "project:7", "event": "for.acme", "data": 1, "tenant": "acme"}),
    )
    .await;
    node.publish_body(
        json!({"room": "project:7", "event": "for.globex", "data": 2, "tenant": "globex"}),
    )
    .await;
    node.publish("project:7", "for.default", json!(3)).await;
    let e = a.expect_type("event", FRAME_WAIT).await;
    assert_eq!(e["event"], "for.acme", "{e}");
    assert_eq!(
        e["room"], "project:7",
        "room name shown without tenant: {e}"
    );
    let e = b.expect_type("event", FRAME_WAIT).await;
    assert_eq!(e["event"], "for.globex", "{e}");
    let e = d.expect_type("event", FRAME_WAIT).await;
    assert_eq!(e["event"], "for.default", "{e}");
    for c in [&mut a, &mut b, &mut d] {
        c.expect_nothing_queued().await;
    }
    // Same user id in two tenants: user rooms stay apart.
    let t1 = node.token("same", &[], Some("acme"), json!({}), HOUR);
    let t2 = node.token("same", &[], Some("globex"), json!({}), HOUR);
    let (mut s1, _) = node.connect_token(&t1).await;
    let (mut s2, _) = node.connect_token(&t2).await;
    node.publish_body(
        json!({"room": "user:same", "event": "acme.only", "data": 1, "tenant": "acme"}),
    )
    .await;
    let e = s1.expect_type("event", FRAME_WAIT).await;
    assert_eq!(e["event"], "acme.only");
    s2.expect_nothing_queued().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_reused_for_another_room_is_a_conflict() {
    let node = TestNode::start("").await;
    let first = node
        .publish_body(
            json!({"room": "user:alice", "event": "e", "data": 1, "idempotency_key": "k-9"}),
        )
        .await;
    assert_eq!(first["offset"], 1, "{first}");
    let (status, body) = node
        .api(
            "POST",
            "/api/v1/publish",
            Some(ADMIN_KEY),
            Some(json!({"room": "user:bob", "event": "e", "data": 1, "idempotency_key": "k-9"})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("user:alice"),
        "names the first room: {message}"
    );
}
