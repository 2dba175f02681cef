//! The join, send and RPC proxies against the real test backend
//! (tests/backend): `join = "proxy"` allow and deny with the answer's
//! cache TTL, `send = "proxy"`, RPC round trips and their errors, scoped
//! rooms, and the proxy metrics on `/metrics`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

fn access_toml(backend: &Backend, extra: &str) -> String {
    format!(
        "[proxy]\nconnect_url = \"{}\"\njoin_url = \"{}\"\nsend_url = \"{}\"\nrpc_url = \"{}\"\n\
         timeout = \"500ms\"\n{extra}\n\
         [namespaces.chat]\njoin = \"proxy\"\nsend = \"proxy\"\n",
        backend.url("/connect"),
        backend.url("/join"),
        backend.url("/send"),
        backend.url("/rpc"),
    )
}

async fn opaque(node: &TestNode, user: &str) -> WsClient {
    node.connect_token(&format!("opaque:{user}")).await.0
}

async fn join_reply(c: &mut WsClient, room: &str) -> Value {
    c.request(json!({"type": "join_room", "room": room})).await
}

async fn leave(c: &mut WsClient, room: &str) {
    let reply = c.request(json!({"type": "leave_room", "room": room})).await;
    assert_ne!(reply["type"], "error", "leave {room}: {reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_proxy_allows_denies_and_caches_for_the_ttl() {
    let backend = Backend::start().await;
    backend
        .configure(json!({"join": {"allow": {"chat:9": true}, "cache_ttl": "30s"}}))
        .await;
    let node = TestNode::start(&access_toml(&backend, "")).await;
    let mut c = opaque(&node, "alice").await;
    c.join("chat:9").await;
    let denied = join_reply(&mut c, "chat:8").await;
    assert_eq!(denied["code"], "forbidden", "{denied}");
    let calls = backend.calls("join").await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0]["room"], "chat:9");
    assert_eq!(calls[0]["user_id"], "alice");
    assert!(calls[0]["tenant"].is_null(), "{calls:?}");
    assert!(calls[0]["roles"].is_array() && calls[0]["claims"].is_object());
    // Within the TTL the connection's cache answers, allow and deny alike.
    leave(&mut c, "chat:9").await;
    c.join("chat:9").await;
    assert_eq!(join_reply(&mut c, "chat:8").await["code"], "forbidden");
    assert_eq!(
        backend.calls("join").await.len(),
        2,
        "answered from the cache"
    );
    // Another connection has its own cache.
    let mut other = opaque(&node, "alice").await;
    other.join("chat:9").await;
    assert_eq!(backend.calls("join").await.len(), 3);

    // After the TTL the backend is asked again.
    backend.reset().await;
    backend
        .configure(json!({"join": {"allow": {"chat:10": true}, "cache_ttl": "1s"}}))
        .await;
    c.join("chat:10").await;
    leave(&mut c, "chat:10").await;
    c.join("chat:10").await;
    assert_eq!(backend.calls("join").await.len(), 1, "cached for 1s");
    leave(&mut c, "chat:10").await;
    // The TTL itself is what this waits out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.join("chat:10").await;
    assert_eq!(
        backend.calls("join").await.len(),
        2,
        "asked again after the TTL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_proxy_failures_are_unavailable_and_not_cached() {
    let backend = Backend::start().await;
    backend
        .configure(json!({"join": {"mode": "fail", "allow": {"chat:1": true}, "cache_ttl": "30s"}}))
        .await;
    let node = TestNode::start(&access_toml(&backend, "")).await;
    let mut c = opaque(&node, "bob").await;
    let reply = join_reply(&mut c, "chat:1").await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
    backend.configure(json!({"join": {"mode": "ok"}})).await;
    c.join("chat:1").await;
    assert_eq!(backend.calls("join").await.len(), 2);
    // A slow backend: the timeout answers, the connection stays usable.
    backend
        .configure(json!({"join": {"mode": "slow", "delay_ms": 3000, "allow": {"chat:2": true}}}))
        .await;
    let reply = join_reply(&mut c, "chat:2").await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
    c.ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_proxy_decides_per_event() {
    let backend = Backend::start().await;
    backend
        .configure(json!({
            "join": {"allow": {"chat:9": true}},
            "send": {"allow": {"chat:9 typing": true}}
        }))
        .await;
    let node = TestNode::start(&access_toml(&backend, "")).await;
    let mut c = opaque(&node, "carol").await;
    c.join("chat:9").await;
    let ok = c
        .request(json!({"type": "send_message", "room": "chat:9", "event": "typing", "data": {}}))
        .await;
    assert_eq!(ok["type"], "ack", "{ok}");
    let refused = c
        .request(json!({"type": "send_message", "room": "chat:9", "event": "shout", "data": {}}))
        .await;
    assert_eq!(refused["code"], "forbidden", "{refused}");
    let calls = backend.calls("send").await;
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0]["room"], "chat:9");
    assert_eq!(calls[0]["event"], "typing");
    assert_eq!(calls[1]["event"], "shout");
    assert_eq!(calls[0]["user_id"], "carol");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_round_trips_and_maps_errors() {
    let backend = Backend::start().await;
    let node = TestNode::start(&access_toml(&backend, "")).await;
    let (mut c, auth) = node.connect_token("opaque:dora:acme").await;
    let reply = c
        .request(json!({"type": "rpc", "method": "select_chat", "data": {"chat": 9}}))
        .await;
    assert_eq!(reply["type"], "rpc_result", "{reply}");
    assert_eq!(
        reply["data"],
        json!({"method": "select_chat", "data": {"chat": 9}, "user_id": "dora"})
    );
    let calls = backend.calls("rpc").await;
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        calls[0]["connection_id"], auth["connection_id"],
        "{calls:?}"
    );
    assert_eq!(calls[0]["tenant"], "acme", "{calls:?}");
    // The backend's 400 with a message: `bad_request` with that message.
    let reply = c
        .request(json!({"type": "rpc", "method": "error", "data": null}))
        .await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
    assert_eq!(reply["message"], "rpc error requested", "{reply}");
    // The backend failing: `unavailable`.
    backend.configure(json!({"rpc": {"mode": "fail"}})).await;
    let reply = c
        .request(json!({"type": "rpc", "method": "select_chat"}))
        .await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
    c.ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_rooms_belong_to_their_owner() {
    let backend = Backend::start().await;
    let node = TestNode::start(&access_toml(&backend, "")).await;
    let mut owner = opaque(&node, "42").await;
    owner.join("user:42:operation:7").await;
    let mut stranger = opaque(&node, "420").await;
    let reply = join_reply(&mut stranger, "user:42:operation:7").await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    // A JWT user with a claim: `collection:c5:status` is c5's.
    let token = node.token_with_claims(&json!({"sub": "eve", "collections": ["c5"]}));
    let (mut eve, _) = node.connect_token(&token).await;
    eve.join("collection:c5:status").await;
    let reply = join_reply(&mut eve, "collection:c6:status").await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    assert!(
        backend.calls("join").await.is_empty(),
        "static rules ask nobody"
    );
}

/// `/metrics` needs the node in its own process (one recorder per process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_metrics_are_exported() {
    let backend = Backend::start().await;
    backend
        .configure(json!({"join": {"allow": {"chat:9": true}}}))
        .await;
    let node = TestNode::start_process(&access_toml(&backend, "")).await;
    let mut c = opaque(&node, "mia").await;
    c.join("chat:9").await;
    let reply = c.request(json!({"type": "rpc", "method": "m"})).await;
    assert_eq!(reply["type"], "rpc_result", "{reply}");
    let (_, text) = node.get("/metrics").await;
    for needle in [
        "herald_proxy_calls_total{kind=\"connect\",outcome=\"ok\"} 1",
        "herald_proxy_calls_total{kind=\"join\",outcome=\"ok\"} 1",
        "herald_proxy_calls_total{kind=\"rpc\",outcome=\"ok\"} 1",
        "herald_proxy_duration_seconds_count{kind=\"join\"} 1",
        "herald_proxy_breaker_open{kind=\"connect\"} 0",
        "herald_proxy_breaker_open{kind=\"send\"} 0",
    ] {
        assert!(
            text.contains(needle),
            "{needle} missing from /metrics:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_rooms_in_proxy_namespaces_ask_the_backend() {
    let backend = Backend::start().await;
    backend
        .configure(json!({"join": {"allow": {"chat:9": true}}}))
        .await;
    let node = TestNode::start(&access_toml(&backend, "")).await;
    let mut s = common::sse::open_ok(&node, "?token=opaque:sam&rooms=chat:9", &[]).await;
    let (_, joined) = common::sse::read_opening(&mut s, 3).await;
    assert!(joined.contains_key("chat:9"), "{joined:?}");
    let (status, body) = common::sse::open_sse(&node, "?token=opaque:sam&rooms=chat:8", &[])
        .await
        .err()
        .expect("the backend denies chat:8");
    assert_eq!(status, 403, "{body}");
    let rooms: Vec<Value> = backend.calls("join").await;
    assert_eq!(rooms.len(), 2, "{rooms:?}");
}
