//! The connect proxy against the real test backend (tests/backend): opaque
//! credentials on `/ws` (header, query, `authenticate` frame), `/sse` and
//! Socket.IO; refusals with the backend's message; the forwarded headers
//! and address; the backend's extra rooms; a slow backend (timeout), a
//! failing one (the breaker opens, fails fast, and closes after a probe)
//! and a dead one. Join, send and RPC are in proxy_access.rs.

mod common;

use common::sse::open_sse;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// A node whose connect proxy is `backend`, with `extra` TOML appended
/// inside `[proxy]`.
async fn node_with(backend: &Backend, extra: &str) -> TestNode {
    TestNode::start(&proxy_toml(backend, extra)).await
}

fn proxy_toml(backend: &Backend, extra: &str) -> String {
    format!(
        "[proxy]\nconnect_url = \"{}\"\nforward_headers = [\"X-Client-Tag\", \"cookie\"]\n{extra}\n",
        backend.url("/connect")
    )
}

fn room_names(authenticated: &Value) -> Vec<String> {
    authenticated["rooms"]
        .as_array()
        .unwrap_or_else(|| panic!("rooms in {authenticated}"))
        .iter()
        .filter_map(|r| r["room"].as_str().or(r.as_str()).map(str::to_owned))
        .collect()
}

/// The `{"error": {...}}` code of an HTTP refusal.
fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_credentials_connect_on_every_websocket_path() {
    let backend = Backend::start().await;
    let node = node_with(&backend, "").await;
    for (token_in, user) in [
        (TokenIn::Header("opaque:alice".into()), "alice"),
        (TokenIn::Query("opaque:bob".into()), "bob"),
    ] {
        let mut c = WsClient::connect(&node.ws_url(), token_in)
            .await
            .expect("upgrade with an opaque credential");
        let auth = c.expect_type("authenticated", FRAME_WAIT).await;
        assert_eq!(auth["user_id"], user, "{auth}");
        // Joining works as for a JWT user: the shipped `user` namespace.
        c.join(&format!("user:{user}")).await;
    }
    let mut c = WsClient::connect(&node.ws_url(), TokenIn::None)
        .await
        .expect("upgrade");
    let reply = c
        .request(json!({"type": "authenticate", "token": "opaque:carol:acme"}))
        .await;
    assert_eq!(reply["type"], "authenticated", "{reply}");
    assert_eq!(reply["user_id"], "carol", "{reply}");
    let calls = backend.calls("connect").await;
    assert_eq!(calls.len(), 3, "{calls:?}");
    let transports: Vec<&str> = calls
        .iter()
        .filter_map(|c| c["transport"].as_str())
        .collect();
    assert_eq!(transports, ["websocket"; 3], "{calls:?}");
    assert_eq!(calls[2]["credential"], "opaque:carol:acme");
    // The address the client connected from reaches the backend.
    let remote = calls[2]["remote_addr"].as_str().unwrap_or_default();
    assert!(remote.starts_with("127.0.0.1:"), "{calls:?}");
    // A JWT is still verified locally (mode `fallback`): no backend call.
    let (_jwt, auth) = node.connect_user("dave").await;
    assert_eq!(auth["user_id"], "dave");
    assert_eq!(backend.calls("connect").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_forwards_headers_and_joins_the_backends_rooms() {
    let backend = Backend::start().await;
    let expires_at = now_secs() + 3600;
    backend
        .configure(json!({"connect": {"users": {"vip-session": {
            "user_id": "7", "rooms": ["system:vip"], "expires_at": expires_at,
            "claims": {"plan": "gold"}
        }}}}))
        .await;
    let node = node_with(&backend, "").await;
    let mut s = common::sse::open_ok(
        &node,
        "?token=vip-session",
        &[
            ("x-client-tag", "one"),
            ("Cookie", "a=1"),
            ("x-not-forwarded", "secret"),
        ],
    )
    .await;
    let auth = s.expect_event("authenticated", FRAME_WAIT).await.json();
    assert_eq!(auth["user_id"], "7", "{auth}");
    assert!(
        room_names(&auth).contains(&"system:vip".to_owned()),
        "the backend's room is joined at open: {auth}"
    );
    node.publish("system:vip", "note", json!({"n": 1})).await;
    let event = s.expect_event("event", FRAME_WAIT).await.json();
    assert_eq!(event["room"], "system:vip", "{event}");
    let calls = backend.calls("connect").await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["transport"], "sse");
    assert_eq!(
        calls[0]["headers"],
        json!({"x-client-tag": "one", "cookie": "a=1"}),
        "only proxy.forward_headers travel, lower-case: {calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_the_backends_message() {
    let backend = Backend::start().await;
    let node = node_with(&backend, "").await;
    for (credential, message) in [
        ("refuse:session expired", "session expired"),
        ("forbid:banned user", "banned user"),
        ("garbage", "unknown credential"),
    ] {
        let (status, body) = open_sse(&node, &format!("?token={}", enc(credential)), &[])
            .await
            .err()
            .unwrap_or_else(|| panic!("{credential} must be refused"));
        assert_eq!(status, 401, "{body}");
        assert_eq!(error_code(&body), "unauthorized", "{body}");
        assert_eq!(body["error"]["message"], message, "{body}");
    }
    let err = WsClient::connect(&node.ws_url(), TokenIn::Header("refuse:nope".into()))
        .await
        .err()
        .expect("refused at upgrade");
    assert_eq!(
        upgrade_status(&err),
        Some(401),
        "{}",
        describe_ws_error(&err)
    );
    // In an `authenticate` frame: error `unauthorized` with the message, 4001.
    let mut c = WsClient::connect(&node.ws_url(), TokenIn::None)
        .await
        .expect("upgrade");
    let reply = c
        .request(json!({"type": "authenticate", "token": "refuse:not today"}))
        .await;
    assert_eq!(reply["code"], "unauthorized", "{reply}");
    assert_eq!(reply["message"], "not today", "{reply}");
    assert_eq!(c.expect_close(FRAME_WAIT).await.code, 4001);
    // An answer that does not make an identity is refused too.
    backend
        .configure(json!({"connect": {"users": {"stale": {"user_id": "9", "expires_at": 1000}}}}))
        .await;
    let (status, body) = open_sse(&node, "?token=stale", &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expires_at")),
        "{body}"
    );
}

type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame, within [`FRAME_WAIT`].
async fn next_text(ws: &mut RawWs) -> String {
    loop {
        let msg = tokio::time::timeout(FRAME_WAIT, ws.next())
            .await
            .expect("a packet in time")
            .expect("open socket")
            .expect("a frame");
        if let Message::Text(t) = msg {
            return t.to_string();
        }
    }
}

/// A hand-made Socket.IO CONNECT over an Engine.IO WebSocket; returns the
/// answer packet.
async fn socketio_connect(node: &TestNode, auth: Value) -> String {
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", node.addr());
    let (mut ws, _) = tokio::time::timeout(FRAME_WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("upgrade in time")
        .expect("upgrade");
    let open = next_text(&mut ws).await;
    assert!(open.starts_with("0{"), "open packet first: {open}");
    ws.send(Message::text(format!("40{auth}")))
        .await
        .expect("send CONNECT");
    next_text(&mut ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_connects_with_an_opaque_credential() {
    let backend = Backend::start().await;
    let node = node_with(&backend, "").await;
    let accepted = socketio_connect(&node, json!({"token": "opaque:sio"})).await;
    assert!(accepted.starts_with("40{"), "CONNECT accepted: {accepted}");
    let refused = socketio_connect(&node, json!({"token": "refuse:go away"})).await;
    assert!(refused.starts_with("44"), "CONNECT refused: {refused}");
    assert!(refused.contains("go away"), "{refused}");
    let calls = backend.calls("connect").await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0]["transport"], "socketio");
    assert_eq!(calls[0]["credential"], "opaque:sio");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_is_unavailable_not_a_hang() {
    let backend = Backend::start().await;
    backend
        .configure(json!({"connect": {"mode": "slow", "delay_ms": 4000}}))
        .await;
    let node = node_with(&backend, "timeout = \"300ms\"").await;
    // Had the node waited for the answer, this would be a 200 after 4 s.
    let (status, body) = open_sse(&node, "?token=opaque:slow", &[])
        .await
        .err()
        .expect("unavailable");
    assert_eq!(status, 503, "{body}");
    assert_eq!(error_code(&body), "unavailable", "{body}");
    // An `authenticate` frame: error `unavailable`, then 1013 (try again).
    let mut c = WsClient::connect(&node.ws_url(), TokenIn::None)
        .await
        .expect("upgrade");
    let reply = c
        .request(json!({"type": "authenticate", "token": "opaque:slow"}))
        .await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
    assert_eq!(c.expect_close(FRAME_WAIT).await.code, 1013);
    // Socket.IO: a CONNECT_ERROR with code `unavailable`.
    let refused = socketio_connect(&node, json!({"token": "opaque:slow"})).await;
    assert!(
        refused.starts_with("44") && refused.contains("unavailable"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_fails_fast_and_closes_after_a_probe() {
    let backend = Backend::start().await;
    backend
        .configure(json!({"connect": {"mode": "fail"}}))
        .await;
    let node = node_with(&backend, "breaker_failures = 2\nbreaker_cooldown = \"2s\"").await;
    for _ in 0..2 {
        let (status, body) = open_sse(&node, "?token=opaque:u", &[])
            .await
            .err()
            .expect("503");
        assert_eq!((status, error_code(&body)), (503, "unavailable"), "{body}");
    }
    assert_eq!(backend.calls("connect").await.len(), 2);
    // Open: refused at once, without reaching the backend.
    let (status, _) = open_sse(&node, "?token=opaque:u", &[])
        .await
        .err()
        .expect("503");
    assert_eq!(status, 503);
    let mut c = WsClient::connect(&node.ws_url(), TokenIn::None)
        .await
        .expect("upgrade");
    let reply = c
        .request(json!({"type": "authenticate", "token": "opaque:u"}))
        .await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
    assert_eq!(
        backend.calls("connect").await.len(),
        2,
        "fail fast while open"
    );
    // The backend recovers; after the cooldown one probe closes the breaker.
    backend.configure(json!({"connect": {"mode": "ok"}})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open_sse(&node, "?token=opaque:back", &[]).await {
            Ok(_) => break,
            Err((503, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err((status, body)) => panic!("the breaker never closed: {status} {body}"),
        }
    }
    assert_eq!(backend.calls("connect").await.len(), 3, "exactly one probe");
    let (_c, auth) = {
        let mut c = WsClient::connect(&node.ws_url(), TokenIn::Header("opaque:again".into()))
            .await
            .expect("closed again: clients connect");
        let auth = c.expect_type("authenticated", FRAME_WAIT).await;
        (c, auth)
    };
    assert_eq!(auth["user_id"], "again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_is_unavailable() {
    let mut backend = Backend::start().await;
    let node = node_with(&backend, "").await;
    backend.stop();
    let (status, body) = open_sse(&node, "?token=opaque:u", &[])
        .await
        .err()
        .expect("503");
    assert_eq!((status, error_code(&body)), (503, "unavailable"), "{body}");
    let err = WsClient::connect(&node.ws_url(), TokenIn::Query("opaque:u".into()))
        .await
        .err()
        .expect("refused at upgrade");
    assert_eq!(
        upgrade_status(&err),
        Some(503),
        "{}",
        describe_ws_error(&err)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_always_and_no_token_key_send_jwts_to_the_backend() {
    let backend = Backend::start().await;
    let node = node_with(&backend, "connect_mode = \"always\"").await;
    let jwt = node.user_token("erin");
    let err = WsClient::connect(&node.ws_url(), TokenIn::Header(jwt.clone()))
        .await
        .err()
        .expect("the backend does not know this JWT");
    assert_eq!(upgrade_status(&err), Some(401));
    let calls = backend.calls("connect").await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["credential"], jwt.as_str());
    drop(node);
    // No token key at all: the backend answers for every credential, and
    // no development secret is made up.
    let node = TestNode::start_custom(&proxy_toml(&backend, ""), &[], false).await;
    let (_c, auth) = node.connect_token("opaque:frank").await;
    assert_eq!(auth["user_id"], "frank");
    let err = WsClient::connect(&node.ws_url(), TokenIn::Header(jwt))
        .await
        .err()
        .expect("a JWT no key verifies goes to the backend, which refuses it");
    assert_eq!(upgrade_status(&err), Some(401));
    assert_eq!(backend.calls("connect").await.len(), 3);
}
