//! RFC 6455 framing against a real node, from a hand-made client: what the
//! server's own frame reader and writer must get right now that Herald owns
//! the upgraded socket (fragments, control frames, the close handshake,
//! frames pipelined behind the upgrade request, framing errors, and large
//! frames written across many partial writes).

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const TEXT: u8 = 1;
const CONTINUATION: u8 = 0;
const CLOSE: u8 = 8;
const PING: u8 = 9;
const PONG: u8 = 10;

async fn raw_user(node: &TestNode, sub: &str) -> RawWs {
    let mut ws = RawWs::connect(&node.addr(), &format!("/ws?token={}", node.user_token(sub))).await;
    let first = ws.next_json(FRAME_WAIT).await.expect("authenticated");
    assert_eq!(first["type"], "authenticated", "{first}");
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_request_with_a_ping_inside_is_answered() {
    let node = TestNode::start("").await;
    let mut ws = raw_user(&node, "frag").await;
    let mut bytes = client_frame(false, TEXT, br#"{"type":"pi"#, true);
    bytes.extend(client_frame(true, PING, b"mid", true));
    bytes.extend(client_frame(false, CONTINUATION, br#"ng","id"#, true));
    bytes.extend(client_frame(true, CONTINUATION, br#"":7}"#, true));
    ws.send_raw(&bytes).await.expect("write");
    let pong = ws.next_frame(FRAME_WAIT).await.expect("pong frame");
    assert_eq!((pong.opcode, pong.payload.as_slice()), (PONG, &b"mid"[..]));
    let reply = ws.next_json(FRAME_WAIT).await.expect("reply");
    assert_eq!(reply, json!({"type": "pong", "id": 7}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_pipelined_behind_the_upgrade_request_are_read() {
    let node = TestNode::start("").await;
    let token = node.user_token("eager");
    let auth = json!({"type": "authenticate", "id": 1, "token": token}).to_string();
    let mut early = client_frame(true, TEXT, auth.as_bytes(), true);
    early.extend(client_frame(true, TEXT, br#"{"type":"ping","id":2}"#, true));
    let mut ws = RawWs::connect_with_early(&node.addr(), "/ws", &early).await;
    let first = ws.next_json(FRAME_WAIT).await.expect("authenticated");
    assert_eq!(first["type"], "authenticated", "{first}");
    assert_eq!(first["id"], 1);
    let pong = ws.next_json(FRAME_WAIT).await.expect("pong");
    assert_eq!(pong, json!({"type": "pong", "id": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_is_echoed_then_the_connection_ends() {
    let node = TestNode::start("").await;
    let mut ws = raw_user(&node, "closer").await;
    ws.send_frame(CLOSE, &4321u16.to_be_bytes())
        .await
        .expect("write");
    let out = ws.read_until_end(FRAME_WAIT).await;
    assert_eq!(out.close.map(|(code, _)| code), Some(4321), "echoed code");
    let after = ws.read_until_end(FRAME_WAIT).await;
    assert!(
        after.eof || after.error.is_some(),
        "TCP closed after the close frame"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_errors_close_1002_and_the_node_keeps_serving() {
    let node = TestNode::start("").await;
    let cases: [(&str, Vec<u8>); 4] = [
        ("unmasked", client_frame(true, TEXT, b"{}", false)),
        ("reserved opcode", client_frame(true, 3, b"", true)),
        (
            "bare continuation",
            client_frame(true, CONTINUATION, b"x", true),
        ),
        ("fragmented ping", client_frame(false, PING, b"", true)),
    ];
    for (what, bytes) in cases {
        let mut ws = raw_user(&node, "breaker").await;
        ws.send_raw(&bytes).await.expect("write");
        let out = ws.read_until_end(FRAME_WAIT).await;
        let disconnect = out.json().into_iter().find(|v| v["type"] == "disconnect");
        assert_eq!(
            disconnect.map(|d| d["code"].clone()),
            Some(json!(1002)),
            "{what}: disconnect frame"
        );
        assert_eq!(out.close.map(|(code, _)| code), Some(1002), "{what}: close");
    }
    let (mut fine, _) = node.connect_user("bystander").await;
    fine.ping_ok().await;
}

/// Events far larger than the socket buffers, to a client with a tiny
/// receive window that reads nothing until every publish was accepted:
/// the kernel cannot hold them all, so the server's writes must stop
/// part-way through a frame and resume where they stopped; every frame
/// still arrives whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_survive_partial_writes_in_order() {
    const EVENTS: usize = 12;
    const PAD: usize = 700_000;
    const RCVBUF: u32 = 4096;
    // The queue may hold them all: this test is about partial writes, not
    // about cutting slow consumers.
    let node = TestNode::start("[limits]\nsend_queue_bytes = 67108864\n").await;
    let mut ws = RawWs::connect_small_window(
        &node.addr(),
        &format!("/ws?token={}", node.user_token("sipper")),
        RCVBUF,
    )
    .await;
    let first = ws.next_json(FRAME_WAIT).await.expect("authenticated");
    assert_eq!(first["type"], "authenticated", "{first}");
    // The most the kernel can buffer between the server's socket and this
    // reader: the largest send buffer plus our receive window (doubled for
    // the kernel's bookkeeping). Publishing more than that means at least
    // one server write was cut short.
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(4 << 20);
    assert!(
        EVENTS * PAD > wmem_max + 2 * RCVBUF as usize,
        "the events ({} bytes) must not fit in the kernel's buffers ({wmem_max} bytes)",
        EVENTS * PAD
    );
    let pad = "p".repeat(PAD);
    for i in 0..EVENTS {
        node.publish("global", "big", json!({"i": i, "pad": pad}))
            .await;
    }
    // Every publish was accepted while the client read nothing; now read.
    let mut seen = Vec::new();
    while seen.len() < EVENTS {
        let v = ws
            .next_json(Duration::from_secs(30))
            .await
            .expect("next event");
        if v["type"] == "event" {
            assert_eq!(v["data"]["pad"].as_str().map(str::len), Some(PAD));
            seen.push(v["data"]["i"].as_u64().expect("i"));
        }
    }
    assert_eq!(seen, (0..EVENTS as u64).collect::<Vec<_>>());
}

/// A framing error pipelined behind the upgrade request is answered at
/// once, not when the client next sends something (or the auth timer ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framing_error_behind_the_upgrade_request_closes_at_once() {
    let node = TestNode::start("[limits]\nauth_timeout = \"60s\"\n").await;
    let early = client_frame(true, TEXT, b"{}", false);
    let mut ws = RawWs::connect_with_early(&node.addr(), "/ws", &early).await;
    let out = ws.read_until_end(FRAME_WAIT).await;
    assert_eq!(out.close.map(|(code, _)| code), Some(1002), "close");
}
