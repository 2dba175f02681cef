//! `herald.v1.msgpack` against a real node: negotiation, authentication,
//! joins, events, presence, resume with `since`, errors and pings in
//! MessagePack binary frames, a JSON and a MessagePack client in one
//! fan-out, and publishing with `Content-Type: application/msgpack`.
//! The client encodes with rmp-serde and reads with rmpv, not with
//! Herald's own codec.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const CONFIG: &str = r#"
[namespaces.chat]
join = "any"
send = "any"
presence = true
history_size = 50
history_ttl = "10m"
"#;

/// A MessagePack client: every frame it reads is a binary message holding
/// one MessagePack map, kept as its JSON-like tree and its raw value.
struct MsgpackClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The subprotocol the server answered with.
    protocol: Option<String>,
    next_id: u64,
}

/// One frame read by a [`MsgpackClient`].
#[derive(Debug)]
#[allow(dead_code)] // Fields are read through Debug in panics.
enum Read {
    Frame(Value, rmpv::Value),
    Text(String),
    /// The connection ended (with the close code, when one came).
    Closed(Option<u16>),
    Timeout,
}

impl MsgpackClient {
    async fn connect(node: &TestNode, offer: &str, token: Option<&str>) -> MsgpackClient {
        let mut req = node.ws_url().into_client_request().expect("request");
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(offer).expect("header"),
        );
        if let Some(t) = token {
            req.headers_mut().insert(
                "Authorization",
                HeaderValue::from_str(&format!("Bearer {t}")).expect("header"),
            );
        }
        let (ws, resp) = tokio::time::timeout(FRAME_WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("upgrade in time")
            .unwrap_or_else(|e| panic!("upgrade failed: {}", describe_ws_error(&e)));
        let protocol = resp
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.to_str().expect("ascii").to_owned());
        MsgpackClient {
            ws,
            protocol,
            next_id: 1,
        }
    }

    async fn send(&mut self, frame: &Value) {
        let bytes = rmp_serde::to_vec_named(frame).expect("encode");
        self.send_bytes(bytes).await;
    }

    async fn send_bytes(&mut self, bytes: Vec<u8>) {
        tokio::time::timeout(FRAME_WAIT, self.ws.send(Message::binary(bytes)))
            .await
            .expect("send in time")
            .expect("send");
    }

    async fn read(&mut self, timeout: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let item = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Read::Timeout,
                Ok(None) | Ok(Some(Err(_))) => return Read::Closed(None),
                Ok(Some(Ok(m))) => m,
            };
            match item {
                Message::Binary(b) => {
                    let raw = rmpv::decode::read_value(&mut &b[..]).expect("one MessagePack value");
                    let tree: Value = rmp_serde::from_slice(&b).expect("MessagePack as JSON");
                    return Read::Frame(tree, raw);
                }
                Message::Text(t) => return Read::Text(t.as_str().to_owned()),
                Message::Close(f) => return Read::Closed(f.map(|f| u16::from(f.code))),
                _ => continue,
            }
        }
    }

    /// Reads until a frame matching `want` arrives (by the deadline).
    async fn expect(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> (Value, rmpv::Value) {
        let mut skipped = Vec::new();
        let deadline = tokio::time::Instant::now() + FRAME_WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await {
                Read::Frame(v, raw) if want(&v) => return (v, raw),
                Read::Frame(v, _) => skipped.push(v),
                other => panic!("expected {what}, got {other:?} after {skipped:?}"),
            }
        }
    }

    async fn expect_type(&mut self, ty: &str) -> Value {
        self.expect(ty, |v| v["type"] == ty).await.0
    }

    async fn request(&mut self, mut req: Value) -> Value {
        let id = json!(self.next_id);
        self.next_id += 1;
        req["id"] = id.clone();
        self.send(&req).await;
        self.expect(&format!("reply to {req}"), |v| v["id"] == id)
            .await
            .0
    }
}

/// The field `name` of a MessagePack map.
fn field<'a>(map: &'a rmpv::Value, name: &str) -> &'a rmpv::Value {
    map.as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_str() == Some(name)))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no field {name} in {map}"))
}

/// POSTs a MessagePack body to the API with the admin key.
async fn post_msgpack(node: &TestNode, path: &str, body: &Value) -> (u16, Value) {
    post_msgpack_bytes(node, path, rmp_serde::to_vec_named(body).expect("encode")).await
}

async fn post_msgpack_bytes(node: &TestNode, path: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", node.url()))
        .header("Authorization", format!("Bearer {ADMIN_KEY}"))
        .header("Content-Type", "application/msgpack")
        .body(body)
        .send()
        .await
        .expect("API call");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_and_json_clients_share_a_fan_out() {
    let node = TestNode::start(CONFIG).await;
    let mut m = MsgpackClient::connect(&node, "herald.v1.msgpack", None).await;
    assert_eq!(m.protocol.as_deref(), Some("herald.v1.msgpack"));
    let auth = m
        .request(json!({"type": "authenticate", "token": node.user_token("mia")}))
        .await;
    assert_eq!(auth["type"], "authenticated", "{auth}");
    assert_eq!(auth["user_id"], "mia");
    let joined = m
        .request(json!({"type": "join_room", "room": "chat:1"}))
        .await;
    assert_eq!(joined["type"], "room_joined", "{joined}");
    assert_eq!(joined["members"].as_array().map(Vec::len), Some(1));

    let (mut j, _) = node.connect_user("jay").await;
    j.join("chat:1").await;
    let seen = m.expect_type("member_joined").await;
    assert_eq!(seen["user_id"], "jay");
    let presence = m
        .request(json!({"type": "presence", "room": "chat:1"}))
        .await;
    assert_eq!(presence["type"], "presence");
    assert_eq!(presence["members"].as_array().map(Vec::len), Some(2));
    let pong = m.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");

    // JSON published over HTTP reaches both, with native values for msgpack.
    let data = json!({"n": 3, "f": 2.5, "s": "é", "list": [1, null, true]});
    node.publish("chat:1", "tick", data.clone()).await;
    let (event, raw) = m.expect("the JSON event", |v| v["type"] == "event").await;
    assert_eq!(event["data"], data);
    assert_eq!(event["room"], "chat:1");
    let raw_data = field(&raw, "data");
    assert!(field(raw_data, "n").is_u64() && field(raw_data, "f").is_f64());
    let json_event = j.expect_type("event", FRAME_WAIT).await;
    assert_eq!(json_event["data"], data);
    assert_eq!(json_event["offset"], event["offset"]);

    // MessagePack published over HTTP reaches both too.
    let packed = json!({"room": "chat:1", "event": "packed", "data": {"k": [7, -8]}});
    let (status, answer) = post_msgpack(&node, "/api/v1/publish", &packed).await;
    assert_eq!(status, 200, "{answer}");
    let event = m.expect_type("event").await;
    assert_eq!(
        (&event["event"], &event["data"]),
        (&json!("packed"), &packed["data"])
    );
    let json_event = j.expect_type("event", FRAME_WAIT).await;
    assert_eq!(json_event["data"], packed["data"]);
    assert_eq!(json_event["offset"], answer["offset"]);

    // A broadcast body in MessagePack as well.
    let body = json!({"rooms": ["chat:1"], "event": "many", "data": 1});
    let (status, answer) = post_msgpack(&node, "/api/v1/broadcast", &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(m.expect_type("event").await["event"], "many");

    // A msgpack client's message reaches the JSON client as JSON.
    let ack = m
        .request(json!({"type": "send_message", "room": "chat:1", "data": {"hi": [1, 2]}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let message = j.expect_type("message", FRAME_WAIT).await;
    assert_eq!(message["data"], json!({"hi": [1, 2]}));
    assert_eq!(message["from"]["user_id"], "mia");
    assert_eq!(message["offset"], ack["offset"]);

    // Resume: a new msgpack client with `since` gets what it missed.
    let token = node.user_token("mia");
    let mut late = MsgpackClient::connect(&node, "herald.v1.msgpack", Some(&token)).await;
    late.expect_type("authenticated").await;
    let since = json!({"epoch": joined["epoch"], "offset": joined["offset"]});
    let rejoined = late
        .request(json!({"type": "join_room", "room": "chat:1", "since": since}))
        .await;
    assert_eq!(rejoined["recovered"], true, "{rejoined}");
    assert_eq!(rejoined["replayed"], 4, "{rejoined}");
    let mut names = Vec::new();
    for _ in 0..4 {
        let replayed = late
            .expect("a replayed event", |v| {
                v["type"] == "event" || v["type"] == "message"
            })
            .await
            .0;
        names.push(replayed["event"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(names, ["tick", "packed", "many", "message"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_like_bad_json() {
    let node = TestNode::start(CONFIG).await;
    let token = node.user_token("eve");
    let mut m = MsgpackClient::connect(&node, "herald.v1.msgpack", Some(&token)).await;
    m.expect_type("authenticated").await;

    // Not MessagePack at all.
    m.send_bytes(vec![0xc1]).await;
    let err = m.expect_type("error").await;
    assert_eq!(err["code"], "bad_request", "{err}");
    // A text frame on a MessagePack connection.
    m.ws.send(Message::text(r#"{"type":"ping","id":1}"#))
        .await
        .expect("send");
    let err = m.expect_type("error").await;
    assert!(
        err["message"].as_str().unwrap_or_default().contains("text"),
        "{err}"
    );
    // Binary data JSON cannot carry, with the request id kept.
    let mut frame = b"\x85\xa4type\xacsend_message\xa2id\x2a\xa4room\xa6chat:1".to_vec();
    frame.extend_from_slice(b"\xa5event\xa1x\xa4data\xc4\x03abc");
    m.send_bytes(frame).await;
    let err = m.expect_type("error").await;
    assert_eq!(
        (&err["id"], &err["code"]),
        (&json!(42), &json!("bad_request"))
    );
    assert!(
        err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("`data`"),
        "{err}"
    );
    let err = m.request(json!({"type": "dance"})).await;
    assert_eq!(err["code"], "unknown_type");
    // The connection is still open.
    assert_eq!(m.request(json!({"type": "ping"})).await["type"], "pong");

    // The API refuses bin in `data`, naming it.
    let mut body = b"\x83\xa4room\xa6chat:1\xa5event\xa1x\xa4data".to_vec();
    body.extend_from_slice(b"\x81\xa3raw\xc4\x01z");
    let (status, answer) = post_msgpack_bytes(&node, "/api/v1/publish", body).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "bad_request", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("`data.raw`"), "{answer}");
    let (status, _) = post_msgpack_bytes(&node, "/api/v1/publish", vec![0x93, 0x01]).await;
    assert_eq!(status, 400);

    // Before authentication too: text is refused, MessagePack still works.
    let mut pre = MsgpackClient::connect(&node, "herald.v1.msgpack", None).await;
    pre.ws
        .send(Message::text(r#"{"type":"ping"}"#))
        .await
        .expect("send");
    let err = pre.expect_type("error").await;
    assert_eq!(err["code"], "bad_request", "{err}");
    pre.send_bytes(vec![0xc1]).await;
    assert_eq!(pre.expect_type("error").await["code"], "bad_request");
    let auth = pre
        .request(json!({"type": "authenticate", "token": node.user_token("eve")}))
        .await;
    assert_eq!(auth["type"], "authenticated", "{auth}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_offered_encoding_wins() {
    let node = TestNode::start(CONFIG).await;
    let token = node.user_token("ann");
    // JSON offered first: JSON text frames.
    let mut c =
        MsgpackClient::connect(&node, "herald.v1.json, herald.v1.msgpack", Some(&token)).await;
    assert_eq!(c.protocol.as_deref(), Some("herald.v1.json"));
    match c.read(FRAME_WAIT).await {
        Read::Text(t) => assert!(t.contains("authenticated"), "{t}"),
        other => panic!("expected JSON text, got {other:?}"),
    }
    // Unknown offers first, then msgpack.
    let mut c = MsgpackClient::connect(&node, "mqtt, herald.v1.msgpack", Some(&token)).await;
    assert_eq!(c.protocol.as_deref(), Some("herald.v1.msgpack"));
    c.expect_type("authenticated").await;
    // No offer: JSON and no subprotocol, as before.
    let (mut plain, auth) = node.connect_user("bob").await;
    assert_eq!(auth["type"], "authenticated");
    assert_eq!(plain.request(json!({"type": "ping"})).await["type"], "pong");
}
