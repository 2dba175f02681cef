//! WebSocket authentication: token by header, query and `authenticate`
//! frame; the auth timeout; bad tokens at upgrade and in frames; expiry and
//! refresh (PROTOCOL.md 3).

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const HOUR: Duration = Duration::from_secs(3600);

fn check_authenticated(auth: &serde_json::Value, sub: &str) {
    assert_eq!(auth["type"], "authenticated", "{auth}");
    assert_eq!(
        auth["user_id"], sub,
        "authenticated.user_id is the sub: {auth}"
    );
    assert!(
        auth["connection_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "authenticated.connection_id: {auth}"
    );
    assert!(
        auth["node_id"].as_str().is_some_and(|s| !s.is_empty()),
        "authenticated.node_id: {auth}"
    );
    assert!(auth["rooms"].is_array(), "authenticated.rooms: {auth}");
    assert!(
        auth["heartbeat_interval_ms"].is_u64(),
        "authenticated.heartbeat_interval_ms: {auth}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_in_authorization_header_gets_unprompted_authenticated() {
    let node = TestNode::start("").await;
    let token = node.user_token("alice");
    let mut c = WsClient::connect(&node.ws_url(), TokenIn::Header(token))
        .await
        .expect("upgrade with header token");
    let first = c.next_json(FRAME_WAIT).await;
    check_authenticated(&first, "alice");
    assert!(
        first.get("id").is_none(),
        "unprompted frame has no id: {first}"
    );
    c.ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_in_query_gets_unprompted_authenticated() {
    let node = TestNode::start("").await;
    let token = node.user_token("bob");
    let mut c = WsClient::connect(&node.ws_url(), TokenIn::Query(token))
        .await
        .expect("upgrade with query token");
    let first = c.next_json(FRAME_WAIT).await;
    check_authenticated(&first, "bob");
    c.ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticate_frame_is_answered_with_its_id_and_outlives_auth_timeout() {
    let node = TestNode::start("[limits]\nauth_timeout = \"500ms\"\n").await;
    let mut c = WsClient::connect(&node.ws_url(), TokenIn::None)
        .await
        .expect("upgrade without token");
    c.send_json(json!({"type": "authenticate", "id": "a1", "token": node.user_token("carol")}))
        .await;
    let reply = c.next_json(FRAME_WAIT).await;
    check_authenticated(&reply, "carol");
    assert_eq!(
        reply["id"], "a1",
        "authenticated carries the request id: {reply}"
    );
    // Past the auth timeout the authenticated connection stays open: the
    // timer is the subject, so this waits past it.
    c.expect_silence(Duration::from_millis(1000)).await;
    c.ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_authenticate_frame_within_auth_timeout_closes_4001() {
    let node = TestNode::start("[limits]\nauth_timeout = \"500ms\"\n").await;
    let started = Instant::now();
    let mut c = WsClient::connect(&node.ws_url(), TokenIn::None)
        .await
        .expect("upgrade without token");
    let close = c.expect_close(FRAME_WAIT).await;
    assert_eq!(close.code, 4001, "auth timeout close code: {close:?}");
    let d = close
        .disconnect
        .as_ref()
        .unwrap_or_else(|| panic!("a disconnect frame precedes the close: {close:?}"));
    assert_eq!(d["code"], 4001, "{d}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "closed before the auth timeout: {:?}",
        started.elapsed()
    );
}

fn bad_tokens(node: &TestNode) -> Vec<(&'static str, String)> {
    let now = now_secs();
    vec![
        (
            "expired",
            node.token_with_claims(&json!({"sub": "u", "iat": now - 120, "exp": now - 60})),
        ),
        (
            "not yet valid (nbf)",
            node.token_with_claims(
                &json!({"sub": "u", "iat": now, "nbf": now + 3600, "exp": now + 7200}),
            ),
        ),
        (
            "wrongly signed",
            sign_hs256(
                "some-other-secret-entirely-0000000",
                &json!({"sub": "u", "exp": now + 3600}),
            ),
        ),
        (
            "alg none",
            alg_none_token(&json!({"sub": "u", "exp": now + 3600})),
        ),
        (
            "missing sub",
            node.token_with_claims(&json!({"exp": now + 3600})),
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_at_upgrade_get_http_401_in_header_and_query() {
    let node = TestNode::start("").await;
    for (what, token) in bad_tokens(&node) {
        for token_in in [
            TokenIn::Header(token.clone()),
            TokenIn::Query(token.clone()),
        ] {
            let how = format!("{what} token via {token_in:?}");
            match WsClient::connect(&node.ws_url(), token_in).await {
                Ok(_) => panic!("{how}: upgrade was accepted"),
                Err(e) => assert_eq!(
                    upgrade_status(&e),
                    Some(401),
                    "{how}: expected HTTP 401, got {}",
                    describe_ws_error(&e)
                ),
            }
        }
    }
    // The node keeps serving good clients.
    let (mut c, _) = node.connect_user("fine").await;
    c.ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_in_authenticate_frame_gets_error_and_close_4001() {
    let node = TestNode::start("[limits]\nauth_timeout = \"2s\"\n").await;
    for (what, token) in bad_tokens(&node) {
        let mut c = WsClient::connect(&node.ws_url(), TokenIn::None)
            .await
            .expect("upgrade without token");
        c.send_json(json!({"type": "authenticate", "id": 9, "token": token}))
            .await;
        let first = c.next_json(FRAME_WAIT).await;
        assert_eq!(
            first["type"], "error",
            "{what}: reply to authenticate: {first}"
        );
        assert_eq!(first["id"], 9, "{what}: error carries the id: {first}");
        assert_eq!(first["code"], "unauthorized", "{what}: {first}");
        let close = c.expect_close(FRAME_WAIT).await;
        assert_eq!(close.code, 4001, "{what}: close code: {close:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_while_connected_closes_4012_with_reconnect() {
    let node = TestNode::start("").await;
    let started = Instant::now();
    let token = node.token("exp", &[], None, json!({}), Duration::from_secs(2));
    let (mut c, _) = node.connect_token(&token).await;
    let close = c.expect_close(Duration::from_secs(12)).await;
    assert_eq!(close.code, 4012, "expiry close code: {close:?}");
    let d = close
        .disconnect
        .unwrap_or_else(|| panic!("disconnect frame before 4012"));
    assert_eq!(d["code"], 4012, "{d}");
    assert_eq!(d["reconnect"], true, "4012 says reconnect: {d}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the token expired: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_with_same_sub_before_expiry_keeps_connection_open() {
    let node = TestNode::start("").await;
    let token = node.token("fresh", &[], None, json!({}), Duration::from_secs(2));
    let (mut c, _) = node.connect_token(&token).await;
    c.send_json(json!({"type": "authenticate", "id": "r1", "token": node.user_token("fresh")}))
        .await;
    let reply = c.expect_reply(&json!("r1"), FRAME_WAIT).await;
    assert_eq!(reply["type"], "authenticated", "refresh reply: {reply}");
    assert_eq!(reply["user_id"], "fresh", "{reply}");
    // Well past the first token's expiry the connection is still open: the
    // expiry is the subject, so this waits past it.
    c.expect_silence(Duration::from_secs(4)).await;
    c.ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_with_different_sub_is_refused() {
    let node = TestNode::start("").await;
    let (mut c, _) = node.connect_user("alice").await;
    c.send_json(json!({"type": "authenticate", "id": "swap", "token": node.user_token("mallory")}))
        .await;
    let reply = c.expect_reply(&json!("swap"), FRAME_WAIT).await;
    assert_eq!(
        reply["type"], "error",
        "changing sub must be refused: {reply}"
    );
    assert!(
        reply["code"] == "unauthorized" || reply["code"] == "forbidden",
        "refusal code: {reply}"
    );
    // Either the connection stays alice's, or it is closed with 4001.
    c.send_json(json!({"type": "join_room", "id": "j", "room": "user:mallory"}))
        .await;
    match c.recv(FRAME_WAIT).await {
        Incoming::Json(v) if v["type"] == "error" => {
            assert_eq!(v["code"], "forbidden", "still alice, not mallory: {v}")
        }
        Incoming::Json(v) if v["type"] == "disconnect" => {
            let close = c.expect_close(FRAME_WAIT).await;
            assert_eq!(close.code, 4001, "{close:?}");
        }
        Incoming::Close(Some((code, _))) => assert_eq!(code, 4001),
        other => panic!("after a refused refresh got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_with_different_tenant_is_refused() {
    let node = TestNode::start("").await;
    let t = node.token("alice", &[], Some("acme"), json!({}), HOUR);
    let (mut c, _) = node.connect_token(&t).await;
    let other = node.token("alice", &[], Some("globex"), json!({}), HOUR);
    c.send_json(json!({"type": "authenticate", "id": "t", "token": other}))
        .await;
    let reply = c.expect_reply(&json!("t"), FRAME_WAIT).await;
    assert_eq!(
        reply["type"], "error",
        "changing tenant must be refused: {reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leeway_allows_slightly_expired_tokens() {
    let node = TestNode::start("[auth]\nleeway = \"60s\"\n").await;
    let now = now_secs();
    let t = node.token_with_claims(&json!({"sub": "late", "iat": now - 100, "exp": now - 10}));
    let (mut c, auth) = node.connect_token(&t).await;
    assert_eq!(auth["user_id"], "late");
    c.ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_and_audience_are_checked_when_configured() {
    let node =
        TestNode::start("[auth]\nissuer = \"https://idp.test\"\naudience = \"herald\"\n").await;
    let now = now_secs();
    let good = node.token_with_claims(
        &json!({"sub": "i", "exp": now + 600, "iss": "https://idp.test", "aud": "herald"}),
    );
    let (mut c, _) = node.connect_token(&good).await;
    c.ping_ok().await;
    for (what, claims) in [
        (
            "wrong iss",
            json!({"sub": "i", "exp": now + 600, "iss": "https://evil", "aud": "herald"}),
        ),
        (
            "wrong aud",
            json!({"sub": "i", "exp": now + 600, "iss": "https://idp.test", "aud": "other"}),
        ),
        ("no iss/aud", json!({"sub": "i", "exp": now + 600})),
    ] {
        let t = node.token_with_claims(&claims);
        let err = WsClient::connect(&node.ws_url(), TokenIn::Header(t))
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: upgrade accepted"));
        assert_eq!(
            upgrade_status(&err),
            Some(401),
            "{what}: {}",
            describe_ws_error(&err)
        );
    }
}
