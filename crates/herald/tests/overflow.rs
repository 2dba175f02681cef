//! Priorities under backpressure (docs/protocol.md): a client that stops
//! reading in a namespace with `overflow = "drop"` or `"conflate"` is not
//! cut; it keeps every critical event, is told where each room's gap starts
//! and recovers the dropped events by offset; critical events alone still
//! overflow into a cut. SSE readers get the notice and resume the gap
//! with `last_event_id`. Real node processes (one metrics recorder each),
//! a raw WebSocket with a small receive window as the slow client.

mod common;

use common::sse::{bearer, open_ok, read_opening, stuck_sse, SseItem, SseMsg, SseParser};
use common::*;
use herald_testkit::RedisServer;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

const PAD: usize = 4000;
/// Most events a scenario publishes while waiting for the queue to shed.
const MAX_EVENTS: u64 = 3000;

fn config(overflow: &str, critical: &str, extra: &str) -> String {
    format!(
        "[limits]\nsend_queue_messages = 64\nsend_queue_bytes = 131072\n\
         [namespaces.feed]\njoin = \"any\"\noverflow = \"{overflow}\"\n\
         critical_events = [{critical}]\nhistory_size = 10000\nhistory_ttl = \"1h\"\n\
         history_max_bytes = 100000000\n{extra}"
    )
}

/// A raw client that joined `room` and will not read until told.
async fn slow_client(node: &TestNode, room: &str) -> RawWs {
    let mut ws = RawWs::connect_small_window(
        &node.addr(),
        &format!("/ws?token={}", node.user_token("slow")),
        4096,
    )
    .await;
    let auth = ws.next_json(FRAME_WAIT).await.expect("authenticated");
    assert_eq!(auth["type"], "authenticated", "{auth}");
    send(&mut ws, json!({"type": "join_room", "id": 1, "room": room})).await;
    loop {
        let v = ws.next_json(FRAME_WAIT).await.expect("room_joined");
        if v["type"] == "room_joined" {
            break;
        }
        assert_ne!(v["type"], "error", "{v}");
    }
    ws
}

/// Events shed for `reason` (`drop` or `conflate`), from `/metrics`.
async fn shed(node: &TestNode, reason: &str) -> f64 {
    let (_, text) = node.get("/metrics").await;
    let series = format!("herald_send_queue_dropped_events_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn send(ws: &mut RawWs, frame: Value) {
    ws.send_frame(1, frame.to_string().as_bytes())
        .await
        .expect("send frame");
}

/// Publishes `body(i)` for i = 0.. until the queue has shed at least once
/// (`metric` counts it), then `after` more; returns each event's offset
/// and body.
async fn publish_until_shed(
    node: &TestNode,
    metric: &str,
    after: u64,
    mut body: impl FnMut(u64) -> Value,
) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    let mut extra = None;
    for i in 0..MAX_EVENTS {
        let b = body(i);
        let r = node.publish_body(b.clone()).await;
        let offset = r["offset"].as_u64().unwrap_or_else(|| panic!("{r}"));
        out.push((offset, b));
        if extra.is_none() && i % 20 == 19 && node.metric_sum(metric).await.unwrap_or(0.0) > 0.0 {
            extra = Some(i + after);
        }
        if extra == Some(i) {
            return out;
        }
    }
    panic!("the slow client's queue never shed in {MAX_EVENTS} events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_keeps_critical_events_and_the_client_recovers_the_rest() {
    let node = TestNode::start_process(&config("drop", "\"done\"", "")).await;
    let room = "feed:1";
    let mut slow = slow_client(&node, room).await;
    let pad = "x".repeat(PAD);
    let published = publish_until_shed(&node, "herald_send_queue_dropped_events_total", 40, |i| {
        // Critical by the namespace's list (`done`) or by the publisher;
        // few and small, as critical events are meant to be: the stalled
        // queue keeps them all, and only they would overflow it.
        match i % 40 {
            39 => json!({"room": room, "event": "done", "data": {"i": i}}),
            19 => json!({"room": room, "event": "tick", "critical": true, "data": {"i": i}}),
            _ => json!({"room": room, "event": "tick", "data": {"i": i, "pad": pad}}),
        }
    })
    .await;
    let critical: BTreeSet<u64> = published
        .iter()
        .filter(|(_, b)| b["event"] == "done" || b["critical"] == true)
        .map(|(o, _)| *o)
        .collect();
    let last = published.last().map_or(0, |(o, _)| *o);

    // Read on: rejoin each room a notice names, from the notice's position.
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    let mut live = BTreeSet::new();
    let (mut notices, mut replaying, mut next_id) = (0, false, 2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < last as usize {
        let wait = deadline.saturating_duration_since(Instant::now());
        let Some(v) = slow.next_json(wait).await else {
            panic!(
                "stopped at {} of {last} offsets after {notices} notices",
                seen.len()
            );
        };
        match v["type"].as_str() {
            Some("event") => {
                let offset = v["offset"].as_u64().expect("offset");
                *seen.entry(offset).or_default() += 1;
                if !replaying {
                    live.insert(offset);
                }
            }
            Some("events_dropped") => {
                notices += 1;
                for r in v["rooms"].as_array().expect("rooms") {
                    assert_eq!(r["room"], room, "{v}");
                    send(
                        &mut slow,
                        json!({"type": "join_room", "id": next_id, "room": room,
                               "since": {"epoch": r["epoch"], "offset": r["offset"]}}),
                    )
                    .await;
                    next_id += 1;
                }
            }
            // Everything queued live came before the first rejoin's reply.
            Some("room_joined") => replaying = true,
            Some("disconnect") => panic!(
                "cut: {v} after {} offsets ({} live, {notices} notices, replaying {replaying}) of {last}",
                seen.len(),
                live.len()
            ),
            _ => {}
        }
    }
    assert!(notices >= 1, "no events_dropped notice");
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>(),
        "every offset, once deduplicated"
    );
    let missing: Vec<_> = critical.difference(&live).collect();
    assert!(missing.is_empty(), "critical events dropped: {missing:?}");
    assert!(live.len() < last as usize, "nothing was dropped live");
    send(&mut slow, json!({"type": "ping", "id": 999})).await;
    let pong = loop {
        let v = slow.next_json(FRAME_WAIT).await.expect("pong");
        if v["type"] == "pong" {
            break v;
        }
    };
    assert_eq!(pong["id"], 999, "still connected");
    assert_eq!(
        node.metric_sum("herald_send_queue_overflows_total").await,
        Some(0.0),
        "nobody was cut"
    );
    assert!(shed(&node, "drop").await >= 1.0);
    assert!(
        node.metric_sum("herald_events_dropped_notices_total")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
}

/// Progress ticks per run conflate to the newest; completions (critical)
/// all arrive; whatever else is missing was announced by a notice.
async fn conflate_scenario(node: &TestNode, critical_by_publisher: bool) {
    let room = "feed:runs";
    let mut slow = slow_client(node, room).await;
    let pad = "y".repeat(PAD);
    let published = publish_until_shed(node, "herald_send_queue_dropped_events_total", 30, |i| {
        let run = i % 3;
        if i % 25 == 24 {
            json!({"room": room, "event": "run.completed", "critical": critical_by_publisher,
                       "conflation_key": format!("run-{run}"), "data": {"i": i}})
        } else {
            json!({"room": room, "event": "progress", "conflation_key": format!("run-{run}"),
                       "data": {"i": i, "pad": pad}})
        }
    })
    .await;
    let last = published.last().map_or(0, |(o, _)| *o);
    let mut got = BTreeSet::new();
    let mut notices = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !got.contains(&last) {
        let wait = deadline.saturating_duration_since(Instant::now());
        let v = slow.next_json(wait).await.expect("the last event arrives");
        match v["type"].as_str() {
            Some("event") => {
                got.insert(v["offset"].as_u64().expect("offset"));
            }
            Some("events_dropped") => notices.push(v["rooms"][0]["offset"].as_u64().unwrap_or(0)),
            Some("disconnect") => panic!("cut: {v}"),
            _ => {}
        }
    }
    let key = |b: &Value| b["conflation_key"].as_str().unwrap_or_default().to_owned();
    let mut newest: BTreeMap<String, u64> = BTreeMap::new();
    for (offset, b) in &published {
        newest.insert(key(b), *offset);
    }
    for (offset, b) in &published {
        if b["event"] == "run.completed" {
            assert!(got.contains(offset), "completion {offset} lost");
        } else if newest[&key(b)] == *offset {
            assert!(
                got.contains(offset),
                "newest tick {offset} of {} lost",
                key(b)
            );
        } else if !got.contains(offset) {
            // Superseded by a newer event of its run that arrived, or
            // announced by a notice before it.
            let superseded = published
                .iter()
                .any(|(o, n)| o > offset && key(n) == key(b) && got.contains(o));
            let noted = notices.iter().any(|n| n < offset);
            assert!(superseded || noted, "tick {offset} lost silently");
        }
    }
    assert!(got.len() < published.len(), "nothing was conflated");
    // Conflation needs the key on the delivered event.
    assert!(shed(node, "conflate").await >= 1.0, "no event conflated");
    assert_eq!(
        node.metric_sum("herald_send_queue_overflows_total").await,
        Some(0.0),
        "nobody was cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflate_keeps_the_newest_tick_per_run_and_every_completion() {
    let node = TestNode::start_process(&config("conflate", "\"run.completed\"", "")).await;
    conflate_scenario(&node, false).await;
}

/// The Redis engine carries `critical` and `conflation_key` between
/// nodes: conflation needs the key on the delivered event, and the
/// completions are critical only by their publish field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_and_conflation_key_survive_the_redis_hop() {
    let redis = RedisServer::start();
    let broker = format!(
        "[broker]\nkind = \"redis\"\nredis_url = \"{}\"\nprefix = \"prio\"\n",
        redis.url()
    );
    let node = TestNode::start_process(&config("conflate", "", &broker)).await;
    // Upgrades wait until the engine has reached Redis.
    let deadline = Instant::now() + Duration::from_secs(15);
    while node.get("/ready").await.0 != 200 {
        assert!(Instant::now() < deadline, "node never ready on Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    conflate_scenario(&node, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_events_alone_still_overflow_into_a_cut() {
    let node = TestNode::start_process(&config("drop", "\"done\"", "")).await;
    let room = "feed:2";
    let mut slow = slow_client(&node, room).await;
    let pad = "z".repeat(PAD);
    publish_until_shed(
        &node,
        "herald_send_queue_overflows_total",
        0,
        |i| json!({"room": room, "event": "done", "data": {"i": i, "pad": pad}}),
    )
    .await;
    let out = slow.read_until_end(Duration::from_secs(20)).await;
    assert!(
        out.json().iter().all(|v| v["type"] != "events_dropped"),
        "critical events are never dropped"
    );
    match out.close {
        Some((code, _)) => assert_eq!(code, 4011, "slow consumer close code"),
        None => assert!(out.eof || out.error.is_some(), "still open"),
    }
    assert_eq!(
        node.metric_sum("herald_send_queue_dropped_events_total")
            .await,
        Some(0.0)
    );
}

/// Reads the chunked SSE body of `stream` until `done` says so (given the
/// messages so far), or panics after 20 s.
async fn read_sse(stream: &mut TcpStream, mut done: impl FnMut(&[SseMsg]) -> bool) -> Vec<SseMsg> {
    let (mut raw, mut parser, mut msgs) = (Vec::new(), SseParser::default(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(&msgs) {
        let mut chunk = [0u8; 65536];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("{} SSE messages, then nothing", msgs.len()))
            .expect("read");
        assert!(n > 0, "stream ended after {} messages", msgs.len());
        raw.extend_from_slice(&chunk[..n]);
        // De-chunk: `<hex size>\r\n<data>\r\n`, whole chunks only.
        while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
            let size = std::str::from_utf8(&raw[..eol])
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .expect("chunk size");
            if raw.len() < eol + 2 + size + 2 {
                break;
            }
            parser.push(&raw[eol + 2..eol + 2 + size]);
            raw.drain(..eol + 2 + size + 2);
        }
        while let Some(item) = parser.next_item() {
            if let SseItem::Msg(msg) = item {
                msgs.push(msg);
            }
        }
    }
    msgs
}

/// SSE has no `join_room`: a reader that stops reading in a `drop`
/// namespace gets the notice as an `events_dropped` SSE message, and a
/// stream opened with `last_event_id` at the notice's position replays the
/// gap, so the two streams together hold every offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_readers_get_the_notice_and_resume_the_gap_from_it() {
    let node = TestNode::start_process(&config("drop", "", "")).await;
    let room = "feed:sse";
    let token = node.user_token("slow-sse");
    let mut stuck = stuck_sse(&node, &format!("?rooms={room}&token={token}")).await;
    let pad = "s".repeat(PAD);
    let published = publish_until_shed(
        &node,
        "herald_send_queue_dropped_events_total",
        20,
        |i| json!({"room": room, "event": "tick", "data": {"i": i, "pad": pad}}),
    )
    .await;
    let last = published.last().map_or(0, |(o, _)| *o);
    let offset_of = |v: &Value| v["offset"].as_u64().expect("offset");

    // Each message is looked at once: `checked` of them were already.
    let mut checked = 0;
    let msgs: Vec<(String, Value)> = read_sse(&mut stuck, |m| {
        let newest = m[checked..]
            .iter()
            .any(|x| x.event == "event" && offset_of(&x.json()) == last);
        checked = m.len();
        newest
    })
    .await
    .into_iter()
    .map(|m| {
        let data = m.json();
        (m.event, data)
    })
    .collect();
    let live: BTreeSet<u64> = msgs
        .iter()
        .filter(|(e, _)| e == "event")
        .map(|(_, v)| offset_of(v))
        .collect();
    assert!(live.len() < last as usize, "nothing was dropped live");
    let (_, notice) = msgs
        .iter()
        .find(|(e, _)| e == "events_dropped")
        .expect("an events_dropped SSE message");
    assert_eq!(notice["type"], "events_dropped", "{notice}");
    let gap = &notice["rooms"][0];
    assert_eq!(gap["room"], room, "{notice}");
    let (epoch, from) = (
        gap["epoch"].as_str().expect("epoch"),
        gap["offset"].as_u64().expect("offset"),
    );
    assert!(
        (1..=from).all(|o| live.contains(&o)),
        "every event before the notice's position arrived live"
    );

    let mut resumed = open_ok(
        &node,
        &format!("?rooms={room}&last_event_id={room}~{epoch}~{from}"),
        &[("Authorization", &bearer(&token))],
    )
    .await;
    // Its own `user:` room and `global` are joined too.
    let (_, joined) = read_opening(&mut resumed, 3).await;
    let feed = joined.get(room).unwrap_or_else(|| panic!("{joined:?}"));
    assert_eq!(feed.json()["recovered"], true, "{feed:?}");
    let mut replayed: Vec<u64> = resumed.early.iter().map(|m| offset_of(&m.json())).collect();
    while replayed.last() != Some(&last) {
        let m = resumed.next_msg(FRAME_WAIT).await;
        if m.event == "event" {
            replayed.push(offset_of(&m.json()));
        }
    }
    assert_eq!(
        replayed,
        (from + 1..=last).collect::<Vec<_>>(),
        "the gap and what followed, in order"
    );
}
