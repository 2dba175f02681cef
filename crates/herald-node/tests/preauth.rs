//! The unauthenticated phase driven directly, as a transport would: client
//! messages go into `PreAuth`, and its steps say what to write and when to
//! close or open the session.

use async_trait::async_trait;
use herald_broker_memory::MemoryBroker;
use herald_core::{Identity, Namespaces, TokenVerifier, VerifyError};
use herald_node::{
    Limits, Node, NodeSettings, OpenOptions, Outbound, PreAuth, Step, Transport,
    MAX_FRAMES_BEFORE_AUTH,
};
use herald_protocol::CloseCode;
use serde_json::Value;
use std::sync::Arc;

/// Accepts tokens that are JSON objects with a `sub`.
struct JsonVerifier;

#[async_trait]
impl TokenVerifier for JsonVerifier {
    async fn verify(&self, token: &str) -> Result<Identity, VerifyError> {
        let claims: serde_json::Map<String, Value> =
            serde_json::from_str(token).map_err(|e| VerifyError {
                reason: "malformed",
                message: e.to_string(),
            })?;
        let sub = claims.get("sub").and_then(Value::as_str).unwrap_or("anon");
        Ok(Identity::new(sub))
    }
}

fn node() -> Node {
    Node::new(
        NodeSettings {
            node_id: "n1".into(),
            access_proxy: None,
            limits: Limits::default(),
            namespaces: Namespaces::shipped(),
        },
        Arc::new(JsonVerifier),
        |sink| Arc::new(MemoryBroker::new(sink)),
    )
}

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("a JSON frame")
}

fn reply(step: Step) -> Value {
    match step {
        Step::Continue(Some(bytes)) => json(&bytes),
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[tokio::test]
async fn before_authenticate_pings_are_answered_and_requests_refused_then_a_session_opens() {
    let node = node();
    let mut pre = PreAuth::new(&node);
    let pong = reply(pre.handle_message(br#"{"type":"ping","id":"p"}"#).await);
    assert_eq!(
        (pong["type"].as_str(), pong["id"].as_str()),
        (Some("pong"), Some("p"))
    );
    let refused = reply(
        pre.handle_message(br#"{"type":"join_room","id":2,"room":"a"}"#)
            .await,
    );
    assert_eq!(refused["code"], "unauthorized");
    assert_eq!(refused["id"], 2);
    let binary = reply(pre.handle_binary(b"\x81\xa4type").await);
    assert_eq!(binary["code"], "bad_request");
    let bad = reply(pre.handle_message(b"{").await);
    assert_eq!(bad["code"], "bad_request");

    let token = r#"{\"sub\":\"alice\"}"#;
    let frame = format!(r#"{{"type":"authenticate","id":7,"token":"{token}"}}"#);
    let Step::Authenticated {
        identity, reply_to, ..
    } = pre.handle_message(frame.as_bytes()).await
    else {
        panic!("a valid token authenticates");
    };
    assert_eq!(identity.user_id, "alice");
    let session = pre
        .open(
            identity,
            reply_to,
            &Transport::WEBSOCKET,
            OpenOptions::default(),
        )
        .await
        .expect("admitted");
    let conn = session.connection();
    assert_eq!(conn.transport.name, "websocket");
    let mut batch = Vec::new();
    conn.queue.next_batch(&mut batch).await;
    let Some(Outbound::Frame { bytes, .. }) = batch.first() else {
        panic!("authenticated is queued");
    };
    let authenticated = json(bytes);
    assert_eq!(authenticated["type"], "authenticated");
    assert_eq!(
        authenticated["id"], 7,
        "the authenticate request is answered"
    );
}

#[tokio::test]
async fn a_frame_past_the_budget_closes_4001_and_a_bad_token_closes_4001_with_its_reply() {
    let node = node();
    let mut pre = PreAuth::new(&node);
    for _ in 0..MAX_FRAMES_BEFORE_AUTH {
        assert!(matches!(pre.control(), Step::Continue(None)));
    }
    let Step::Close(refusal) = pre.handle_message(br#"{"type":"ping"}"#).await else {
        panic!("the frame past the budget closes");
    };
    assert_eq!(refusal.code, CloseCode::Unauthorized);
    let reply = json(&refusal.reply.expect("a reply"));
    assert_eq!(reply["message"], "too many frames before `authenticate`");

    let mut pre = PreAuth::new(&node);
    let Step::Close(refusal) = pre
        .handle_message(br#"{"type":"authenticate","id":1,"token":"nope"}"#)
        .await
    else {
        panic!("a bad token closes");
    };
    assert_eq!(refusal.code, CloseCode::Unauthorized);
    let reply = json(&refusal.reply.expect("a reply"));
    assert_eq!(
        (reply["code"].as_str(), reply["id"].as_i64()),
        (Some("unauthorized"), Some(1))
    );
    let disconnect = json(&pre.disconnect(CloseCode::Unauthorized));
    assert_eq!(disconnect["code"], 4001);
    assert!(pre.max_message_bytes() <= Limits::default().max_message_bytes);
}
