//! Direct messages (issue #16): `POST /api/v1/connections/{id}/send` and
//! `POST /api/v1/users/{user_id}/send` deliver an `event` frame with
//! `room: null` (no offset, no epoch) to one connection or to every
//! connection of a user, through WebSocket, SSE (a message without `id:`)
//! and Socket.IO, respecting each connection's event filter; on a cluster
//! (Redis and NATS, three nodes) to whatever node holds them.

mod common;

use common::cluster::TestCluster;
use common::sse::{open_ok, read_opening};
use common::*;
use futures_util::{SinkExt, StreamExt};
use herald_testkit::{NatsServer, RedisServer};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// POSTs a direct message with the publish key: (status, answer).
async fn send(node: &TestNode, path: &str, body: Value) -> (u16, Value) {
    node.api("POST", path, Some(PUBLISH_KEY), Some(body)).await
}

fn to_user(user: &str) -> String {
    format!("/api/v1/users/{user}/send")
}

fn to_connection(id: &str) -> String {
    format!("/api/v1/connections/{id}/send")
}

/// Asserts `frame` is the direct message `event` with `data`.
fn assert_direct(frame: &Value, event: &str, data: &Value) {
    assert_eq!(frame["type"], "event", "{frame}");
    assert_eq!(frame["room"], Value::Null, "room is null: {frame}");
    assert!(
        frame.as_object().is_some_and(|o| o.contains_key("room")),
        "room present as null: {frame}"
    );
    assert_eq!(frame["event"], event, "{frame}");
    assert_eq!(&frame["data"], data, "{frame}");
    assert!(frame.get("offset").is_none(), "no offset: {frame}");
    assert!(frame.get("epoch").is_none(), "no epoch: {frame}");
    assert!(frame["ts"].is_u64(), "{frame}");
    assert!(frame["event_id"].is_string(), "{frame}");
}

/// The next `event` frame of `c` (control frames skipped).
async fn next_event(c: &mut WsClient) -> Value {
    c.expect_type("event", FRAME_WAIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_one_connection_over_websocket() {
    let node = TestNode::start("").await;
    let (mut alice, auth) = node.connect_user("alice").await;
    let (mut alice2, _) = node.connect_user("alice").await;
    let id = auth["connection_id"].as_str().expect("connection id");
    let data = json!({"b": 2, "a": [1, {"z": null}]});
    let (status, answer) = send(
        &node,
        &to_connection(id),
        json!({"event": "note", "data": data}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["delivered"], 1, "{answer}");
    assert_direct(&next_event(&mut alice).await, "note", &data);
    // The other connection of the same user got nothing: its first event
    // is the one sent to it next.
    let id2 = alice2_id(&node).await;
    let (status, _) = send(
        &node,
        &to_connection(&id2),
        json!({"event": "second", "data": 2}),
    )
    .await;
    assert_eq!(status, 200);
    assert_direct(&next_event(&mut alice2).await, "second", &json!(2));
}

/// The id of alice's connection that is not the oldest.
async fn alice2_id(node: &TestNode) -> String {
    let (_, list) = node
        .api(
            "GET",
            "/api/v1/users/alice/connections",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    let conns = list["connections"].as_array().expect("connections");
    assert_eq!(conns.len(), 2, "{list}");
    conns[1]["connection_id"].as_str().expect("id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_a_user_over_websocket_sse_and_socketio_with_filters() {
    let node = TestNode::start("").await;
    let (mut ws, _) = node.connect_user("carol").await;
    // A second WebSocket that only wants `task.*` events.
    let (mut filtered, _) = node.connect_user("carol").await;
    let reply = filtered
        .request(json!({"type": "subscribe", "events": ["task.*"]}))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    let token = node.user_token("carol");
    let mut sse = open_ok(&node, &format!("?token={token}"), &[]).await;
    read_opening(&mut sse, 2).await;
    let id_before = sse.seen.last().and_then(|m| m.id.clone());
    let mut sio = Sio::connect(&node, &token).await;
    // Someone else must not receive it.
    let (mut dave, _) = node.connect_user("dave").await;

    let data = json!({"text": "hello"});
    let (status, answer) = send(
        &node,
        &to_user("carol"),
        json!({"event": "note", "data": data}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["delivered"], 4, "every connection listed: {answer}");
    assert_direct(&next_event(&mut ws).await, "note", &data);
    let msg = sse.expect_event("event", FRAME_WAIT).await;
    assert_direct(&msg.json(), "note", &data);
    assert_eq!(msg.id, None, "no id: Last-Event-ID stays {id_before:?}");
    let args = sio.event("note").await;
    assert_eq!(args[0], data, "{args:?}");
    assert_eq!(args[1]["room"], Value::Null, "{args:?}");
    assert!(args[1].get("offset").is_none(), "{args:?}");

    // The filtered connection skipped `note`: its first event is `task.done`.
    let (status, _) = send(
        &node,
        &to_user("carol"),
        json!({"event": "task.done", "data": 1}),
    )
    .await;
    assert_eq!(status, 200);
    assert_direct(&next_event(&mut filtered).await, "task.done", &json!(1));
    // So did dave, who is not carol: his first event is his own.
    let (status, _) = send(&node, &to_user("dave"), json!({"event": "mine", "data": 0})).await;
    assert_eq!(status, 200);
    assert_direct(&next_event(&mut dave).await, "mine", &json!(0));
    // A user with no connection: nothing delivered, not an error.
    let (status, answer) = send(&node, &to_user("nobody"), json!({"event": "x", "data": 0})).await;
    assert_eq!((status, &answer["delivered"]), (200, &json!(0)), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_targets_bad_bodies_and_keys_are_refused() {
    let node = TestNode::start("").await;
    let (_alice, auth) = node.connect_user("alice").await;
    let id = auth["connection_id"].as_str().expect("id").to_owned();
    let body = json!({"event": "note", "data": 1});

    let (status, answer) = send(&node, &to_connection("no-such-connection"), body.clone()).await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"]["code"], "not_found", "{answer}");
    // Another tenant's view does not find alice (default tenant).
    let (status, answer) = send(
        &node,
        &to_connection(&id),
        json!({"event": "note", "data": 1, "tenant": "acme"}),
    )
    .await;
    assert_eq!(status, 404, "{answer}");

    for (bad, names) in [
        (json!({"data": 1}), "event"),
        (json!({"event": "", "data": 1}), "event"),
        (json!({"event": "x".repeat(256), "data": 1}), "event"),
        (json!({"event": "note"}), "data"),
        (json!({"event": "note", "data": 1, "room": "r"}), "room"),
        (
            json!({"event": "note", "data": 1, "tenant": "a b"}),
            "tenant",
        ),
    ] {
        for path in [to_user("alice"), to_connection(&id)] {
            let (status, answer) = send(&node, &path, bad.clone()).await;
            assert_eq!(status, 400, "{path} {bad}: {answer}");
            assert_eq!(answer["error"]["code"], "bad_request", "{answer}");
            let message = answer["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(names),
                "{bad}: `{message}` names `{names}`"
            );
        }
    }
    let deep = format!("{}1{}", "[".repeat(101), "]".repeat(101));
    let (status, answer) = node
        .api_raw(
            &to_user("alice"),
            Some(PUBLISH_KEY),
            &format!(r#"{{"event":"x","data":{deep}}}"#),
        )
        .await;
    assert_eq!(status, 400, "data nested too deep: {answer}");

    for path in [to_user("alice"), to_connection(&id)] {
        let (status, _) = node.api("POST", &path, None, Some(body.clone())).await;
        assert_eq!(status, 401, "{path} without a key");
        let (status, _) = node
            .api(
                "POST",
                &path,
                Some("not-a-key-0000000000000"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 401, "{path} with an unknown key");
        let (status, _) = node
            .api("POST", &path, Some(ADMIN_KEY), Some(body.clone()))
            .await;
        assert_eq!(status, 200, "{path}: admin holds publish");
    }
}

/// On a three-node cluster at `url`: sent through node A to a user with
/// connections on B and C, and to one connection on C.
async fn scenario_across_nodes(url: &str) {
    let cluster = TestCluster::start(3, url, "").await;
    let (a, b, c) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let (mut on_b, _) = b.connect_user("erin").await;
    let (mut on_c, auth_c) = c.connect_user("erin").await;
    let (mut other_on_c, other_auth) = c.connect_user("frank").await;
    let data = json!({"k": "v"});

    let (status, answer) = send(a, &to_user("erin"), json!({"event": "note", "data": data})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["delivered"], 2, "{answer}");
    assert_direct(&next_event(&mut on_b).await, "note", &data);
    assert_direct(&next_event(&mut on_c).await, "note", &data);

    let frank = other_auth["connection_id"].as_str().expect("id");
    let (status, answer) = send(
        a,
        &to_connection(frank),
        json!({"event": "just-you", "data": 7}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["delivered"], 1, "{answer}");
    assert_direct(&next_event(&mut other_on_c).await, "just-you", &json!(7));

    // erin's connection on C, addressed alone, then a sentinel to both of
    // hers: B's first event after `note` is the sentinel.
    let erin_c = auth_c["connection_id"].as_str().expect("id");
    let (status, _) = send(
        a,
        &to_connection(erin_c),
        json!({"event": "only-c", "data": 1}),
    )
    .await;
    assert_eq!(status, 200);
    assert_direct(&next_event(&mut on_c).await, "only-c", &json!(1));
    let (status, _) = send(a, &to_user("erin"), json!({"event": "sentinel", "data": 2})).await;
    assert_eq!(status, 200);
    assert_direct(&next_event(&mut on_b).await, "sentinel", &json!(2));

    let (status, answer) = send(a, &to_connection("gone"), json!({"event": "x", "data": 0})).await;
    assert_eq!(status, 404, "unknown cluster-wide: {answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_a_redis_cluster() {
    let redis = RedisServer::start();
    scenario_across_nodes(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_a_nats_cluster() {
    let nats = NatsServer::start();
    scenario_across_nodes(&nats.url()).await;
}

/// A minimal Socket.IO client over an Engine.IO WebSocket.
struct Sio {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Sio {
    /// Opens a session and sends CONNECT with `token`.
    async fn connect(node: &TestNode, token: &str) -> Sio {
        let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", node.addr());
        let (ws, _) = tokio::time::timeout(FRAME_WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("upgrade in time")
            .expect("upgrade");
        let mut sio = Sio { ws };
        let open = sio.next().await;
        assert!(open.starts_with("0{"), "open packet first: {open}");
        let connect = format!("40{}", json!({"token": token}));
        sio.ws
            .send(Message::text(connect))
            .await
            .expect("send CONNECT");
        let answer = sio.next().await;
        assert!(answer.starts_with("40{"), "CONNECT accepted: {answer}");
        sio.event("authenticated").await;
        sio
    }

    /// The next packet other than a ping (answered).
    async fn next(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(FRAME_WAIT, self.ws.next())
                .await
                .expect("a packet in time")
                .expect("socket open")
                .expect("readable");
            let Message::Text(text) = msg else { continue };
            if text.as_str() == "2" {
                self.ws.send(Message::text("3")).await.expect("pong");
                continue;
            }
            return text.to_string();
        }
    }

    /// The arguments of the next event named `name`, skipping others.
    async fn event(&mut self, name: &str) -> Vec<Value> {
        loop {
            let packet = self.next().await;
            let Some(rest) = packet.strip_prefix("42") else {
                continue;
            };
            let Ok(args) = serde_json::from_str::<Vec<Value>>(rest) else {
                continue;
            };
            if args.first().and_then(Value::as_str) == Some(name) {
                return args[1..].to_vec();
            }
        }
    }
}
