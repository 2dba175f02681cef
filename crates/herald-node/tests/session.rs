//! The session and fan-out driven directly, without a socket: frames go in
//! through `Session::handle_text` and come out of the connection's queue.

use async_trait::async_trait;
use herald_broker_memory::MemoryBroker;
use herald_core::Tenant;
use herald_core::{Identity, Namespaces, TokenVerifier, VerifyError};
use herald_node::{
    Limits, Node, NodeSettings, OpenOptions, Outbound, PerUserPolicy, PublishInput, Session,
    Transport,
};
use herald_protocol::CloseCode;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Accepts tokens that are JSON identities: `{"sub": "...", ...claims}`.
struct JsonVerifier;

#[async_trait]
impl TokenVerifier for JsonVerifier {
    async fn verify(&self, token: &str) -> Result<Identity, VerifyError> {
        let claims: serde_json::Map<String, Value> =
            serde_json::from_str(token).map_err(|e| VerifyError {
                reason: "malformed",
                message: e.to_string(),
            })?;
        let mut id = Identity::new(claims.get("sub").and_then(Value::as_str).unwrap_or("anon"));
        id.claims = claims;
        Ok(id)
    }
}

/// The shipped namespaces plus `stream` (join any, deep history, no
/// presence) for the race test.
fn namespaces() -> Namespaces {
    let mut ns = Namespaces::shipped();
    ns.insert(
        "stream",
        herald_core::NamespaceConfig {
            join: herald_core::Rule::Any,
            history_size: 5000,
            history_ttl: Duration::from_secs(3600),
            ..Default::default()
        },
    );
    ns
}

fn node_with(limits: Limits) -> Node {
    Node::new(
        NodeSettings {
            node_id: "n1".into(),
            access_proxy: None,
            limits,
            namespaces: namespaces(),
            hooks: herald_core::HookSet::empty(),
        },
        Arc::new(JsonVerifier),
        |sink| Arc::new(MemoryBroker::new(sink)),
    )
}

fn identity(sub: &str, claims: Value) -> Identity {
    let mut id = Identity::new(sub);
    if let Value::Object(map) = claims {
        id.claims = map;
    }
    id
}

async fn open(node: &Node, sub: &str, claims: Value) -> Session {
    node.open_session(
        identity(sub, claims),
        &Transport::WEBSOCKET,
        OpenOptions::default(),
    )
    .await
    .expect("admitted")
}

/// Every JSON frame queued so far (waits up to 2 s for the first).
async fn frames(session: &Session) -> Vec<Value> {
    let mut batch = Vec::new();
    let conn = session.connection();
    if conn.queue.is_empty() {
        let _ =
            tokio::time::timeout(Duration::from_secs(2), conn.queue.next_batch(&mut batch)).await;
    } else {
        conn.queue.next_batch(&mut batch).await;
    }
    batch
        .into_iter()
        .filter_map(|o| match o {
            Outbound::Frame { bytes, .. } => serde_json::from_slice(&bytes).ok(),
            Outbound::Ping | Outbound::Raw(_) => None,
        })
        .collect()
}

async fn publish(node: &Node, room: &str, event: &str, n: u64) -> u64 {
    node.publish(PublishInput {
        tenant: Tenant::default_tenant(),
        room: room.into(),
        event: event.into(),
        data: serde_json::value::to_raw_value(&json!({ "n": n })).expect("raw"),
        idempotency_key: None,
        exclude_connection: None,
        critical: false,
        conflation_key: None,
    })
    .await
    .expect("publish")
    .position
    .offset
}

#[tokio::test]
async fn authenticated_comes_first_with_auto_joined_rooms() {
    let node = node_with(Limits::default());
    let s = open(&node, "42", json!({})).await;
    let f = frames(&s).await;
    assert_eq!(f[0]["type"], "authenticated");
    let rooms: Vec<&str> = f[0]["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .map(|r| r["room"].as_str().expect("name"))
        .collect();
    assert_eq!(rooms, vec!["global", "user:42"]);
    publish(&node, "user:42", "hello", 1).await;
    let f = frames(&s).await;
    assert_eq!(f[0]["type"], "event");
    assert_eq!(f[0]["offset"], 1);
}

#[tokio::test]
async fn join_then_events_in_order_with_one_reply_per_request() {
    let node = node_with(Limits::default());
    let mut s = open(&node, "7", json!({"projects": [7]})).await;
    frames(&s).await;
    publish(&node, "project:7", "before", 0).await;
    s.handle_text(r#"{"type":"join_room","id":1,"room":"project:7"}"#)
        .await;
    let f = frames(&s).await;
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0]["type"], "room_joined");
    assert_eq!(f[0]["id"], 1);
    assert_eq!(f[0]["offset"], 1);
    for i in 0..50 {
        publish(&node, "project:7", "tick", i).await;
    }
    let f = frames(&s).await;
    let offsets: Vec<u64> = f
        .iter()
        .map(|v| v["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(offsets, (2..=51).collect::<Vec<_>>());
}

#[tokio::test]
async fn resume_with_since_replays_exactly_the_gap() {
    let node = node_with(Limits::default());
    let mut s = open(&node, "7", json!({"projects": [7]})).await;
    frames(&s).await;
    s.handle_text(r#"{"type":"join_room","id":1,"room":"project:7"}"#)
        .await;
    let epoch = frames(&s).await[0]["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    for i in 0..10 {
        publish(&node, "project:7", "e", i).await;
    }
    let mut t = open(&node, "7", json!({"projects": [7]})).await;
    frames(&t).await;
    let join =
        json!({"type":"join_room","id":2,"room":"project:7","since":{"epoch": epoch, "offset": 4}});
    t.handle_text(&join.to_string()).await;
    let f = frames(&t).await;
    assert_eq!(f[0]["type"], "room_joined");
    assert_eq!(f[0]["recovered"], true);
    assert_eq!(f[0]["replayed"], 6);
    let offsets: Vec<u64> = f[1..]
        .iter()
        .map(|v| v["offset"].as_u64().expect("offset"))
        .collect();
    assert_eq!(offsets, (5..=10).collect::<Vec<_>>());
    let bad = json!({"type":"join_room","id":3,"room":"project:7","since":{"epoch": "other", "offset": 4}});
    t.handle_text(&bad.to_string()).await;
    let f = frames(&t).await;
    assert_eq!(f[0]["recovered"], false);
    assert_eq!(f[0]["offset"], 10);
    assert_eq!(f.len(), 1);
}

/// Publishes keep arriving while clients join with `since` at random
/// points: each must see every offset after its `since` exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_racing_publishes_have_no_gap_and_no_duplicate() {
    let node = node_with(Limits::default());
    const TOTAL: u64 = 3000;
    let publisher = {
        let node = node.clone();
        tokio::spawn(async move {
            for i in 1..=TOTAL {
                publish(&node, "stream:1", "e", i).await;
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let mut checks = Vec::new();
    for k in 0..20u64 {
        let node = node.clone();
        checks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(k * 700)).await;
            let pos = node
                .position(&herald_core::RoomKey::new(
                    Tenant::default_tenant(),
                    herald_core::RoomName::parse("stream:1").expect("room"),
                ))
                .await
                .expect("position");
            let since = pos.offset.saturating_sub(k * 3);
            let mut s = open(&node, &format!("u{k}"), json!({})).await;
            frames(&s).await;
            let join = json!({"type":"join_room","room":"stream:1","since":{"epoch": pos.epoch, "offset": since}});
            s.handle_text(&join.to_string()).await;
            let mut seen = Vec::new();
            let mut joined = false;
            while seen.last().copied().unwrap_or(since) < TOTAL {
                let f = frames(&s).await;
                assert!(!f.is_empty(), "stalled after {:?}", seen.last());
                for v in f {
                    match v["type"].as_str() {
                        Some("room_joined") => {
                            assert_eq!(v["recovered"], true);
                            joined = true;
                        }
                        Some("event") => seen.push(v["offset"].as_u64().expect("offset")),
                        other => panic!("unexpected frame {other:?}"),
                    }
                }
            }
            assert!(joined);
            assert_eq!(seen, (since + 1..=TOTAL).collect::<Vec<_>>(), "client {k}");
        }));
    }
    publisher.await.expect("publisher");
    for c in checks {
        c.await.expect("client");
    }
}

#[tokio::test]
async fn filter_applies_to_events_not_messages() {
    let mut ns = Namespaces::shipped();
    ns.insert(
        "chat",
        herald_core::NamespaceConfig {
            join: herald_core::Rule::Any,
            send: herald_core::Rule::Any,
            ..Default::default()
        },
    );
    let node = Node::new(
        NodeSettings {
            node_id: "n".into(),
            access_proxy: None,
            limits: Limits::default(),
            namespaces: ns,
            hooks: herald_core::HookSet::empty(),
        },
        Arc::new(JsonVerifier),
        |sink| Arc::new(MemoryBroker::new(sink)),
    );
    let mut s = open(&node, "a", json!({})).await;
    frames(&s).await;
    s.handle_text(r#"{"type":"join_room","room":"chat:1"}"#)
        .await;
    s.handle_text(r#"{"type":"subscribe","id":1,"events":["agent.*"]}"#)
        .await;
    let f = frames(&s).await;
    assert_eq!(f[1]["type"], "ack");
    publish(&node, "chat:1", "project.updated", 1).await;
    publish(&node, "chat:1", "agent.tool.completed", 2).await;
    s.handle_text(r#"{"type":"send_message","id":2,"room":"chat:1","data":"hi"}"#)
        .await;
    let f = frames(&s).await;
    let kinds: Vec<(&str, &str)> = f
        .iter()
        .map(|v| {
            (
                v["type"].as_str().unwrap_or(""),
                v["event"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("event", "agent.tool.completed"),
            ("message", "message"),
            ("ack", "")
        ]
    );
}

#[tokio::test]
async fn slow_consumer_is_cut_without_slowing_others() {
    let limits = Limits {
        send_queue_messages: 20,
        ..Limits::default()
    };
    let node = node_with(limits);
    let slow = open(&node, "slow", json!({})).await;
    let fast = open(&node, "fast", json!({})).await;
    frames(&fast).await;
    let mut got = 0;
    for i in 0..100 {
        publish(&node, "global", "e", i).await;
        got += frames(&fast).await.len();
    }
    assert_eq!(got, 100);
    assert_eq!(
        slow.connection().queue.closing(),
        Some(CloseCode::SlowConsumer)
    );
}

#[tokio::test]
async fn per_user_policies() {
    let reject = node_with(Limits {
        max_connections_per_user: 1,
        ..Limits::default()
    });
    let _a = open(&reject, "u", json!({})).await;
    let refused = reject
        .open_session(
            identity("u", json!({})),
            &Transport::WEBSOCKET,
            OpenOptions::default(),
        )
        .await;
    assert_eq!(refused.err(), Some(CloseCode::TooManyConnections));

    let evict = node_with(Limits {
        max_connections_per_user: 2,
        per_user_policy: PerUserPolicy::EvictOldest,
        ..Limits::default()
    });
    let first = open(&evict, "u", json!({})).await;
    let second = open(&evict, "u", json!({})).await;
    let _third = open(&evict, "u", json!({})).await;
    assert_eq!(
        first.connection().queue.closing(),
        Some(CloseCode::SessionReplaced)
    );
    assert_eq!(second.connection().queue.closing(), None);

    let exclusive = node_with(Limits {
        per_user_policy: PerUserPolicy::Exclusive,
        ..Limits::default()
    });
    let old = open(&exclusive, "u", json!({})).await;
    let new = open(&exclusive, "u", json!({})).await;
    assert_eq!(
        old.connection().queue.closing(),
        Some(CloseCode::SessionReplaced)
    );
    assert_eq!(new.connection().queue.closing(), None);
}

#[tokio::test]
async fn rate_limit_refuses_then_recovers() {
    let node = node_with(Limits {
        messages_per_second: 1,
        burst: 3,
        ..Limits::default()
    });
    let mut s = open(&node, "r", json!({})).await;
    frames(&s).await;
    for i in 0..5 {
        s.handle_text(&json!({"type":"ping","id": i}).to_string())
            .await;
    }
    let f = frames(&s).await;
    let kinds: Vec<&str> = f.iter().map(|v| v["type"].as_str().unwrap_or("")).collect();
    assert_eq!(kinds, vec!["pong", "pong", "pong", "error", "error"]);
    assert_eq!(f[3]["code"], "rate_limited");
}

#[tokio::test]
async fn presence_tells_other_members() {
    let node = node_with(Limits::default());
    let mut a = open(&node, "a", json!({"projects": [1]})).await;
    let mut b = open(&node, "b", json!({"projects": [1]})).await;
    frames(&a).await;
    frames(&b).await;
    a.handle_text(r#"{"type":"join_room","room":"project:1"}"#)
        .await;
    frames(&a).await;
    b.handle_text(r#"{"type":"join_room","room":"project:1"}"#)
        .await;
    let fb = frames(&b).await;
    assert_eq!(fb[0]["members"].as_array().map(Vec::len), Some(2));
    let fa = frames(&a).await;
    assert_eq!(fa[0]["type"], "member_joined");
    assert_eq!(fa[0]["user_id"], "b");
    b.end("test").await;
    let fa = frames(&a).await;
    assert_eq!(fa[0]["type"], "member_left");
}

#[tokio::test]
async fn control_frames_share_the_rate_limit_with_text_frames() {
    let node = node_with(Limits {
        messages_per_second: 1,
        burst: 3,
        ..Limits::default()
    });
    let mut s = open(&node, "u", json!({})).await;
    frames(&s).await;
    assert!(s.handle_control(), "a ping within the burst");
    s.handle_text(r#"{"type":"ping","id":1}"#).await;
    assert!(s.handle_control(), "the third frame of the burst");
    assert!(!s.handle_control(), "a ping over the limit is refused");
    let f = frames(&s).await;
    let kinds: Vec<&str> = f.iter().map(|v| v["type"].as_str().unwrap_or("")).collect();
    assert_eq!(kinds, vec!["pong", "error"], "{f:?}");
    assert_eq!(f[1]["code"], "rate_limited");
}

#[tokio::test]
async fn socket_slots_cap_per_ip_and_pending_and_are_given_back() {
    use herald_node::SlotRefusal;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let node = node_with(Limits {
        max_connections: 3,
        max_connections_per_ip: 2,
        max_pending_connections: 1,
        ..Limits::default()
    });
    let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    // The same client over an IPv6 socket.
    let a_mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
    let b = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let s1 = node.reserve_socket_from(Some(a)).expect("first from a");
    let _s2 = node
        .reserve_socket_from(Some(a_mapped))
        .expect("second from a");
    assert_eq!(
        node.reserve_socket_from(Some(a)).err(),
        Some(SlotRefusal::IpAtCapacity)
    );
    assert!(!node.is_at_capacity(), "a refused address takes no slot");
    let _s3 = node.reserve_socket_from(Some(b)).expect("first from b");
    assert!(node.is_at_capacity());
    assert_eq!(
        node.reserve_socket_from(None).err(),
        Some(SlotRefusal::AtCapacity)
    );
    drop(s1);
    assert!(!node.is_at_capacity());
    let _s4 = node
        .reserve_socket_from(Some(a))
        .expect("a's place given back");
    let p1 = node.reserve_pending().expect("first pending");
    assert!(
        node.reserve_pending().is_none(),
        "max_pending_connections = 1"
    );
    drop(p1);
    assert!(node.reserve_pending().is_some(), "pending place given back");
}
