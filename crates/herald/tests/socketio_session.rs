//! The Socket.IO layer at the packet level (docs/protocol.md 8): a raw
//! Engine.IO WebSocket (`?EIO=4&transport=websocket`) speaking Socket.IO 5
//! packets by hand to a real node: CONNECT and its refusals, events with
//! `meta` and the recovery token, acks, binary refusal, presence, a kick,
//! and connection state recovery after a cut.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A hand-made Socket.IO client over an Engine.IO WebSocket.
struct Sio {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Every packet received, for failure messages.
    seen: Vec<String>,
    /// Packets an `ack` wait passed over, read again first.
    backlog: std::collections::VecDeque<String>,
}

/// One Socket.IO event: its name and arguments.
#[derive(Debug)]
struct Event {
    name: String,
    args: Vec<Value>,
}

impl Event {
    /// The recovery token: the last argument, a string.
    fn token(&self) -> String {
        self.args
            .last()
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no token in {self:?}"))
            .to_owned()
    }
}

impl Sio {
    /// Opens the Engine.IO session (its open packet read) at `query`.
    async fn open(node: &TestNode, query: &str) -> Sio {
        let url = format!(
            "ws://{}/socket.io/?EIO=4&transport=websocket{query}",
            node.addr()
        );
        let (ws, _) = tokio::time::timeout(FRAME_WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("upgrade in time")
            .expect("upgrade");
        let mut sio = Sio {
            ws,
            seen: Vec::new(),
            backlog: Default::default(),
        };
        let open = sio.next().await;
        assert!(open.starts_with("0{"), "open packet first: {open}");
        let handshake: Value = serde_json::from_str(&open[1..]).expect("handshake JSON");
        assert!(handshake["sid"].is_string(), "{handshake}");
        sio
    }

    /// Opens and sends CONNECT with `auth`; returns the answer's payload.
    async fn connect(node: &TestNode, auth: Value) -> (Sio, Value) {
        let mut sio = Sio::open(node, "").await;
        sio.send(&format!("40{auth}")).await;
        let answer = sio.next().await;
        assert!(answer.starts_with("40{"), "CONNECT accepted: {answer}");
        let answer = serde_json::from_str(&answer[2..]).expect("answer JSON");
        (sio, answer)
    }

    async fn send(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// The next Engine.IO packet other than a ping (answered); panics
    /// when none comes in time or the socket closes.
    async fn next(&mut self) -> String {
        self.try_next(FRAME_WAIT)
            .await
            .unwrap_or_else(|| panic!("no packet in time; seen {:?}", self.seen))
    }

    /// The next packet within `wait`, `None` on silence or close.
    async fn try_next(&mut self, wait: Duration) -> Option<String> {
        if let Some(packet) = self.backlog.pop_front() {
            return Some(packet);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            let text = match msg {
                Ok(Message::Text(t)) => t.to_string(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            };
            if text == "2" {
                self.send("3").await;
                continue;
            }
            self.seen.push(text.clone());
            return Some(text);
        }
    }

    /// The next event named `name`, skipping other packets.
    async fn event(&mut self, name: &str) -> Event {
        loop {
            let packet = self.next().await;
            if let Some(event) = parse_event(&packet) {
                if event.name == name {
                    return event;
                }
            }
        }
    }

    /// The ack of request `id`; other packets stay to be read next.
    async fn ack(&mut self, id: u64) -> Value {
        let prefix = format!("43{id}[");
        let mut passed = Vec::new();
        loop {
            let packet = self.next().await;
            if let Some(rest) = packet.strip_prefix(&prefix) {
                let args: Value =
                    serde_json::from_str(&format!("[{rest}")).expect("ack payload JSON");
                self.backlog.extend(passed);
                return args[0].clone();
            }
            passed.push(packet);
        }
    }

    /// Events received within `wait` of silence.
    async fn events_for(&mut self, wait: Duration) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some(packet) = self.try_next(wait).await {
            out.extend(parse_event(&packet));
        }
        out
    }
}

fn parse_event(packet: &str) -> Option<Event> {
    let rest = packet.strip_prefix("42")?;
    let args: Vec<Value> = serde_json::from_str(rest).ok()?;
    let name = args.first()?.as_str()?.to_owned();
    Some(Event {
        name,
        args: args[1..].to_vec(),
    })
}

fn project_token(node: &TestNode, sub: &str) -> String {
    node.token(
        sub,
        &[],
        None,
        json!({"projects": [7]}),
        Duration::from_secs(3600),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_with_auth_token_opens_a_herald_session() {
    let node = TestNode::start("").await;
    let token = node.user_token("alice");
    let (mut sio, answer) = Sio::connect(&node, json!({"token": token})).await;
    let pid = answer["pid"].as_str().expect("pid with recovery on");
    assert!(!pid.is_empty());
    let auth = sio.event("authenticated").await;
    assert_eq!(auth.args[0]["user_id"], "alice");
    assert_eq!(
        auth.args[0]["connection_id"], answer["sid"],
        "sid is the connection id"
    );
    assert!(
        auth.args[0].get("type").is_none(),
        "no envelope: {:?}",
        auth
    );
    assert!(auth.token().contains("user:alice~"), "{}", auth.token());
    let joined = sio.event("room_joined").await;
    assert!(joined.args[0]["room"].is_string());
    // Listed as a Socket.IO connection by the connections API.
    let (status, list) = node
        .api(
            "GET",
            "/api/v1/users/alice/connections",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["connections"][0]["transport"], "socketio", "{list}");
    // The handshake's query token serves when the CONNECT carries none.
    let mut sio = Sio::open(&node, &format!("&token={}", node.user_token("bob"))).await;
    sio.send("40").await;
    assert!(sio.next().await.starts_with("40{"));
    assert_eq!(sio.event("authenticated").await.args[0]["user_id"], "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_connect_errors_with_the_herald_code() {
    let node = TestNode::start("").await;
    let mut sio = Sio::open(&node, "").await;
    sio.send(r#"40{"token":"not.a.jwt"}"#).await;
    let refusal = sio.next().await;
    let body: Value = serde_json::from_str(
        refusal
            .strip_prefix("44")
            .unwrap_or_else(|| panic!("connect_error: {refusal}")),
    )
    .expect("JSON");
    assert_eq!(body["message"], "unauthorized", "{body}");
    assert_eq!(body["data"]["code"], "unauthorized");
    assert!(body["data"]["message"].is_string());

    let mut sio = Sio::open(&node, "").await;
    sio.send("40").await;
    let refusal = sio.next().await;
    assert!(
        refusal.starts_with(r#"44{"message":"unauthorized""#),
        "{refusal}"
    );

    let mut sio = Sio::open(&node, "").await;
    sio.send(r#"40/admin,{"token":"x"}"#).await;
    assert_eq!(
        sio.next().await,
        r#"44/admin,{"message":"invalid namespace"}"#
    );
    // The session stays open for a CONNECT on `/`.
    sio.send(&format!(r#"40{{"token":"{}"}}"#, node.user_token("carol")))
        .await;
    assert!(sio.next().await.starts_with("40{"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_carry_meta_and_token_and_requests_get_acks() {
    let node = TestNode::start("[namespaces.project]\nsend = \"any\"\n").await;
    let (mut sio, _) = Sio::connect(&node, json!({"token": project_token(&node, "alice")})).await;
    sio.send(r#"421["join_room",{"room":"project:7"}]"#).await;
    let ack = sio.ack(1).await;
    assert_eq!(ack["room"], "project:7", "{ack}");
    assert!(
        ack.get("type").is_none() && ack.get("id").is_none(),
        "{ack}"
    );
    let joined = loop {
        let joined = sio.event("room_joined").await;
        if joined.args[0]["room"] == "project:7" {
            break joined;
        }
    };
    assert!(joined.token().contains("project:7~"), "{}", joined.token());

    node.publish("project:7", "task.assigned", json!({"task": 1}))
        .await;
    let event = sio.event("task.assigned").await;
    assert_eq!(event.args[0], json!({"task": 1}));
    let meta = &event.args[1];
    assert_eq!(meta["room"], "project:7");
    assert_eq!(meta["offset"], 1);
    assert!(meta["epoch"].is_string() && meta["ts"].is_u64() && meta["event_id"].is_string());
    assert!(meta.get("from").is_none());
    let expected = format!("project:7~{}~1", meta["epoch"].as_str().unwrap_or_default());
    assert!(event.token().contains(&expected), "{}", event.token());

    sio.send(r#"422["send_message",{"room":"project:7","event":"chat","data":"hi"}]"#)
        .await;
    let sent = sio.ack(2).await;
    assert_eq!(sent["offset"], 2, "{sent}");
    let message = sio.event("chat").await;
    assert_eq!(message.args[0], "hi");
    assert_eq!(message.args[1]["from"]["user_id"], "alice");

    sio.send(r#"423["dance",{}]"#).await;
    assert_eq!(sio.ack(3).await["code"], "unknown_type");
    sio.send(r#"42["dance",{}]"#).await;
    assert_eq!(sio.event("error").await.args[0]["code"], "unknown_type");
    sio.send(r#"451-4["upload",{"_placeholder":true,"num":0}]"#)
        .await;
    let refused = sio.ack(4).await;
    assert_eq!(
        refused,
        json!({"code": "bad_request", "message": "binary attachments are not supported"})
    );
    sio.send(r#"425["join_room",{"room":"project:8"}]"#).await;
    assert_eq!(sio.ack(5).await["code"], "forbidden");
    sio.send(r#"426["leave_room",{"room":"project:7"}]"#).await;
    assert_eq!(sio.ack(6).await["room"], "project:7");
    let left = sio.event("room_left").await;
    assert!(!left.token().contains("project:7"), "{}", left.token());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lists_members_and_announces_them() {
    let node = TestNode::start("").await;
    let (mut a, _) = Sio::connect(&node, json!({"token": project_token(&node, "alice")})).await;
    a.send(r#"421["join_room",{"room":"project:7"}]"#).await;
    a.ack(1).await;
    let (mut b, answer_b) =
        Sio::connect(&node, json!({"token": project_token(&node, "bob")})).await;
    b.send(r#"42["subscribe",{"room":"project:7"}]"#).await;
    b.event("room_joined").await;
    let joined = a.event("member_joined").await;
    assert_eq!(
        (&joined.args[0]["room"], &joined.args[0]["user_id"]),
        (&json!("project:7"), &json!("bob"))
    );
    assert_eq!(joined.args[0]["connection_id"], answer_b["sid"]);
    a.send(r#"422["presence",{"room":"project:7"}]"#).await;
    let presence = a.ack(2).await;
    let mut users: Vec<&str> = presence["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["user_id"].as_str())
        .collect();
    users.sort_unstable();
    assert_eq!(users, ["alice", "bob"], "{presence}");
    a.send(r#"423["presence",{"room":"global"}]"#).await;
    assert_eq!(a.ack(3).await["code"], "bad_request");
    a.send(r#"424["presence",{"room":"project:9"}]"#).await;
    assert_eq!(a.ack(4).await["code"], "not_joined");
    drop(b);
    let left = a.event("member_left").await;
    assert_eq!(left.args[0]["user_id"], "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_is_a_herald_disconnect_event_then_41() {
    let node = TestNode::start("").await;
    let (mut sio, _) = Sio::connect(&node, json!({"token": node.user_token("alice")})).await;
    sio.event("authenticated").await;
    let (status, _) = node
        .api(
            "POST",
            "/api/v1/users/alice/disconnect",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200);
    // `disconnect` is reserved by socket.io-client: Herald's is prefixed.
    let bye = sio.event("herald:disconnect").await;
    assert_eq!(bye.args[0]["reconnect"], false, "{bye:?}");
    assert!(bye.args[0]["code"].is_u64());
    assert_eq!(sio.next().await, "41", "DISCONNECT after a kick");
}

/// Publishes `n` events to `room` named `tick`, numbered from `from`.
async fn publish_ticks(node: &TestNode, room: &str, from: u64, n: u64) {
    for i in from..from + n {
        node.publish(room, "tick", json!({"n": i})).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_a_cut_keeps_the_pid_and_replays_the_gap_once() {
    let node = TestNode::start("").await;
    let token = project_token(&node, "alice");
    let (mut sio, answer) = Sio::connect(&node, json!({"token": token})).await;
    let pid = answer["pid"].as_str().expect("pid").to_owned();
    sio.send(r#"421["join_room",{"room":"project:7"}]"#).await;
    sio.ack(1).await;
    publish_ticks(&node, "project:7", 1, 2).await;
    sio.event("tick").await;
    let last = sio.event("tick").await;
    assert_eq!(last.args[0]["n"], 2);
    let offset = last.token();
    // The cut: the TCP connection goes away without a goodbye.
    drop(sio);
    publish_ticks(&node, "project:7", 3, 3).await;
    let (mut back, answer) =
        Sio::connect(&node, json!({"token": token, "pid": pid, "offset": offset})).await;
    assert_eq!(answer["pid"], pid.as_str(), "same pid: recovered");
    assert_ne!(answer["sid"], json!(null));
    publish_ticks(&node, "project:7", 6, 1).await;
    let ticks: Vec<u64> = back
        .events_for(Duration::from_millis(500))
        .await
        .iter()
        .filter(|e| e.name == "tick")
        .filter_map(|e| e.args[0]["n"].as_u64())
        .collect();
    assert_eq!(ticks, [3, 4, 5, 6], "the gap once, in order, then live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_that_cannot_be_honoured_opens_a_fresh_connection() {
    let node = TestNode::start("").await;
    let token = project_token(&node, "alice");
    let (_, answer) = Sio::connect(&node, json!({"token": token})).await;
    let pid = answer["pid"].as_str().expect("pid").to_owned();
    // An epoch the room never had: its history cannot bridge the gap.
    let (mut sio, answer) = Sio::connect(
        &node,
        json!({"token": token, "pid": pid, "offset": "project:7~0000deadbeef~3"}),
    )
    .await;
    assert_ne!(answer["pid"], pid.as_str(), "a new pid: not recovered");
    let auth = sio.event("authenticated").await;
    assert!(!auth.token().contains("project:7"), "{}", auth.token());
    node.publish("project:7", "tick", json!({"n": 1})).await;
    let events = sio.events_for(Duration::from_millis(300)).await;
    assert!(
        events.iter().all(|e| e.name != "tick"),
        "not in the room it could not recover: {events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_connections_count_in_stats_and_metrics() {
    // A process: /metrics reads the Prometheus recorder, one per process.
    let node = TestNode::start_process("").await;
    let (mut sio, _) = Sio::connect(&node, json!({"token": node.user_token("alice")})).await;
    sio.event("authenticated").await;
    let (status, stats) = node
        .api("GET", "/api/v1/stats", Some(ADMIN_KEY), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(stats["connections"], 1, "{stats}");
    let (_, text) = node.get("/metrics").await;
    assert!(
        text.lines()
            .any(|l| l == r#"herald_connections_by_transport{transport="socketio"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"herald_connections_opened_total{transport="socketio"} 1"#),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_as_a_slow_consumer() {
    let node = TestNode::start(
        "[limits]\nsend_queue_messages = 64\nsend_queue_bytes = 262144\n\
         messages_per_second = 1000\nburst = 1000\n",
    )
    .await;
    let (mut sio, _) = Sio::connect(&node, json!({"token": node.user_token("alice")})).await;
    sio.event("authenticated").await;
    // The client reads nothing from here on: its socket buffers fill, then
    // the send queue, and the node cuts it (4011) instead of waiting.
    let big = "x".repeat(60_000);
    for _ in 0..400 {
        node.publish("user:alice", "bulk", json!({"pad": big}))
            .await;
    }
    // Its session ends once the last packets had their bounded chance.
    let deadline = tokio::time::Instant::now() + FRAME_WAIT;
    loop {
        let (_, list) = node
            .api(
                "GET",
                "/api/v1/users/alice/connections",
                Some(ADMIN_KEY),
                None,
            )
            .await;
        if list["connections"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the non-reading client was never cut: {list}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(sio);
    let log = node.log();
    assert!(
        log.contains("slow_consumer"),
        "closed as a slow consumer:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_follows_socketio_path_and_enabled() {
    let node = TestNode::start("[socketio]\npath = \"/rt/io/\"\n").await;
    let (status, body) = node.get("/rt/io/?EIO=4&transport=polling").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("0{"), "Engine.IO handshake: {body}");
    let (status, _) = node.get("/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(status, 404, "not at the default path any more");
    let node = TestNode::start("[socketio]\nenabled = false\n").await;
    let (status, _) = node.get("/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_larger_than_the_send_queue_is_replayed_in_paced_slices() {
    let node = TestNode::start(
        "[limits]\nsend_queue_messages = 32\n\n[namespaces.chat]\njoin = \"any\"\n\
         history_size = 1000\nhistory_ttl = \"10m\"\n",
    )
    .await;
    let token = node.user_token("alice");
    let (mut sio, answer) = Sio::connect(&node, json!({"token": token})).await;
    let pid = answer["pid"].as_str().expect("pid").to_owned();
    sio.send(r#"421["join_room",{"room":"chat:big"}]"#).await;
    sio.ack(1).await;
    publish_ticks(&node, "chat:big", 1, 1).await;
    let offset = sio.event("tick").await.token();
    drop(sio);
    publish_ticks(&node, "chat:big", 2, 300).await;
    let (mut back, answer) =
        Sio::connect(&node, json!({"token": token, "pid": pid, "offset": offset})).await;
    assert_eq!(answer["pid"], pid.as_str(), "recovered");
    let ticks: Vec<u64> = back
        .events_for(Duration::from_millis(500))
        .await
        .iter()
        .filter(|e| e.name == "tick")
        .filter_map(|e| e.args[0]["n"].as_u64())
        .collect();
    assert_eq!(
        ticks,
        (2..=301).collect::<Vec<_>>(),
        "every missed event once, in order"
    );
}
