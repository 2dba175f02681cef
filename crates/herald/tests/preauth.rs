//! The unauthenticated phase of a WebSocket (issue #12, finding 1): one
//! deadline (`limits.auth_timeout`) for all of it, writes included; a frame
//! budget that counts pings; a byte budget
//! (`limits.max_pending_message_bytes`); and a cap on sockets not yet
//! authenticated (`limits.max_pending_connections`).

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A masked ping frame with the largest payload a control frame may carry.
fn big_ping() -> Vec<u8> {
    client_frame(true, 0x9, &[0x55; 125], true)
}

/// Polls until a client with its token in the upgrade is admitted, or
/// panics after `within`; every refusal on the way must be a 503.
async fn connect_when_a_slot_frees(node: &TestNode, sub: &str, within: Duration) -> WsClient {
    let deadline = Instant::now() + within;
    loop {
        match WsClient::connect(&node.ws_url(), TokenIn::Header(node.user_token(sub))).await {
            Ok(mut c) => {
                c.expect_type("authenticated", FRAME_WAIT).await;
                return c;
            }
            Err(e) => {
                assert_eq!(upgrade_status(&e), Some(503), "{}", describe_ws_error(&e));
                assert!(
                    Instant::now() < deadline,
                    "the slot was never freed within {within:?}; log:\n{}",
                    node.log()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_ping_flood_that_never_reads_loses_its_slot() {
    let node = TestNode::start("[limits]\nmax_connections = 1\nauth_timeout = \"3s\"\n").await;
    let mut flooder = RawWs::connect(&node.addr(), "/ws").await;
    // The flooder holds the node's only slot.
    match WsClient::connect(&node.ws_url(), TokenIn::Header(node.user_token("late"))).await {
        Ok(_) => panic!("a second socket was admitted at max_connections = 1"),
        Err(e) => assert_eq!(upgrade_status(&e), Some(503), "{}", describe_ws_error(&e)),
    }
    // Pings as fast as the socket takes them, never reading a pong: before
    // the fix the node's pong write blocked with no deadline and the slot
    // stayed taken. Ends when the node drops the socket.
    let flood = tokio::spawn(async move {
        let burst: Vec<u8> = (0..64).flat_map(|_| big_ping()).collect();
        let stop = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < stop {
            let sent =
                tokio::time::timeout(Duration::from_millis(200), flooder.send_raw(&burst)).await;
            if let Ok(Err(_)) = sent {
                return true;
            }
        }
        false
    });
    // auth_timeout, plus the bounded close, plus slack for a loaded machine.
    let mut c = connect_when_a_slot_frees(&node, "late", Duration::from_secs(15)).await;
    c.ping_ok().await;
    let cut = tokio::time::timeout(Duration::from_secs(10), flood)
        .await
        .expect("the flooder's writes still succeed after its slot was freed")
        .expect("flood task");
    assert!(cut, "the node never dropped the flooding socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_count_against_the_frame_budget_before_authenticate() {
    let node = TestNode::start("[limits]\nauth_timeout = \"30s\"\n").await;
    let mut raw = RawWs::connect(&node.addr(), "/ws").await;
    let pings: Vec<u8> = (0..17)
        .flat_map(|_| client_frame(true, 0x9, b"hi", true))
        .collect();
    raw.send_raw(&pings).await.expect("send pings");
    let out = raw.read_until_end(FRAME_WAIT).await;
    let pongs = out.frames.iter().filter(|f| f.opcode == 0xA).count();
    assert_eq!(pongs, 16, "the first 16 pings are answered: {out:?}");
    let close = out.close.as_ref().map(|c| c.0);
    assert_eq!(close, Some(4001), "the 17th frame closes 4001: {out:?}");
    assert!(
        out.json()
            .iter()
            .any(|v| v["code"] == "unauthorized" && v["message"].as_str().is_some()),
        "an `unauthorized` error says why: {:?}",
        out.json()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_auth_message_over_the_byte_budget_closes_1009_at_once() {
    // Defaults: 16 KiB before `authenticate`, 1 MiB after. A long auth
    // timeout so that only the byte budget can close these sockets.
    let node = TestNode::start("[limits]\nauth_timeout = \"60s\"\n").await;

    // A fragmented message whose first two fragments pass 16 KiB; its
    // last fragment never comes.
    let mut fragmented = RawWs::connect(&node.addr(), "/ws").await;
    let mut bytes = client_frame(false, 0x1, &[b'a'; 10_000], true);
    bytes.extend(client_frame(false, 0x0, &[b'a'; 10_000], true));
    fragmented.send_raw(&bytes).await.expect("send fragments");
    let out = fragmented.read_until_end(FRAME_WAIT).await;
    assert_eq!(out.close.as_ref().map(|c| c.0), Some(1009), "{out:?}");
    assert!(
        out.json().iter().any(|v| v["type"] == "disconnect"),
        "disconnect before the close: {out:?}"
    );

    // One frame announcing 100 KB, of which only the header and 1 KB come.
    let mut announced = RawWs::connect(&node.addr(), "/ws").await;
    let frame = client_frame(true, 0x1, &[b'a'; 100_000], true);
    announced
        .send_raw(&frame[..1024])
        .await
        .expect("send start");
    let out = announced.read_until_end(FRAME_WAIT).await;
    assert_eq!(out.close.as_ref().map(|c| c.0), Some(1009), "{out:?}");

    // An `authenticate` carrying a big (8 KB) JWT still fits, and once
    // authenticated the socket gets the full `max_message_bytes`.
    let token = node.token(
        "big",
        &[],
        None,
        json!({ "padding": "p".repeat(8_000) }),
        Duration::from_secs(3600),
    );
    let mut c = WsClient::connect(&node.ws_url(), TokenIn::None)
        .await
        .expect("upgrade");
    c.send_json(json!({"type": "authenticate", "id": 1, "token": token}))
        .await;
    let auth = c.expect_type("authenticated", FRAME_WAIT).await;
    assert_eq!(auth["user_id"], "big", "{auth}");
    let pong = c
        .request(json!({"type": "ping", "padding": "q".repeat(100_000)}))
        .await;
    assert_eq!(pong["type"], "pong", "{pong}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_pending_connections_refuses_unauthenticated_upgrades_with_503() {
    let node =
        TestNode::start("[limits]\nmax_pending_connections = 2\nauth_timeout = \"60s\"\n").await;
    let _p1 = RawWs::connect(&node.addr(), "/ws").await;
    let mut p2 = WsClient::connect(&node.ws_url(), TokenIn::None)
        .await
        .expect("second pending upgrade");
    let err = match WsClient::connect(&node.ws_url(), TokenIn::None).await {
        Ok(_) => panic!("a third unauthenticated socket was admitted"),
        Err(e) => e,
    };
    assert_eq!(
        upgrade_status(&err),
        Some(503),
        "{}",
        describe_ws_error(&err)
    );
    let body = describe_ws_error(&err);
    let json: Value = serde_json::from_str(body.trim_start_matches(|c| c != '{'))
        .unwrap_or_else(|_| panic!("JSON body: {body}"));
    assert_eq!(json["error"]["code"], "unavailable", "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("limits.max_pending_connections")),
        "{json}"
    );
    // Tokens in the upgrade are authenticated already: not counted.
    let (mut a, _) = node.connect_user("a").await;
    let (mut b, _) = node.connect_user("b").await;
    a.ping_ok().await;
    b.ping_ok().await;
    // Authenticating gives the pending place back.
    p2.send_json(json!({"type": "authenticate", "token": node.user_token("p2")}))
        .await;
    p2.expect_type("authenticated", FRAME_WAIT).await;
    let mut p3 = WsClient::connect(&node.ws_url(), TokenIn::None)
        .await
        .unwrap_or_else(|e| panic!("place not given back: {}", describe_ws_error(&e)));
    p3.send_json(json!({"type": "authenticate", "token": node.user_token("p3")}))
        .await;
    p3.expect_type("authenticated", FRAME_WAIT).await;
}
