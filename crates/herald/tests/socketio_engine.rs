//! The Engine.IO transport under Herald's Socket.IO endpoint, tested with
//! raw HTTP requests and a raw WebSocket: the handshake, the errors
//! Engine.IO servers answer, long polling, the upgrade to WebSocket, and
//! the bounds (maxPayload, overlapping requests, the poll timeout).

mod common;
#[path = "socketio_engine/support.rs"]
mod support;

use common::*;
use serde_json::Value;
use std::time::Duration;
use support::*;

/// Short timings so that timeouts show within a test: pingInterval 1 s,
/// pingTimeout 1 s, maxPayload 4096.
const CONFIG: &str = r#"
[limits]
heartbeat_interval = "1s"
stale_timeout = "2s"
max_message_bytes = 4096
auth_timeout = "10s"
"#;

#[tokio::test]
async fn polling_handshake_carries_the_limits() {
    let node = TestNode::start(CONFIG).await;
    let client = http();
    let (sid, open) = open_polling(&node, &client).await;
    assert_eq!(sid.len(), 20, "{open}");
    assert_eq!(open["upgrades"], serde_json::json!(["websocket"]));
    assert_eq!(open["pingInterval"], 1000);
    assert_eq!(open["pingTimeout"], 1000);
    assert_eq!(open["maxPayload"], 4096);
    // Another session, another sid; the path also works without its slash.
    let url = format!("{}/socket.io?EIO=4&transport=polling", node.url());
    let answer = request(
        &client,
        reqwest::Method::GET,
        url,
        None,
        Some("https://app.example"),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.starts_with("0{"), "{}", answer.body);
    assert!(!answer.body.contains(&sid));
    assert_eq!(
        answer.headers["content-type"], "text/plain; charset=UTF-8",
        "{:?}",
        answer.headers
    );
    assert_eq!(
        answer.headers["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(answer.headers["access-control-allow-credentials"], "true");
}

#[tokio::test]
async fn websocket_handshake_sends_the_open_packet_first() {
    let node = TestNode::start(CONFIG).await;
    let mut ws = RawWs::connect(&node.addr(), "/socket.io/?EIO=4&transport=websocket").await;
    let frame = ws.next_frame(WAIT).await.expect("open packet");
    assert_eq!(frame.opcode, 1);
    let text = String::from_utf8(frame.payload).expect("UTF-8");
    let open: Value = serde_json::from_str(text.strip_prefix('0').expect("open")).expect("JSON");
    assert_eq!(open["upgrades"], serde_json::json!([]));
    assert_eq!(open["pingInterval"], 1000);
    assert_eq!(open["maxPayload"], 4096);
    // A WebSocket session is not reachable by polling.
    let sid = open["sid"].as_str().expect("sid");
    get(&http(), poll_url(&node, sid))
        .await
        .assert_error(400, 1);
}

#[tokio::test]
async fn bad_requests_get_the_engine_io_errors() {
    let node = TestNode::start(CONFIG).await;
    let client = http();
    let base = format!("{}/socket.io/", node.url());
    get(&client, format!("{base}?EIO=3&transport=polling"))
        .await
        .assert_error(400, 5);
    get(&client, format!("{base}?transport=polling"))
        .await
        .assert_error(400, 5);
    get(&client, format!("{base}?EIO=4&transport=carrier-pigeon"))
        .await
        .assert_error(400, 0);
    get(&client, format!("{base}?EIO=4"))
        .await
        .assert_error(400, 0);
    get(&client, poll_url(&node, "no-such-session"))
        .await
        .assert_error(400, 1);
    post(&client, format!("{base}?EIO=4&transport=polling"), b"40")
        .await
        .assert_error(400, 2);
    // A WebSocket request that is no upgrade.
    let answer = get(&client, format!("{base}?EIO=4&transport=websocket")).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    // The CORS preflight of a browser on another origin.
    let answer = request(
        &client,
        reqwest::Method::OPTIONS,
        format!("{base}?EIO=4&transport=polling"),
        None,
        Some("https://app.example"),
    )
    .await;
    assert_eq!(answer.status, 204);
    assert_eq!(
        answer.headers["access-control-allow-origin"],
        "https://app.example"
    );
    let methods = answer.headers["access-control-allow-methods"]
        .to_str()
        .expect("ASCII");
    assert!(methods.contains("POST"), "{methods}");
}

#[tokio::test]
async fn an_overlapping_get_ends_the_session() {
    let node = TestNode::start(CONFIG).await;
    let client = http();
    let (sid, _) = open_polling(&node, &client).await;
    let first = tokio::spawn({
        let (client, url) = (client.clone(), poll_url(&node, &sid));
        async move { get(&client, url).await }
    });
    // The second GET overlaps the first once the first is pending; until
    // then it may itself be the pending one. Either way one of the two is
    // refused with "Bad request" and the session ends.
    let deadline = tokio::time::Instant::now() + WAIT;
    let second = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = tokio::time::timeout(
            Duration::from_millis(300),
            get(&client, poll_url(&node, &sid)),
        )
        .await;
        if let Ok(answer) = second {
            break answer;
        }
        assert!(tokio::time::Instant::now() < deadline, "no overlap seen");
    };
    let first = first.await.expect("first GET");
    if second.status == 400 {
        assert_eq!(second.json()["code"], 3, "{}", second.body);
        // The pending GET learns the session ended: a close packet.
        assert_eq!(first.packets().last().map(String::as_str), Some("1"));
    } else {
        first.assert_error(400, 3);
    }
    until_gone(&node, &client, &sid).await.assert_error(400, 1);
}

#[tokio::test]
async fn a_post_over_max_payload_is_413_and_ends_the_session() {
    let node = TestNode::start(CONFIG).await;
    let client = http();
    let (sid, _) = open_polling(&node, &client).await;
    let mut body = b"4".to_vec();
    body.extend(std::iter::repeat_n(b'x', 4096));
    let answer = post(&client, poll_url(&node, &sid), &body).await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    get(&client, poll_url(&node, &sid))
        .await
        .assert_error(400, 1);
    // A payload of exactly maxPayload is fine.
    let (sid, _) = open_polling(&node, &client).await;
    let mut body = b"6\x1e4".to_vec();
    body.extend(std::iter::repeat_n(b'x', 4096 - body.len()));
    let answer = post(&client, poll_url(&node, &sid), &body).await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
    let content_type = answer.headers["content-type"].to_str().expect("ASCII");
    assert!(content_type.starts_with("text/html"), "{content_type}");
}

#[tokio::test]
async fn a_bad_payload_is_400_and_ends_the_session() {
    let node = TestNode::start(CONFIG).await;
    let client = http();
    let (sid, _) = open_polling(&node, &client).await;
    post(&client, poll_url(&node, &sid), b"4ok\x1e9what")
        .await
        .assert_error(400, 3);
    get(&client, poll_url(&node, &sid))
        .await
        .assert_error(400, 1);
}

#[tokio::test]
async fn a_session_that_stops_polling_times_out() {
    let node = TestNode::start(CONFIG).await;
    let client = http();
    let (sid, _) = open_polling(&node, &client).await;
    // No GET for pingInterval + pingTimeout (2 s): the session ends and its
    // sid is forgotten.
    let started = std::time::Instant::now();
    until_gone(&node, &client, &sid).await.assert_error(400, 1);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "ended after {:?}, before the poll timeout",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_client_close_packet_ends_the_session() {
    let node = TestNode::start(CONFIG).await;
    let client = http();
    let (sid, _) = open_polling(&node, &client).await;
    let answer = post(&client, poll_url(&node, &sid), b"1").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    until_gone(&node, &client, &sid).await.assert_error(400, 1);
}

#[tokio::test]
async fn the_upgrade_probe_releases_the_pending_get_and_moves_the_session() {
    let node = TestNode::start(CONFIG).await;
    let client = http();
    let (sid, _) = open_polling(&node, &client).await;
    // A GET pending while the probe runs.
    let pending = tokio::spawn({
        let (client, url) = (client.clone(), poll_url(&node, &sid));
        async move { get(&client, url).await }
    });
    let mut ws = RawWs::connect(
        &node.addr(),
        &format!("/socket.io/?EIO=4&transport=websocket&sid={sid}"),
    )
    .await;
    send_text(&mut ws, "2probe").await;
    assert_eq!(next_text(&mut ws).await.as_deref(), Some("3probe"));
    // The pending GET is released with a noop (or gets the session's
    // ping, if it was sent first); either way it ends before the upgrade.
    let released = tokio::time::timeout(WAIT, pending)
        .await
        .expect("the pending GET was released")
        .expect("GET");
    let packets = released.packets();
    assert!(packets.iter().all(|p| p == "6" || p == "2"), "{packets:?}");
    send_text(&mut ws, "5").await;
    // From now on the session is on the WebSocket: polling it is refused
    // (a GET racing the switch is released with a noop first).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answer = get(&client, poll_url(&node, &sid)).await;
        if answer.status == 400 {
            answer.assert_error(400, 1);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still polling");
    }
    // The session answers on the WebSocket: a close packet ends it there.
    send_text(&mut ws, "1").await;
    let end = ws.read_until_end(WAIT).await;
    assert!(end.close.is_some() || end.eof, "{end:?}");
}

#[tokio::test]
async fn a_probe_that_never_completes_is_dropped_and_polling_goes_on() {
    let node = TestNode::start(CONFIG).await;
    let client = http();
    let (sid, _) = open_polling(&node, &client).await;
    let mut ws = RawWs::connect(
        &node.addr(),
        &format!("/socket.io/?EIO=4&transport=websocket&sid={sid}"),
    )
    .await;
    send_text(&mut ws, "2probe").await;
    assert_eq!(next_text(&mut ws).await.as_deref(), Some("3probe"));
    // No `5` within pingTimeout (1 s): the probe socket is closed.
    let end = ws.read_until_end(WAIT).await;
    assert!(end.close.is_some() || end.eof, "{end:?}");
    // The polling session goes on.
    let answer = post(&client, poll_url(&node, &sid), b"6").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
    // A probe for an unknown session is refused before the upgrade.
    let url = format!(
        "{}/socket.io/?EIO=4&transport=websocket&sid=nope",
        node.url()
    );
    get(&client, url).await.assert_error(400, 1);
}

#[tokio::test]
async fn a_websocket_message_over_max_payload_closes_1009() {
    let node = TestNode::start(CONFIG).await;
    let mut ws = RawWs::connect(&node.addr(), "/socket.io/?EIO=4&transport=websocket").await;
    let open = next_text(&mut ws).await.expect("open");
    assert!(open.starts_with("0{"), "{open}");
    let big = format!("4{}", "x".repeat(4096));
    send_text(&mut ws, &big).await;
    let end = ws.read_until_end(WAIT).await;
    assert_eq!(
        end.close.as_ref().map(|(code, _)| *code),
        Some(1009),
        "{end:?}"
    );
}

/// Timings long enough that a test never meets a poll timeout: pingInterval
/// 5 s, pingTimeout 10 s.
const SLOW_PINGS: &str = r#"
[limits]
heartbeat_interval = "5s"
stale_timeout = "15s"
"#;

#[tokio::test]
async fn polling_batches_packets_and_takes_several_per_post() {
    let node = TestNode::start(SLOW_PINGS).await;
    let client = http();
    let sid = connect_polling(&node, &client, "alice").await;
    poll_until(&node, &client, &sid, &["40{", "42[\"authenticated\""]).await;
    // Two requests in one POST, each acknowledged.
    let answer = post(
        &client,
        poll_url(&node, &sid),
        b"421[\"join_room\",{\"room\":\"project:1\"}]\x1e422[\"join_room\",{\"room\":\"project:2\"}]",
    )
    .await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
    // (Refused here, as this user may not join them; answered either way.)
    poll_until(&node, &client, &sid, &["431[", "432["]).await;
    // Events published while no GET is pending wait for the next one,
    // which takes them together (`user:alice` is auto-joined).
    for n in 0..5 {
        node.publish("user:alice", "tick", serde_json::json!({ "n": n }))
            .await;
    }
    let want = ["42[\"tick\",{\"n\":0}"; 1];
    let mut bodies = poll_until(&node, &client, &sid, &want).await;
    let mut ticks: Vec<String> = bodies.iter().flatten().cloned().collect();
    if ticks
        .iter()
        .filter(|p| p.starts_with("42[\"tick\""))
        .count()
        < 5
    {
        // Fan-out may still have been queueing when the first GET came:
        // the rest arrive in later GETs, which count for batching too.
        let more = poll_until(&node, &client, &sid, &["42[\"tick\",{\"n\":4}"]).await;
        ticks.extend(more.iter().flatten().cloned());
        bodies.extend(more);
    }
    let ticks: Vec<&String> = ticks
        .iter()
        .filter(|p| p.starts_with("42[\"tick\""))
        .collect();
    assert_eq!(ticks.len(), 5, "{ticks:?}");
    for (n, tick) in ticks.iter().enumerate() {
        assert!(
            tick.starts_with(&format!("42[\"tick\",{{\"n\":{n}}}")),
            "{ticks:?}"
        );
    }
    assert!(
        bodies.iter().any(|b| b.len() > 1),
        "no GET carried several packets: {bodies:?}"
    );
}

#[tokio::test]
async fn packets_not_yet_polled_go_first_on_the_upgraded_websocket() {
    let node = TestNode::start(SLOW_PINGS).await;
    let client = http();
    // CONNECT by polling, but no GET: its answer waits in the queue.
    let sid = connect_polling(&node, &client, "bob").await;
    let mut ws = RawWs::connect(
        &node.addr(),
        &format!("/socket.io/?EIO=4&transport=websocket&sid={sid}"),
    )
    .await;
    send_text(&mut ws, "2probe").await;
    assert_eq!(next_text(&mut ws).await.as_deref(), Some("3probe"));
    send_text(&mut ws, "5").await;
    // What polling had not delivered comes first, in order.
    let first = next_text(&mut ws).await.expect("the CONNECT answer");
    assert!(first.starts_with("40{"), "{first}");
    let second = next_text(&mut ws).await.expect("authenticated");
    assert!(second.starts_with("42[\"authenticated\""), "{second}");
    // Then the session goes on over the WebSocket.
    send_text(&mut ws, r#"421["presence",{"room":"user:bob"}]"#).await;
    loop {
        let packet = next_text(&mut ws).await.expect("the ack");
        if packet.starts_with("431[") {
            break;
        }
    }
    node.publish("user:bob", "task.assigned", serde_json::json!({"t": 1}))
        .await;
    loop {
        let packet = next_text(&mut ws).await.expect("the event");
        if packet.starts_with("42[\"task.assigned\"") {
            break;
        }
    }
    get(&client, poll_url(&node, &sid))
        .await
        .assert_error(400, 1);
}

#[tokio::test]
async fn pongs_keep_a_polling_session_alive_past_the_stale_timeout() {
    let node = TestNode::start(CONFIG).await;
    let client = http();
    let sid = connect_polling(&node, &client, "carol").await;
    poll_until(&node, &client, &sid, &["40{"]).await;
    // pingInterval 1 s, stale after 2 s: for 4 s the client only answers
    // pings (`2` -> POST `3`), which is enough to stay.
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut pings = 0;
    while tokio::time::Instant::now() < until {
        let packets = get(&client, poll_url(&node, &sid)).await.packets();
        for packet in packets {
            assert!(!packet.starts_with('1'), "session closed: {packet}");
            assert!(
                !packet.starts_with("42[\"disconnect\""),
                "session closed: {packet}"
            );
            if packet == "2" {
                pings += 1;
                let answer = post(&client, poll_url(&node, &sid), b"3").await;
                assert_eq!(answer.status, 200, "{}", answer.body);
            }
        }
    }
    assert!(pings >= 2, "{pings} pings in 4 s");
}

#[tokio::test]
async fn large_events_reach_a_slow_websocket_reader_whole_and_in_order() {
    let node = TestNode::start(SLOW_PINGS).await;
    // A small receive window: the server's writes stop part-way through
    // frames and resume, which must never cut or reorder a packet.
    let mut ws =
        RawWs::connect_small_window(&node.addr(), "/socket.io/?EIO=4&transport=websocket", 4096)
            .await;
    let open = next_text(&mut ws).await.expect("open");
    assert!(open.starts_with("0{"), "{open}");
    let connect = format!(r#"40{{"token":"{}"}}"#, node.user_token("dave"));
    send_text(&mut ws, &connect).await;
    loop {
        let packet = next_text(&mut ws).await.expect("authenticated");
        if packet.starts_with("42[\"authenticated\"") {
            break;
        }
    }
    // About 3 MB: under `limits.send_queue_bytes` (4 MiB), far over what
    // the socket buffers hold.
    const EVENTS: usize = 150;
    let filler = "x".repeat(20_000);
    let publisher = tokio::spawn({
        let url = node.url();
        let filler = filler.clone();
        async move {
            let client = http();
            for n in 0..EVENTS {
                let body = serde_json::json!({
                    "room": "user:dave", "event": "big", "data": {"n": n, "fill": filler}
                });
                let res = client
                    .post(format!("{url}/api/v1/publish"))
                    .header("authorization", format!("Bearer {ADMIN_KEY}"))
                    .json(&body)
                    .send()
                    .await
                    .expect("publish");
                assert!(res.status().is_success(), "{}", res.status());
            }
        }
    });
    // Everything is published before the client reads a byte of it.
    publisher.await.expect("publisher");
    let mut next = 0;
    while next < EVENTS {
        let packet = next_text(&mut ws).await.expect("an event");
        let Some(args) = packet.strip_prefix("42") else {
            continue;
        };
        let args: Value = serde_json::from_str(args).expect("a whole event");
        if args[0] != "big" {
            continue;
        }
        assert_eq!(args[1]["n"], next, "in order");
        assert_eq!(args[1]["fill"].as_str(), Some(filler.as_str()), "whole");
        next += 1;
    }
}
