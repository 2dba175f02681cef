//! Resuming a gap larger than the send queue (issue #12): the replay is
//! queued as the socket drains, over WebSocket (`join_room` with `since`)
//! and SSE (`Last-Event-ID`), and live events published during it follow
//! it with no gap and no duplicate.

mod common;

use common::cluster::{epoch_of, join_since};
use common::sse::{bearer, open_ok, read_opening};
use common::*;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A send queue of 16 frames and a history of 1000 events (of up to 16 MB:
/// the default room budget of 1 MiB would trim the 2.5 MB gap below).
const CONFIG: &str = r#"
[namespaces.feed]
join = "any"
send = "any"
history_size = 1000
history_ttl = "1h"
history_max_bytes = 16777216

[limits]
send_queue_messages = 16
"#;

/// Events stored before the client resumes from offset 0.
const STORED: u64 = 500;
/// Events published while the replay runs.
const LIVE: u64 = 20;

/// Publishes `n` events to `room` (a few at a time, so offsets are
/// assigned by the broker in any order); returns the room's epoch.
async fn publish_many(node: &TestNode, room: &str, n: u64, bytes: usize) -> String {
    let payload = "r".repeat(bytes);
    let answers: Vec<Value> = stream::iter(0..n)
        .map(|i| node.publish(room, "fill", json!({ "i": i, "p": payload })))
        .buffer_unordered(8)
        .collect()
        .await;
    epoch_of(&answers[0])
}

/// Checks that `offsets` is exactly `1..=last`, in order.
fn assert_gap_free(offsets: &[u64], last: u64, transport: &str) {
    let expected: Vec<u64> = (1..=last).collect();
    if offsets != expected.as_slice() {
        let dup = offsets.windows(2).find(|w| w[1] <= w[0]);
        let gap = offsets.windows(2).find(|w| w[1] > w[0] + 1);
        panic!(
            "{transport}: {} events, first {:?}, last {:?}, out of order/duplicate at {dup:?}, gap at {gap:?}",
            offsets.len(),
            offsets.first(),
            offsets.last()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_resume_of_a_gap_larger_than_the_send_queue_replays_everything() {
    let node = TestNode::start(CONFIG).await;
    // 2.5 MB of events: more than loopback socket buffers take at once, so
    // the replay waits on the client and the live events arrive during it.
    let epoch = publish_many(&node, "feed:1", STORED, 5000).await;
    let (mut c, _) = node.connect_user("resumer").await;
    let joined = join_since(&mut c, "feed:1", &epoch, 0).await;
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(joined["replayed"], STORED, "{joined}");
    assert_eq!(joined["offset"], STORED, "{joined}");
    publish_many(&node, "feed:1", LIVE, 100).await;

    let mut offsets = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while offsets.last() != Some(&(STORED + LIVE)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = c.next_json(left).await;
        match frame["type"].as_str() {
            Some("event") if frame["room"] == "feed:1" => {
                offsets.push(frame["offset"].as_u64().expect("offset"))
            }
            Some("event") | Some("member_joined") | Some("member_left") => {}
            _ => panic!("unexpected frame during the replay: {frame}"),
        }
    }
    assert_gap_free(&offsets, STORED + LIVE, "websocket");
    // Still open, and live.
    c.ping_ok().await;
    node.publish("feed:1", "after", json!({})).await;
    let next = c.expect_type("event", FRAME_WAIT).await;
    assert_eq!(next["offset"], STORED + LIVE + 1, "{next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resume_of_a_gap_larger_than_the_send_queue_replays_everything() {
    let node = TestNode::start(CONFIG).await;
    let epoch = publish_many(&node, "feed:1", STORED, 5000).await;
    let token = node.user_token("sse-resumer");
    let last_id = format!("feed:1~{epoch}~0");
    let mut s = open_ok(
        &node,
        "?rooms=feed:1",
        &[
            ("Authorization", &bearer(&token)),
            ("Last-Event-ID", &last_id),
        ],
    )
    .await;
    let (_, joined) = read_opening(&mut s, 3).await;
    let j = joined["feed:1"].json();
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(j["replayed"], STORED, "{j}");
    publish_many(&node, "feed:1", LIVE, 100).await;

    let mut offsets: Vec<u64> = s
        .early
        .iter()
        .map(|m| m.json())
        .filter(|e| e["room"] == "feed:1")
        .map(|e| e["offset"].as_u64().expect("offset"))
        .collect();
    let mut last_id = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while offsets.last() != Some(&(STORED + LIVE)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = s.next_msg(left).await;
        match m.event.as_str() {
            "event" => {
                let e = m.json();
                if e["room"] == "feed:1" {
                    offsets.push(e["offset"].as_u64().expect("offset"));
                    last_id = m.id.clone();
                }
            }
            "disconnect" => panic!("the stream was closed during the replay: {}", m.data),
            _ => {}
        }
    }
    assert_gap_free(&offsets, STORED + LIVE, "sse");
    let id = last_id.expect("an id");
    assert!(
        id.contains(&format!("feed:1~{epoch}~{}", STORED + LIVE)),
        "the last id resumes after the last event: {id}"
    );
    // Still open, and live.
    node.publish("feed:1", "after", json!({})).await;
    let next = s.expect_event("event", FRAME_WAIT).await.json();
    assert_eq!(next["offset"], STORED + LIVE + 1, "{next}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resume_of_an_auto_joined_room_is_paced_too() {
    // `user:{sub}` is auto-joined and keeps 100 events: 6 send queues' worth.
    let node = TestNode::start(CONFIG).await;
    let epoch = publish_many(&node, "user:carol", 100, 100).await;
    let token = node.user_token("carol");
    let last_id = format!("user:carol~{epoch}~0");
    let mut s = open_ok(
        &node,
        "",
        &[
            ("Authorization", &bearer(&token)),
            ("Last-Event-ID", &last_id),
        ],
    )
    .await;
    let (_, joined) = read_opening(&mut s, 2).await;
    let j = joined["user:carol"].json();
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(j["replayed"], 100, "{j}");
    let mut offsets: Vec<u64> = s
        .early
        .iter()
        .map(|m| m.json()["offset"].as_u64().expect("offset"))
        .collect();
    while offsets.last() != Some(&100) {
        let m = s.expect_event("event", FRAME_WAIT).await;
        offsets.push(m.json()["offset"].as_u64().expect("offset"));
    }
    assert_gap_free(&offsets, 100, "sse auto-joined");
}

/// `feed` as in [`CONFIG`], `long` rooms that keep 6000 events of up to
/// 64 MB, and a send queue of 1024 frames (so the pending buffer of a join
/// holds 1024 events, and live events have 512 places beside a replay).
const TWO_ROOMS: &str = r#"
[namespaces.feed]
join = "any"
send = "any"
history_size = 1000
history_ttl = "1h"
history_max_bytes = 16777216

[namespaces.long]
join = "any"
send = "any"
history_size = 6000
history_ttl = "1h"
history_max_bytes = 134217728

[limits]
send_queue_messages = 1024
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resume_of_two_rooms_keeps_a_busy_room_while_the_other_replays_a_long_gap() {
    let node = TestNode::start(TWO_ROOMS).await;
    // 48 MB behind in room a: far more than loopback socket buffers hold,
    // so its replay lasts until the client has read most of it.
    const GAP: u64 = 6000;
    // Live events to room b meanwhile, more than its join buffer holds
    // (1024): one per four events of a read, a rate the reader keeps up
    // with. Replaying a to the end before b starts cuts the reader here.
    const LAST_B: u64 = 5 + 1100;
    let epoch_a = publish_many(&node, "long:a", GAP, 8000).await;
    let epoch_b = publish_many(&node, "feed:b", 5, 10).await;
    let token = node.user_token("two-rooms");
    let last_id = format!("long:a~{epoch_a}~0,feed:b~{epoch_b}~0");
    let mut s = open_ok(
        &node,
        "?rooms=long:a,feed:b",
        &[
            ("Authorization", &bearer(&token)),
            ("Last-Event-ID", &last_id),
        ],
    )
    .await;
    // With the auto-joined `global` and `user:two-rooms`.
    let (_, joined) = read_opening(&mut s, 4).await;
    for room in ["long:a", "feed:b"] {
        let j = joined[room].json();
        assert_eq!(j["recovered"], true, "{j}");
    }
    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut published_b = 5;
    let mut early: std::collections::VecDeque<_> = std::mem::take(&mut s.early).into();
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.last() != Some(&GAP) || b.last() != Some(&LAST_B) {
        let m = match early.pop_front() {
            Some(m) => m,
            None => {
                let left = deadline.saturating_duration_since(Instant::now());
                s.next_msg(left).await
            }
        };
        match m.event.as_str() {
            "event" => {
                let e = m.json();
                let offset = e["offset"].as_u64().expect("offset");
                if e["room"] == "long:a" {
                    a.push(offset);
                    if offset % 4 == 0 && published_b < LAST_B {
                        node.publish("feed:b", "live", json!({})).await;
                        published_b += 1;
                    }
                } else {
                    b.push(offset);
                }
            }
            "disconnect" => panic!(
                "cut after {} events of a and {} of b: {}",
                a.len(),
                b.len(),
                m.data
            ),
            _ => {}
        }
    }
    assert_gap_free(&a, GAP, "sse room a");
    assert_gap_free(&b, LAST_B, "sse room b");
}
