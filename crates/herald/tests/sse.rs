//! The Server-Sent Events transport at `/sse` (PROTOCOL.md 6, issue #3):
//! tokens, room checks, headers, the message format, the `events` filter,
//! limits, disconnects and heartbeats. `Last-Event-ID` and resume are in
//! `sse_resume.rs`; the SSE client is `common::sse`.

mod common;

use common::sse::{
    bearer, id_offsets, open_ok, open_sse, parse_id, read_opening, SseItem, FEED, HOUR,
};
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_in_header_opens_the_stream_with_the_documented_headers() {
    let node = TestNode::start(FEED).await;
    let token = node.user_token("alice");
    let mut s = open_ok(
        &node,
        "?rooms=feed:1",
        &[("Authorization", &bearer(&token))],
    )
    .await;
    let h = s.resp.headers().clone();
    let get = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        get("content-type").starts_with("text/event-stream"),
        "content-type: {h:?}"
    );
    assert_eq!(get("cache-control"), "no-cache", "{h:?}");
    assert_eq!(get("x-accel-buffering"), "no", "{h:?}");
    assert_eq!(get("access-control-allow-origin"), "*", "{h:?}");

    let (auth, joined) = read_opening(&mut s, 3).await;
    assert_eq!(
        auth.retry,
        Some(2000),
        "first message carries retry: 2000: {auth:?}"
    );
    let a = auth.json();
    assert_eq!(a["type"], "authenticated", "{a}");
    assert_eq!(a["user_id"], "alice", "{a}");
    assert!(
        a["connection_id"].is_string() && a["node_id"].is_string(),
        "{a}"
    );
    assert_eq!(
        joined.keys().cloned().collect::<Vec<_>>(),
        vec!["feed:1", "global", "user:alice"],
        "one room_joined per room, auto-joined ones included"
    );
    for (room, m) in &joined {
        let j = m.json();
        assert_eq!(j["type"], "room_joined", "{j}");
        assert_eq!(j["offset"], 0, "{room}: {j}");
        assert!(j["epoch"].is_string(), "{j}");
        assert!(j.get("recovered").is_none(), "no resume, no recovered: {j}");
        assert_eq!(m.retry, None, "retry only on the first message");
    }
    // The id after the last room_joined names every room, in name order.
    let last = s.seen.last().expect("messages").clone();
    let id = last.id.expect("room_joined carries an id");
    let entries = parse_id(&id);
    let rooms: Vec<&str> = entries.iter().map(|(r, _, _)| r.as_str()).collect();
    assert_eq!(rooms, vec!["feed:1", "global", "user:alice"], "id `{id}`");
    for (room, epoch, offset) in &entries {
        assert_eq!(joined[room].json()["epoch"], epoch.as_str(), "id `{id}`");
        assert_eq!(*offset, 0, "id `{id}`");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_in_query_works_and_missing_or_bad_tokens_get_401() {
    let node = TestNode::start(FEED).await;
    let token = node.user_token("bob");
    let mut s = open_ok(&node, &format!("?token={token}&rooms=feed:2"), &[]).await;
    let (auth, joined) = read_opening(&mut s, 3).await;
    assert_eq!(auth.json()["user_id"], "bob");
    assert!(joined.contains_key("feed:2"), "{joined:?}");
    node.publish("feed:2", "hello", json!({"x": 1})).await;
    let ev = s.expect_event("event", FRAME_WAIT).await;
    assert_eq!(ev.json()["data"], json!({"x": 1}));

    let expired = node
        .token_with_claims(&json!({"sub": "bob", "iat": now_secs() - 100, "exp": now_secs() - 50}));
    let wrong_key = sign_hs256(
        "some-other-secret-0123456789abcdef",
        &json!({"sub": "bob", "exp": now_secs() + 600}),
    );
    let cases: Vec<(String, Vec<(&str, String)>)> = vec![
        ("".into(), vec![]),
        ("?rooms=feed:2".into(), vec![]),
        ("?token=".into(), vec![]),
        ("?token=garbage".into(), vec![]),
        ("".into(), vec![("Authorization", "Bearer garbage".into())]),
        ("".into(), vec![("Authorization", bearer(&expired))]),
        (format!("?token={wrong_key}"), vec![]),
        (
            format!(
                "?token={}",
                alg_none_token(&json!({"sub": "bob", "exp": now_secs() + 600}))
            ),
            vec![],
        ),
    ];
    for (q, hs) in &cases {
        let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        match open_sse(&node, q, &hs).await {
            Ok(_) => panic!("GET /sse{q} with {hs:?} opened a stream"),
            Err((status, body)) => {
                assert_eq!(status, 401, "/sse{q} {hs:?}: {body}");
                assert_eq!(body["error"]["code"], "unauthorized", "{body}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_and_invalid_rooms_are_refused_before_the_stream() {
    let node = TestNode::start(FEED).await;
    let token = node.token("carol", &[], None, json!({"projects": [1]}), HOUR);
    let auth = bearer(&token);
    let hs = [("Authorization", auth.as_str())];
    for (rooms, name) in [
        ("project:1,project:9", "project:9"),
        ("user:dave", "user:dave"),
        ("secret:1", "secret:1"),
    ] {
        match open_sse(&node, &format!("?rooms={rooms}"), &hs).await {
            Ok(_) => panic!("rooms={rooms} opened a stream"),
            Err((status, body)) => {
                assert_eq!(status, 403, "rooms={rooms}: {body}");
                assert_eq!(body["error"]["code"], "forbidden", "{body}");
                let msg = body["error"]["message"].as_str().unwrap_or_default();
                assert!(msg.contains(name), "403 names `{name}`: {body}");
            }
        }
    }
    let long = "x".repeat(300);
    for rooms in ["bad%20room", "feed:%23x", "feed:1,a%C3%A9", long.as_str()] {
        match open_sse(&node, &format!("?rooms={rooms}"), &hs).await {
            Ok(_) => panic!("rooms={rooms} opened a stream"),
            Err((status, body)) => {
                assert_eq!(status, 400, "rooms={rooms}: {body}");
                assert_eq!(body["error"]["code"], "bad_request", "{body}");
            }
        }
    }
    // Too many event patterns.
    let many: Vec<String> = (0..100).map(|i| format!("e{i}")).collect();
    let q = format!("?events={}", many.join(","));
    let r = open_sse(&node, &q, &hs).await;
    assert!(matches!(&r, Err((400, _))), "100 patterns: {:?}", r.err());
    // The allowed room opens.
    let mut s = open_ok(&node, "?rooms=project:1", &hs).await;
    let (_, joined) = read_opening(&mut s, 3).await;
    assert!(joined.contains_key("project:1"), "{joined:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_messages_carry_the_websocket_frame_json() {
    let node = TestNode::start(FEED).await;
    let token = node.user_token("frank");
    let mut s = open_ok(&node, &format!("?token={token}&rooms=feed:3"), &[]).await;
    let (_, joined) = read_opening(&mut s, 3).await;
    let epoch = joined["feed:3"].json()["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut ws, _) = node.connect_user("gina").await;
    ws.join("feed:3").await;

    node.publish("feed:3", "order.created", json!({"id": 7, "items": [1, 2]}))
        .await;
    let ws_frame = ws.expect_type("event", FRAME_WAIT).await;
    let m = s.expect_event("event", FRAME_WAIT).await;
    assert_eq!(m.json(), ws_frame, "SSE data equals the WebSocket frame");
    assert_eq!(m.json()["offset"], 1);
    let ids = id_offsets(m.id.as_deref().expect("event carries an id"));
    assert_eq!(ids.get("feed:3"), Some(&1), "{:?}", m.id);
    assert!(m
        .id
        .as_deref()
        .unwrap()
        .contains(&format!("feed:3~{epoch}~1")));

    // send_message arrives as `event: message` with `from` (compared with
    // what another WebSocket member receives; the sender gets its own copy
    // too, before its ack, which `request` skips over).
    let (mut sender, _) = node.connect_user("hugo").await;
    sender.join("feed:3").await;
    let ack = sender
        .request(json!({"type": "send_message", "room": "feed:3", "data": {"hi": true}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let ws_msg = ws.expect_type("message", FRAME_WAIT).await;
    let m = s.expect_event("message", FRAME_WAIT).await;
    let j = m.json();
    assert_eq!(j, ws_msg, "message frame equals the WebSocket one");
    assert_eq!(j["from"]["user_id"], "hugo", "{j}");
    assert_eq!(j["offset"], 2, "{j}");
    assert_eq!(id_offsets(m.id.as_deref().unwrap()).get("feed:3"), Some(&2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_parameter_filters_events() {
    let node = TestNode::start(FEED).await;
    let token = node.user_token("hank");
    let mut s = open_ok(
        &node,
        &format!("?token={token}&rooms=feed:4&events=keep.*,exact"),
        &[],
    )
    .await;
    read_opening(&mut s, 3).await;
    for ev in ["drop.a", "keep.a", "exactly", "exact", "keep.b.c", "other"] {
        node.publish("feed:4", ev, json!({"ev": ev})).await;
    }
    // A sentinel the filter lets through: everything before it was judged.
    node.publish("feed:4", "keep.end", json!({})).await;
    let got = s.collect_until_event("keep.end", FRAME_WAIT).await;
    let names: Vec<String> = got
        .iter()
        .filter(|m| m.event == "event")
        .map(|m| m.json()["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, vec!["keep.a", "exact", "keep.b.c"], "{got:?}");
    // The id still advances past filtered events' rooms only as delivered:
    // the last delivered was offset 5.
    let last = got.last().expect("messages");
    assert_eq!(
        id_offsets(last.id.as_deref().unwrap()).get("feed:4"),
        Some(&5)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_count_toward_the_per_user_limit() {
    let node =
        TestNode::start("[limits]\nmax_connections_per_user = 1\nper_user_policy = \"reject\"\n")
            .await;
    let token = node.user_token("jack");
    let mut s = open_ok(&node, &format!("?token={token}"), &[]).await;
    read_opening(&mut s, 2).await;
    match open_sse(&node, &format!("?token={token}"), &[]).await {
        Ok(_) => panic!("a second stream for jack opened with max_connections_per_user = 1"),
        Err((status, body)) => {
            assert_eq!(status, 429, "{body}");
            assert_eq!(body["error"]["code"], "limit_exceeded", "{body}");
        }
    }
    match WsClient::connect(&node.ws_url(), TokenIn::Header(token.clone())).await {
        Ok(_) => panic!("a WebSocket for jack was accepted beside his SSE stream"),
        Err(e) => assert_eq!(upgrade_status(&e), Some(429), "{}", describe_ws_error(&e)),
    }
    // Another user is unaffected.
    let other = node.user_token("kate");
    let mut o = open_ok(&node, &format!("?token={other}"), &[]).await;
    read_opening(&mut o, 2).await;
    // Closing the stream frees the slot.
    drop(s);
    let deadline = Instant::now() + FRAME_WAIT;
    loop {
        match open_sse(&node, &format!("?token={token}"), &[]).await {
            Ok(mut s) => {
                read_opening(&mut s, 2).await;
                break;
            }
            Err((429, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("slot not freed after the stream closed: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_count_toward_max_connections() {
    let node = TestNode::start("[limits]\nmax_connections = 1\n").await;
    let t1 = node.user_token("lena");
    let mut s = open_ok(&node, &format!("?token={t1}"), &[]).await;
    read_opening(&mut s, 2).await;
    let t2 = node.user_token("mike");
    match open_sse(&node, &format!("?token={t2}"), &[]).await {
        Ok(_) => panic!("a second stream opened with max_connections = 1"),
        Err((status, body)) => {
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["error"]["code"], "unavailable", "{body}");
        }
    }
    match WsClient::connect(&node.ws_url(), TokenIn::Header(t2.clone())).await {
        Ok(_) => panic!("a WebSocket was accepted beside the SSE stream at max_connections = 1"),
        Err(e) => assert_eq!(upgrade_status(&e), Some(503), "{}", describe_ws_error(&e)),
    }
    drop(s);
    let deadline = Instant::now() + FRAME_WAIT;
    loop {
        match open_sse(&node, &format!("?token={t2}"), &[]).await {
            Ok(mut s) => {
                read_opening(&mut s, 2).await;
                break;
            }
            Err((503, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("slot not freed after the stream closed: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_disconnect_ends_the_stream_with_4013() {
    let node = TestNode::start(FEED).await;
    let token = node.user_token("nina");
    let mut s = open_ok(&node, &format!("?token={token}"), &[]).await;
    read_opening(&mut s, 2).await;
    let (status, body) = node
        .api(
            "POST",
            "/api/v1/users/nina/disconnect",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["disconnected"], 1,
        "the SSE stream is a connection: {body}"
    );
    let rest = s.expect_end(FRAME_WAIT).await;
    let d = rest
        .iter()
        .find(|m| m.event == "disconnect")
        .unwrap_or_else(|| panic!("an `event: disconnect` before the end: {rest:?}"));
    let j = d.json();
    assert_eq!(j["type"], "disconnect", "{j}");
    assert_eq!(j["code"], 4013, "{j}");
    assert_eq!(j["reconnect"], false, "{j}");
    assert!(j["reason"].is_string(), "{j}");
    assert_eq!(
        rest.last().map(|m| m.event.as_str()),
        Some("disconnect"),
        "last message: {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_disconnect_with_reconnect_true() {
    let mut node = TestNode::start_process("[server]\nshutdown_drain = \"1s\"\n").await;
    let token = node.user_token("olga");
    let mut s = open_ok(&node, &format!("?token={token}"), &[]).await;
    read_opening(&mut s, 2).await;
    node.sigterm();
    let rest = s.expect_end(Duration::from_secs(15)).await;
    let d = rest
        .iter()
        .find(|m| m.event == "disconnect")
        .unwrap_or_else(|| panic!("an `event: disconnect` before the end: {rest:?}"));
    let j = d.json();
    assert_eq!(j["reconnect"], true, "{j}");
    assert_eq!(j["code"], 1001, "{j}");
    assert!(
        node.wait_exit_async(Duration::from_secs(15))
            .await
            .is_some(),
        "node exits after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comment_heartbeat_comes_every_15_seconds() {
    let node = TestNode::start("").await;
    let token = node.user_token("pia");
    let mut s = open_ok(&node, &format!("?token={token}"), &[]).await;
    read_opening(&mut s, 2).await;
    let start = Instant::now();
    match s.next_item(Duration::from_secs(18)).await {
        SseItem::Comment(c) => {
            let after = start.elapsed();
            assert_eq!(c, "heartbeat", "comment text");
            assert!(
                after >= Duration::from_secs(13),
                "heartbeat after {after:?}, expected about 15 s"
            );
        }
        SseItem::Msg(m) => panic!("unexpected message on an idle stream: {m:?}"),
        other => panic!("no heartbeat comment within 18 s: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_arrives_without_waiting_for_the_next() {
    // One publish at a time, each awaited on the stream before the next:
    // an event must not sit in the stream's queue until another arrives.
    let node = TestNode::start(FEED).await;
    let token = node.user_token("quinn");
    let mut s = open_ok(&node, &format!("?token={token}&rooms=feed:5"), &[]).await;
    read_opening(&mut s, 3).await;
    for i in 1..=6u64 {
        node.publish("feed:5", "tick", json!({"i": i})).await;
        let t = Instant::now();
        match s.next_item(Duration::from_secs(3)).await {
            SseItem::Msg(m) if m.event == "event" => {
                assert_eq!(m.json()["offset"], i, "{m:?}");
            }
            other => panic!(
                "event {i} was not delivered within 3 s of its publish (got {other:?} after {:?}); \
                 seen {}",
                t.elapsed(),
                s.summary()
            ),
        }
    }
}
