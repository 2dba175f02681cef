//! Caps on what one client may hold or send (issue #12, findings 2–4 and
//! the session half of 1): WebSocket control frames under the rate limit,
//! `limits.max_connections_per_ip` over WebSocket and SSE, `/ready` at
//! `max_connections`, and a client that stops reading being cut.

mod common;

use common::sse::open_sse;
use common::*;
use serde_json::{json, Value};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_pings_count_against_the_rate_limit_and_close_4008() {
    let node = TestNode::start("[limits]\nmessages_per_second = 5\nburst = 5\n").await;
    let mut flood = RawWs::connect(
        &node.addr(),
        &format!("/ws?token={}", node.user_token("flood")),
    )
    .await;
    let (mut calm, _) = node.connect_user("calm").await;
    let started = Instant::now();
    let (mut pongs, mut limited) = (0usize, 0usize);
    let close = 'flood: loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still open after 20 s of pings ({pongs} pongs, {limited} rate_limited)"
        );
        let burst: Vec<u8> = (0..10)
            .flat_map(|_| client_frame(true, 0x9, b"p", true))
            .collect();
        if flood.send_raw(&burst).await.is_err() {
            break None;
        }
        // Reads what came back, so the send queue never overflows (4011).
        while let Some(f) = flood.next_frame(Duration::from_millis(20)).await {
            match f.opcode {
                0xA => pongs += 1,
                0x8 => {
                    break 'flood Some(u16::from_be_bytes([f.payload[0], f.payload[1]]));
                }
                0x1 => {
                    let v: Value = serde_json::from_slice(&f.payload).expect("JSON frame");
                    if v["code"] == "rate_limited" {
                        limited += 1;
                    }
                }
                _ => {}
            }
        }
    };
    assert_eq!(close, Some(4008), "{pongs} pongs, {limited} rate_limited");
    assert!(limited > 0, "rate_limited errors came first");
    assert!(
        pongs < 200,
        "pings over the limit are not answered: {pongs} pongs"
    );
    calm.ping_ok().await;
}

/// Upgrades `/ws?token=` from the loopback address `from`; returns the
/// HTTP status and the body.
async fn upgrade_from(node: &TestNode, from: Ipv4Addr, token: &str) -> (u16, String) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(from), 0))
        .expect("bind a loopback source address");
    let mut stream = tokio::time::timeout(FRAME_WAIT, socket.connect(node.addr().parse().unwrap()))
        .await
        .expect("connect timed out")
        .expect("connect");
    let request = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        node.addr()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let deadline = tokio::time::Instant::now() + FRAME_WAIT;
    // The 101 has no body; a refusal's JSON body ends with `}`.
    let complete = |a: &[u8]| {
        let upgraded = a.starts_with(b"HTTP/1.1 101") && a.windows(4).any(|w| w == b"\r\n\r\n");
        upgraded || a.ends_with(b"}")
    };
    while !complete(&answer) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("answer timed out")
            .expect("read");
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text[9..12].parse().expect("status code");
    // The answer alone shows whether this address was admitted; the
    // socket closes here.
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_ip_caps_websocket_and_sse_together() {
    let node = TestNode::start("[limits]\nmax_connections_per_ip = 2\n").await;
    let (ws, _) = node.connect_user("a").await;
    let query = format!("?token={}", node.user_token("b"));
    let mut sse = match open_sse(&node, &query, &[]).await {
        Ok(s) => s,
        Err((status, body)) => panic!("second connection refused: {status} {body}"),
    };
    sse.expect_event("authenticated", FRAME_WAIT).await;
    let refused_key = |body: &Value| {
        body["error"]["code"] == "limit_exceeded"
            && body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("limits.max_connections_per_ip"))
    };
    // A third from the same address: refused on both transports.
    match WsClient::connect(&node.ws_url(), TokenIn::Header(node.user_token("c"))).await {
        Ok(_) => panic!("a third WebSocket from 127.0.0.1 was admitted"),
        Err(e) => {
            assert_eq!(upgrade_status(&e), Some(429), "{}", describe_ws_error(&e));
            let text = describe_ws_error(&e);
            let body: Value = serde_json::from_str(text.trim_start_matches(|c| c != '{'))
                .unwrap_or_else(|_| panic!("JSON body: {text}"));
            assert!(refused_key(&body), "{body}");
        }
    }
    let query_c = format!("?token={}", node.user_token("c"));
    match open_sse(&node, &query_c, &[]).await {
        Ok(_) => panic!("a third SSE stream from 127.0.0.1 was admitted"),
        Err((status, body)) => {
            assert_eq!(status, 429, "{body}");
            assert!(refused_key(&body), "{body}");
        }
    }
    // Another address is not affected.
    let (status, answer) =
        upgrade_from(&node, Ipv4Addr::new(127, 0, 0, 2), &node.user_token("d")).await;
    assert_eq!(status, 101, "{answer}");
    // Closing one gives the address its place back.
    ws.close().await;
    let deadline = Instant::now() + FRAME_WAIT;
    loop {
        match open_sse(&node, &query_c, &[]).await {
            Ok(mut s) => {
                s.expect_event("authenticated", FRAME_WAIT).await;
                break;
            }
            Err((status, body)) => {
                assert_eq!(status, 429, "{body}");
                assert!(Instant::now() < deadline, "the place was never given back");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_answers_503_at_capacity_and_200_again_below() {
    let node = TestNode::start("[limits]\nmax_connections = 2\n").await;
    let (status, body) = node.get("/ready").await;
    assert_eq!(status, 200, "{body}");
    let (mut a, _) = node.connect_user("a").await;
    let (mut b, _) = node.connect_user("b").await;
    let (status, body) = node.get("/ready").await;
    assert_eq!(status, 503, "{body}");
    let json: Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(json["status"], "at_capacity", "{json}");
    let (status, _) = node.get("/ws/health").await;
    assert_eq!(status, 503, "the alias agrees");
    // Open connections are not affected.
    a.ping_ok().await;
    b.ping_ok().await;
    b.close().await;
    let deadline = Instant::now() + FRAME_WAIT;
    loop {
        let (status, body) = node.get("/ready").await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(
            Instant::now() < deadline,
            "/ready stayed 503 below capacity"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The session-phase write path: a socket that takes nothing while its
/// client keeps talking is still cut within a bounded time (its input is
/// not read while the socket is full, so the stale cut applies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_stops_reading_but_keeps_sending_is_cut() {
    let node = TestNode::start(
        "[limits]\nheartbeat_interval = \"300ms\"\nstale_timeout = \"2s\"\n\
         send_queue_messages = 100000\nsend_queue_bytes = 268435456\n",
    )
    .await;
    let mut slow = RawWs::connect(
        &node.addr(),
        &format!("/ws?token={}", node.user_token("slow")),
    )
    .await;
    let first = slow.next_json(FRAME_WAIT).await.expect("authenticated");
    assert_eq!(first["type"], "authenticated", "{first}");
    let connections = |body: &Value| body["connections"].as_array().map_or(0, Vec::len);
    let path = "/api/v1/users/slow/connections";
    let (_, listed) = node.api("GET", path, Some(ADMIN_KEY), None).await;
    assert_eq!(connections(&listed), 1, "{listed}");
    // ~24 MB of events, more than loopback's socket buffers hold, into a
    // queue far too large to overflow: only the write side can end this.
    let pad = "z".repeat(200_000);
    for i in 0..120 {
        node.publish("global", "bulk", json!({"i": i, "pad": pad}))
            .await;
        let _ = slow.send_frame(0xA, b"").await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Unsolicited pongs: the client is not silent, only not reading.
        let _ = tokio::time::timeout(Duration::from_millis(200), slow.send_frame(0xA, b"")).await;
        let (_, listed) = node.api("GET", path, Some(ADMIN_KEY), None).await;
        if connections(&listed) == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a client that stopped reading is still connected: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
