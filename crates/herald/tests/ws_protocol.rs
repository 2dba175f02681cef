//! The client protocol: request ids and exactly one reply each, ping/pong,
//! and bad input of every kind answered without harming anyone
//! (PROTOCOL.md 3).

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// After bad input: the offender still answers ping, and a bystander still
/// receives a published event.
async fn node_still_serves(node: &TestNode, offender: &mut WsClient, bystander: &mut WsClient) {
    offender.ping_ok().await;
    let marker = format!("m{}", now_ms());
    node.publish("global", "check.alive", json!({"marker": marker}))
        .await;
    let ev = bystander.expect_type("event", FRAME_WAIT).await;
    assert_eq!(ev["data"]["marker"], marker.as_str(), "{ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_with_an_id_gets_exactly_one_reply() {
    let node = TestNode::start("").await;
    let t = node.token(
        "alice",
        &[],
        None,
        json!({"projects": [7]}),
        Duration::from_secs(3600),
    );
    let (mut c, _) = node.connect_token(&t).await;
    let requests: Vec<(Value, &str)> = vec![
        (
            json!({"type": "join_room", "id": 1, "room": "project:7"}),
            "room_joined",
        ),
        (
            json!({"type": "join_room", "id": 2, "room": "project:7"}),
            "room_joined",
        ),
        (
            json!({"type": "join_room", "id": 3, "room": "project:8"}),
            "error",
        ),
        (
            json!({"type": "subscribe", "id": 4, "events": ["*"]}),
            "ack",
        ),
        (
            json!({"type": "unsubscribe", "id": 5, "events": ["nothing.*"]}),
            "ack",
        ),
        (
            json!({"type": "send_message", "id": 6, "room": "global", "data": 1}),
            "error",
        ),
        (json!({"type": "ping", "id": 7}), "pong"),
        (json!({"type": "dance", "id": 8}), "error"),
        (json!({"type": "join_room", "id": 9}), "error"),
        (
            json!({"type": "leave_room", "id": 10, "room": "project:7"}),
            "room_left",
        ),
        (
            json!({"type": "leave_room", "id": 11, "room": "project:7"}),
            "error",
        ),
        (
            json!({"type": "authenticate", "id": 12, "token": t}),
            "authenticated",
        ),
        (json!({"type": "ping", "id": "str-id"}), "pong"),
    ];
    for (r, _) in &requests {
        c.send_json(r.clone()).await;
    }
    let mut replies: HashMap<String, Vec<Value>> = HashMap::new();
    let want = requests.len();
    let deadline = std::time::Instant::now() + FRAME_WAIT;
    while replies.len() < want && std::time::Instant::now() < deadline {
        match c.recv(Duration::from_millis(200)).await {
            Incoming::Json(v) => {
                if let Some(id) = v.get("id") {
                    replies.entry(id.to_string()).or_default().push(v);
                }
            }
            Incoming::Timeout => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Catch duplicates: requests are answered in order, so any second
    // reply would come before the answer to one more ping.
    c.send_json(json!({"type": "ping", "id": "sentinel"})).await;
    loop {
        let v = c.next_json(FRAME_WAIT).await;
        if v["id"] == "sentinel" {
            break;
        }
        if let Some(id) = v.get("id") {
            replies.entry(id.to_string()).or_default().push(v);
        }
    }
    for (r, ty) in &requests {
        let id = r["id"].to_string();
        let got = replies.get(&id).cloned().unwrap_or_default();
        assert_eq!(
            got.len(),
            1,
            "request {r} must get exactly one reply, got {got:?}"
        );
        assert_eq!(got[0]["type"], *ty, "reply to {r}: {}", got[0]);
    }
    assert_eq!(replies.len(), want, "replies with unknown ids: {replies:?}");
    let e = &replies["3"][0];
    assert_eq!(e["code"], "forbidden", "{e}");
    let e = &replies["6"][0];
    assert_eq!(e["code"], "forbidden", "send to global (send none): {e}");
    let e = &replies["8"][0];
    assert_eq!(e["code"], "unknown_type", "{e}");
    let e = &replies["9"][0];
    assert_eq!(e["code"], "bad_request", "{e}");
    let e = &replies["11"][0];
    assert_eq!(e["code"], "not_joined", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_gets_pong_with_and_without_id() {
    let node = TestNode::start("").await;
    let (mut c, _) = node.connect_user("p").await;
    c.send_json(json!({"type": "ping"})).await;
    let p = c.next_json(FRAME_WAIT).await;
    assert_eq!(
        p,
        json!({"type": "pong"}),
        "pong without id has no id field"
    );
    c.send_json(json!({"type": "ping", "id": 42})).await;
    let p = c.next_json(FRAME_WAIT).await;
    assert_eq!(p["type"], "pong");
    assert_eq!(p["id"], 42, "numeric id echoed: {p}");
    let id64 = "x".repeat(64);
    c.send_json(json!({"type": "ping", "id": id64})).await;
    let p = c.next_json(FRAME_WAIT).await;
    assert_eq!(p["type"], "pong");
    assert_eq!(p["id"], id64.as_str(), "64-byte string id echoed: {p}");
    c.send_json(json!({"type": "ping", "id": 1.5})).await;
    let p = c.next_json(FRAME_WAIT).await;
    assert_eq!(p["id"], 1.5, "fractional numeric id echoed verbatim: {p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_bad_request_and_the_node_keeps_serving() {
    let node = TestNode::start("").await;
    let (mut c, _) = node.connect_user("offender").await;
    let (mut b, _) = node.connect_user("bystander").await;
    // (text, expected id in the error or Null)
    let long_id = "y".repeat(65);
    let cases: Vec<(String, Value)> = vec![
        ("{".into(), Value::Null),
        ("not json at all".into(), Value::Null),
        ("".into(), Value::Null),
        ("[]".into(), Value::Null),
        ("[{\"type\":\"ping\"}]".into(), Value::Null),
        ("42".into(), Value::Null),
        ("\"ping\"".into(), Value::Null),
        ("null".into(), Value::Null),
        (r#"{"id": 5}"#.into(), json!(5)),
        (r#"{"type": 5, "id": 6}"#.into(), json!(6)),
        (r#"{"type": null, "id": 60}"#.into(), json!(60)),
        (r#"{"type": "join_room", "id": 7}"#.into(), json!(7)),
        (
            r#"{"type": "join_room", "id": 8, "room": 5}"#.into(),
            json!(8),
        ),
        (
            r#"{"type": "join_room", "id": 80, "room": "global", "since": 3}"#.into(),
            json!(80),
        ),
        (r#"{"type": "leave_room", "id": 81}"#.into(), json!(81)),
        (
            r#"{"type": "subscribe", "id": 9, "events": "x"}"#.into(),
            json!(9),
        ),
        (r#"{"type": "subscribe", "id": 90}"#.into(), json!(90)),
        (
            r#"{"type": "unsubscribe", "id": 91, "events": [1, 2]}"#.into(),
            json!(91),
        ),
        (
            r#"{"type": "send_message", "id": 10, "room": "global"}"#.into(),
            json!(10),
        ),
        (
            r#"{"type": "send_message", "id": 11, "data": 1}"#.into(),
            json!(11),
        ),
        (r#"{"type": "authenticate", "id": 12}"#.into(), json!(12)),
        (
            r#"{"type": "authenticate", "id": 13, "token": 5}"#.into(),
            json!(13),
        ),
        (
            format!(r#"{{"type": "ping", "id": "{long_id}"}}"#),
            Value::Null,
        ),
        (r#"{"type": "ping", "id": [1]}"#.into(), Value::Null),
        (r#"{"type": "ping", "id": {"a": 1}}"#.into(), Value::Null),
        (r#"{"type": "ping", "id": 1} trailing"#.into(), Value::Null),
    ];
    for (text, id) in &cases {
        c.send_raw(Message::text(text.clone())).await;
        let reply = c.next_json(FRAME_WAIT).await;
        assert_eq!(reply["type"], "error", "{text:?} → {reply}");
        assert_eq!(reply["code"], "bad_request", "{text:?} → {reply}");
        assert_eq!(
            reply.get("id").cloned().unwrap_or(Value::Null),
            *id,
            "{text:?} → {reply}"
        );
    }
    node_still_serves(&node, &mut c, &mut b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_type_gets_unknown_type_with_id() {
    let node = TestNode::start("").await;
    let (mut c, _) = node.connect_user("u").await;
    let reply = c
        .request_error(json!({"type": "subscribe_everything"}), "unknown_type")
        .await;
    assert!(reply["id"].is_number(), "{reply}");
    c.send_json(json!({"type": "x".repeat(5000)})).await;
    let reply = c.next_json(FRAME_WAIT).await;
    assert_eq!(reply["code"], "unknown_type", "{reply}");
    assert!(
        reply["message"].as_str().unwrap_or("").len() < 1000,
        "the error does not echo a huge type back: {} bytes",
        reply["message"].as_str().unwrap_or("").len()
    );
    c.ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frame_gets_bad_request_and_connection_survives() {
    let node = TestNode::start("").await;
    let (mut c, _) = node.connect_user("bin").await;
    let (mut b, _) = node.connect_user("bystander").await;
    c.send_raw(Message::binary(br#"{"type":"ping","id":1}"#.to_vec()))
        .await;
    let reply = c.next_json(FRAME_WAIT).await;
    assert_eq!(reply["type"], "error", "binary frame: {reply}");
    assert_eq!(reply["code"], "bad_request", "binary frame: {reply}");
    node_still_serves(&node, &mut c, &mut b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_text_frame_gets_bad_request_then_1007_and_node_keeps_serving() {
    let node = TestNode::start("").await;
    let (mut c, _) = node.connect_user("utf").await;
    let (mut b, _) = node.connect_user("bystander").await;
    let mut bytes = br#"{"type":"ping","id":"#.to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
    bytes.extend_from_slice(b"}");
    c.send_raw(WsClient::raw_text_frame(bytes)).await;
    match c.recv(FRAME_WAIT).await {
        Incoming::Json(reply) => {
            assert_eq!(reply["type"], "error", "invalid UTF-8: {reply}");
            assert_eq!(reply["code"], "bad_request", "invalid UTF-8: {reply}");
        }
        other => panic!("invalid UTF-8 text frame: expected error bad_request, got {other:?}"),
    }
    // RFC 6455 8.1: an endpoint that finds invalid UTF-8 in a text frame
    // must fail the connection; Herald says why first, then closes 1007.
    let close = c.expect_close(FRAME_WAIT).await;
    assert_eq!(close.code, 1007, "invalid UTF-8 close: {close:?}");
    let d = close
        .disconnect
        .as_ref()
        .expect("disconnect frame before the close");
    assert_eq!(d["code"], 1007, "{d}");
    let (mut c2, _) = node.connect_user("utf2").await;
    node_still_serves(&node, &mut c2, &mut b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_over_max_message_bytes_closes_1009_and_others_unaffected() {
    let node = TestNode::start("[limits]\nmax_message_bytes = 1024\n").await;
    let (mut c, _) = node.connect_user("big").await;
    let (mut b, _) = node.connect_user("bystander").await;
    // Just under the limit is fine.
    let pad = "p".repeat(900);
    c.send_json(json!({"type": "ping", "id": 1, "pad": pad}))
        .await;
    let reply = c.next_json(FRAME_WAIT).await;
    assert_eq!(
        reply["type"], "pong",
        "a 930-byte frame is under 1024: {reply}"
    );
    // Over it closes with 1009.
    let pad = "p".repeat(2000);
    c.send_json(json!({"type": "ping", "id": 2, "pad": pad}))
        .await;
    let close = c.expect_close(FRAME_WAIT).await;
    assert_eq!(close.code, 1009, "oversized frame close: {close:?}");
    let d = close
        .disconnect
        .as_ref()
        .unwrap_or_else(|| panic!("a disconnect frame precedes 1009: {close:?}"));
    assert_eq!(d["code"], 1009, "{d}");
    b.ping_ok().await;
    node.publish("global", "still.here", json!(1)).await;
    let ev = b.expect_type("event", FRAME_WAIT).await;
    assert_eq!(ev["event"], "still.here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_before_authentication_do_not_grant_access() {
    let node = TestNode::start("[limits]\nauth_timeout = \"3s\"\n").await;
    let mut c = WsClient::connect(&node.ws_url(), TokenIn::None)
        .await
        .expect("upgrade without token");
    c.send_json(json!({"type": "join_room", "id": 1, "room": "global"}))
        .await;
    match c.recv(FRAME_WAIT).await {
        Incoming::Json(v) if v["type"] == "error" => {
            assert_eq!(v["id"], 1, "{v}");
            assert_eq!(v["code"], "unauthorized", "join before auth: {v}");
        }
        Incoming::Json(v) if v["type"] == "disconnect" => {
            assert_eq!(v["code"], 4001, "{v}");
        }
        Incoming::Close(Some((code, _))) => assert_eq!(code, 4001),
        other => panic!("join before authenticate got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_is_answered_and_node_keeps_serving() {
    let node = TestNode::start("").await;
    let (c, _) = node.connect_user("leaver").await;
    // RFC 6455 5.5.1: the answer to a close frame echoes its status code.
    let echoed = c.close_handshake(1000, "bye").await;
    assert_eq!(
        echoed.map(|(code, _)| code),
        Some(1000),
        "the node answers the client's close with the same code"
    );
    let (mut b, _) = node.connect_user("leaver").await;
    b.ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_before_authentication_get_their_close_codes() {
    let node = TestNode::start("[limits]\nmax_message_bytes = 1024\n").await;
    let mut big = WsClient::connect(&node.ws_url(), TokenIn::None)
        .await
        .expect("upgrade without a token");
    big.send_json(json!({"type": "authenticate", "token": "x".repeat(4000)}))
        .await;
    let close = big.expect_close(FRAME_WAIT).await;
    assert_eq!(close.code, 1009, "oversized frame before auth: {close:?}");

    let mut bad = WsClient::connect(&node.ws_url(), TokenIn::None)
        .await
        .expect("upgrade without a token");
    bad.send_raw(WsClient::raw_text_frame(vec![b'{', 0xff, b'}']))
        .await;
    let reply = bad.next_json(FRAME_WAIT).await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
    let close = bad.expect_close(FRAME_WAIT).await;
    assert_eq!(close.code, 1007, "invalid UTF-8 before auth: {close:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_sockets_get_a_fixed_frame_budget() {
    let node = TestNode::start("").await;
    let mut c = WsClient::connect(&node.ws_url(), TokenIn::None)
        .await
        .expect("upgrade without a token");
    for i in 0..16 {
        c.send_json(json!({"type": "ping", "id": i})).await;
        let pong = c.next_json(FRAME_WAIT).await;
        assert_eq!(pong["type"], "pong", "frame {i} within the budget: {pong}");
    }
    c.send_json(json!({"type": "ping", "id": 16})).await;
    let close = c.expect_close(FRAME_WAIT).await;
    assert_eq!(
        close.code, 4001,
        "17th frame before authenticate: {close:?}"
    );
}
