//! The Server-Sent Events transport at `/sse` (PROTOCOL.md 6, issue #3):
//! tokens, room checks, headers, the message format, the `id:` and
//! `Last-Event-ID` resume across rooms, limits, disconnects and heartbeats.
//! A small SSE parser over reqwest's chunked body stands in for a browser.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const HOUR: Duration = Duration::from_secs(3600);

const FEED: &str = r#"
[namespaces.feed]
join = "any"
send = "any"
history_size = 100
history_ttl = "1h"
"#;

/// One SSE message (fields per the WHATWG event-stream format).
#[derive(Debug, Clone, Default)]
struct SseMsg {
    event: String,
    data: String,
    id: Option<String>,
    retry: Option<u64>,
}

impl SseMsg {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {:?}", self.data))
    }
}

#[derive(Debug)]
enum SseItem {
    Msg(SseMsg),
    Comment(String),
    /// Why the stream ended (shown in panic messages).
    Ended(#[allow(dead_code)] String),
    Timeout,
}

/// A streaming SSE response with its own parser.
struct SseStream {
    resp: reqwest::Response,
    buf: Vec<u8>,
    cur: SseMsg,
    has_fields: bool,
    ended: Option<String>,
    /// Every message seen, in order.
    seen: Vec<SseMsg>,
    /// Events that arrived among the opening `room_joined` messages
    /// (replays follow their own room's `room_joined`).
    early: Vec<SseMsg>,
}

impl SseStream {
    /// Pops one complete line from the buffer (without its terminator).
    fn pop_line(&mut self) -> Option<String> {
        let pos = self.buf.iter().position(|&b| b == b'\n' || b == b'\r')?;
        let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
        let mut end = pos + 1;
        if self.buf[pos] == b'\r' {
            if end == self.buf.len() {
                // A lone CR at the end of a chunk: wait for a possible LF.
                return None;
            }
            if self.buf[end] == b'\n' {
                end += 1;
            }
        }
        self.buf.drain(..end);
        Some(line)
    }

    /// Feeds one line to the parser; returns a finished item, if any.
    fn take_line(&mut self, line: String) -> Option<SseItem> {
        if line.is_empty() {
            if !self.has_fields {
                return None;
            }
            self.has_fields = false;
            let mut msg = std::mem::take(&mut self.cur);
            if msg.data.ends_with('\n') {
                msg.data.pop();
            }
            self.seen.push(msg.clone());
            return Some(SseItem::Msg(msg));
        }
        if let Some(c) = line.strip_prefix(':') {
            return Some(SseItem::Comment(c.trim().to_owned()));
        }
        let (name, value) = match line.split_once(':') {
            Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_str(), ""),
        };
        self.has_fields = true;
        match name {
            "event" => self.cur.event = value.to_owned(),
            "data" => {
                self.cur.data.push_str(value);
                self.cur.data.push('\n');
            }
            "id" => self.cur.id = Some(value.to_owned()),
            "retry" => self.cur.retry = value.parse().ok(),
            _ => {}
        }
        None
    }

    /// The next message or comment, bounded by `timeout`.
    async fn next_item(&mut self, timeout: Duration) -> SseItem {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(line) = self.pop_line() {
                if let Some(item) = self.take_line(line) {
                    return item;
                }
            }
            if let Some(e) = &self.ended {
                return SseItem::Ended(e.clone());
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Err(_) => return SseItem::Timeout,
                Ok(Ok(Some(bytes))) => self.buf.extend_from_slice(&bytes),
                Ok(Ok(None)) => self.ended = Some("stream ended".into()),
                Ok(Err(e)) => self.ended = Some(format!("stream failed: {e}")),
            }
        }
    }

    /// The next message (comments skipped); panics on anything else.
    async fn next_msg(&mut self, timeout: Duration) -> SseMsg {
        let deadline = Instant::now() + timeout;
        loop {
            match self
                .next_item(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                SseItem::Msg(m) => return m,
                SseItem::Comment(_) => continue,
                other => panic!(
                    "expected an SSE message within {timeout:?}, got {other:?}; seen {}",
                    self.summary()
                ),
            }
        }
    }

    /// Reads until a message with `event: ty`; returns it.
    async fn expect_event(&mut self, ty: &str, timeout: Duration) -> SseMsg {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_item(left).await {
                SseItem::Msg(m) if m.event == ty => return m,
                SseItem::Msg(_) | SseItem::Comment(_) => {}
                other => panic!(
                    "expected `event: {ty}` within {timeout:?}, got {other:?}; seen {}",
                    self.summary()
                ),
            }
        }
    }

    /// Every message within `dur` (stops early when the stream ends).
    async fn collect_for(&mut self, dur: Duration) -> Vec<SseMsg> {
        let deadline = Instant::now() + dur;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.next_item(left).await {
                SseItem::Msg(m) => out.push(m),
                SseItem::Comment(_) => {}
                SseItem::Timeout | SseItem::Ended(_) => return out,
            }
        }
    }

    /// Reads until the stream ends; returns the messages seen meanwhile.
    async fn expect_end(&mut self, timeout: Duration) -> Vec<SseMsg> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_item(left).await {
                SseItem::Msg(m) => out.push(m),
                SseItem::Comment(_) => {}
                SseItem::Ended(_) => return out,
                SseItem::Timeout => panic!(
                    "stream still open after {timeout:?}; seen {}",
                    self.summary()
                ),
            }
        }
    }

    fn summary(&self) -> String {
        let shown: Vec<String> = self
            .seen
            .iter()
            .rev()
            .take(10)
            .rev()
            .map(|m| format!("[{}] {}", m.event, m.data))
            .collect();
        format!("{} messages: {}", self.seen.len(), shown.join(" | "))
    }
}

/// A client for streams: no total timeout, only a connect timeout.
fn stream_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client")
}

/// Opens `/sse{query}` with `headers`; Ok(stream) on 200, otherwise Err
/// with the status and the JSON body.
async fn open_sse(
    node: &TestNode,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<SseStream, (u16, Value)> {
    let mut req = stream_client().get(format!("{}/sse{query}", node.url()));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(FRAME_WAIT, req.send())
        .await
        .expect("SSE response headers timed out")
        .expect("SSE request failed");
    let status = resp.status().as_u16();
    if status != 200 {
        let text = tokio::time::timeout(FRAME_WAIT, resp.text())
            .await
            .expect("error body timed out")
            .unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        return Err((status, body));
    }
    Ok(SseStream {
        resp,
        buf: Vec::new(),
        cur: SseMsg::default(),
        has_fields: false,
        ended: None,
        seen: Vec::new(),
        early: Vec::new(),
    })
}

async fn open_ok(node: &TestNode, query: &str, headers: &[(&str, &str)]) -> SseStream {
    match open_sse(node, query, headers).await {
        Ok(s) => s,
        Err((status, body)) => panic!("GET /sse{query} answered {status}: {body}"),
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Reads `authenticated` and then the `room_joined` of every room; returns
/// them keyed by room. Events in between (replays, which follow their own
/// room's `room_joined`) are kept in `s.early`.
async fn read_opening(s: &mut SseStream, rooms: usize) -> (SseMsg, BTreeMap<String, SseMsg>) {
    let auth = s.next_msg(FRAME_WAIT).await;
    assert_eq!(
        auth.event, "authenticated",
        "the stream opens with authenticated: {auth:?}"
    );
    let mut joined = BTreeMap::new();
    for _ in 0..rooms * 1000 {
        if joined.len() == rooms {
            break;
        }
        let m = s.next_msg(FRAME_WAIT).await;
        if m.event == "event" || m.event == "message" {
            let room = m.json()["room"].as_str().unwrap_or_default().to_owned();
            assert!(
                joined.contains_key(&room),
                "an event of {room} before its room_joined: {m:?}; seen {}",
                s.summary()
            );
            s.early.push(m);
            continue;
        }
        assert_eq!(
            m.event,
            "room_joined",
            "after authenticated: {m:?}; seen {}",
            s.summary()
        );
        let room = m.json()["room"].as_str().expect("room").to_owned();
        assert!(
            joined.insert(room.clone(), m).is_none(),
            "room_joined twice for {room}"
        );
    }
    assert_eq!(joined.len(), rooms, "room_joined messages: {}", s.summary());
    (auth, joined)
}

/// Parses an SSE `id:` (`room~epoch~offset` entries joined by `,`).
fn parse_id(id: &str) -> Vec<(String, String, u64)> {
    id.split(',')
        .map(|entry| {
            let parts: Vec<&str> = entry.split('~').collect();
            assert_eq!(
                parts.len(),
                3,
                "id entry `{entry}` of `{id}` is room~epoch~offset"
            );
            let offset = parts[2]
                .parse()
                .unwrap_or_else(|_| panic!("offset of `{entry}` in `{id}`"));
            (parts[0].to_owned(), parts[1].to_owned(), offset)
        })
        .collect()
}

fn id_offsets(id: &str) -> BTreeMap<String, u64> {
    parse_id(id).into_iter().map(|(r, _, o)| (r, o)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_in_header_opens_the_stream_with_the_documented_headers() {
    let node = TestNode::start(FEED).await;
    let token = node.user_token("alice");
    let mut s = open_ok(
        &node,
        "?rooms=feed:1",
        &[("Authorization", &bearer(&token))],
    )
    .await;
    let h = s.resp.headers().clone();
    let get = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        get("content-type").starts_with("text/event-stream"),
        "content-type: {h:?}"
    );
    assert_eq!(get("cache-control"), "no-cache", "{h:?}");
    assert_eq!(get("x-accel-buffering"), "no", "{h:?}");
    assert_eq!(get("access-control-allow-origin"), "*", "{h:?}");

    let (auth, joined) = read_opening(&mut s, 3).await;
    assert_eq!(
        auth.retry,
        Some(2000),
        "first message carries retry: 2000: {auth:?}"
    );
    let a = auth.json();
    assert_eq!(a["type"], "authenticated", "{a}");
    assert_eq!(a["user_id"], "alice", "{a}");
    assert!(
        a["connection_id"].is_string() && a["node_id"].is_string(),
        "{a}"
    );
    assert_eq!(
        joined.keys().cloned().collect::<Vec<_>>(),
        vec!["feed:1", "global", "user:alice"],
        "one room_joined per room, auto-joined ones included"
    );
    for (room, m) in &joined {
        let j = m.json();
        assert_eq!(j["type"], "room_joined", "{j}");
        assert_eq!(j["offset"], 0, "{room}: {j}");
        assert!(j["epoch"].is_string(), "{j}");
        assert!(j.get("recovered").is_none(), "no resume, no recovered: {j}");
        assert_eq!(m.retry, None, "retry only on the first message");
    }
    // The id after the last room_joined names every room, in name order.
    let last = s.seen.last().expect("messages").clone();
    let id = last.id.expect("room_joined carries an id");
    let entries = parse_id(&id);
    let rooms: Vec<&str> = entries.iter().map(|(r, _, _)| r.as_str()).collect();
    assert_eq!(rooms, vec!["feed:1", "global", "user:alice"], "id `{id}`");
    for (room, epoch, offset) in &entries {
        assert_eq!(joined[room].json()["epoch"], epoch.as_str(), "id `{id}`");
        assert_eq!(*offset, 0, "id `{id}`");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_in_query_works_and_missing_or_bad_tokens_get_401() {
    let node = TestNode::start(FEED).await;
    let token = node.user_token("bob");
    let mut s = open_ok(&node, &format!("?token={token}&rooms=feed:2"), &[]).await;
    let (auth, joined) = read_opening(&mut s, 3).await;
    assert_eq!(auth.json()["user_id"], "bob");
    assert!(joined.contains_key("feed:2"), "{joined:?}");
    node.publish("feed:2", "hello", json!({"x": 1})).await;
    let ev = s.expect_event("event", FRAME_WAIT).await;
    assert_eq!(ev.json()["data"], json!({"x": 1}));

    let expired = node
        .token_with_claims(&json!({"sub": "bob", "iat": now_secs() - 100, "exp": now_secs() - 50}));
    let wrong_key = sign_hs256(
        "some-other-secret-0123456789abcdef",
        &json!({"sub": "bob", "exp": now_secs() + 600}),
    );
    let cases: Vec<(String, Vec<(&str, String)>)> = vec![
        ("".into(), vec![]),
        ("?rooms=feed:2".into(), vec![]),
        ("?token=".into(), vec![]),
        ("?token=garbage".into(), vec![]),
        ("".into(), vec![("Authorization", "Bearer garbage".into())]),
        ("".into(), vec![("Authorization", bearer(&expired))]),
        (format!("?token={wrong_key}"), vec![]),
        (
            format!(
                "?token={}",
                alg_none_token(&json!({"sub": "bob", "exp": now_secs() + 600}))
            ),
            vec![],
        ),
    ];
    for (q, hs) in &cases {
        let hs: Vec<(&str, &str)> = hs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        match open_sse(&node, q, &hs).await {
            Ok(_) => panic!("GET /sse{q} with {hs:?} opened a stream"),
            Err((status, body)) => {
                assert_eq!(status, 401, "/sse{q} {hs:?}: {body}");
                assert_eq!(body["error"]["code"], "unauthorized", "{body}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_and_invalid_rooms_are_refused_before_the_stream() {
    let node = TestNode::start(FEED).await;
    let token = node.token("carol", &[], None, json!({"projects": [1]}), HOUR);
    let auth = bearer(&token);
    let hs = [("Authorization", auth.as_str())];
    for (rooms, name) in [
        ("project:1,project:9", "project:9"),
        ("user:dave", "user:dave"),
        ("secret:1", "secret:1"),
    ] {
        match open_sse(&node, &format!("?rooms={rooms}"), &hs).await {
            Ok(_) => panic!("rooms={rooms} opened a stream"),
            Err((status, body)) => {
                assert_eq!(status, 403, "rooms={rooms}: {body}");
                assert_eq!(body["error"]["code"], "forbidden", "{body}");
                let msg = body["error"]["message"].as_str().unwrap_or_default();
                assert!(msg.contains(name), "403 names `{name}`: {body}");
            }
        }
    }
    let long = "x".repeat(300);
    for rooms in ["bad%20room", "feed:%23x", "feed:1,a%C3%A9", long.as_str()] {
        match open_sse(&node, &format!("?rooms={rooms}"), &hs).await {
            Ok(_) => panic!("rooms={rooms} opened a stream"),
            Err((status, body)) => {
                assert_eq!(status, 400, "rooms={rooms}: {body}");
                assert_eq!(body["error"]["code"], "bad_request", "{body}");
            }
        }
    }
    // Too many event patterns.
    let many: Vec<String> = (0..100).map(|i| format!("e{i}")).collect();
    let q = format!("?events={}", many.join(","));
    let r = open_sse(&node, &q, &hs).await;
    assert!(matches!(&r, Err((400, _))), "100 patterns: {:?}", r.err());
    // The allowed room opens.
    let mut s = open_ok(&node, "?rooms=project:1", &hs).await;
    let (_, joined) = read_opening(&mut s, 3).await;
    assert!(joined.contains_key("project:1"), "{joined:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_last_event_id_is_a_clear_400() {
    let node = TestNode::start(FEED).await;
    let token = node.user_token("erin");
    let auth = bearer(&token);
    let cases: [(&str, &str); 9] = [
        ("garbage", "entry 1"),
        ("feed:1~abc", "expected room~epoch~offset"),
        ("feed:1~abc~1~2", "expected room~epoch~offset"),
        ("bad room~abc~1", "entry 1"),
        ("feed:1~~1", "epoch"),
        ("feed:1~ab-c~1", "epoch"),
        ("feed:1~abc~-1", "offset"),
        ("feed:1~abc~x", "offset"),
        ("global~abc~1,oops", "entry 2"),
    ];
    for (bad, needle) in cases {
        for via_query in [false, true] {
            let (q, hs) = if via_query {
                (
                    format!("?rooms=feed:1&last_event_id={}", bad.replace(' ', "%20")),
                    vec![("Authorization", auth.as_str())],
                )
            } else {
                (
                    "?rooms=feed:1".to_owned(),
                    vec![("Authorization", auth.as_str()), ("Last-Event-ID", bad)],
                )
            };
            match open_sse(&node, &q, &hs).await {
                Ok(mut s) => panic!(
                    "Last-Event-ID `{bad}` (query: {via_query}) opened a stream: {:?}",
                    s.next_msg(FRAME_WAIT).await
                ),
                Err((status, body)) => {
                    assert_eq!(status, 400, "`{bad}`: {body}");
                    assert_eq!(body["error"]["code"], "bad_request", "`{bad}`: {body}");
                    let msg = body["error"]["message"].as_str().unwrap_or_default();
                    assert!(msg.contains("Last-Event-ID"), "`{bad}`: {body}");
                    assert!(
                        msg.contains(needle),
                        "`{bad}` should mention `{needle}`: {body}"
                    );
                }
            }
        }
    }
    // Not ASCII (an opaque header value).
    let req = stream_client()
        .get(format!("{}/sse", node.url()))
        .header("Authorization", auth.as_str())
        .header(
            "Last-Event-ID",
            reqwest::header::HeaderValue::from_bytes(b"feed:1~ab\xffc~1").expect("opaque"),
        );
    let resp = tokio::time::timeout(FRAME_WAIT, req.send())
        .await
        .expect("timed out")
        .expect("request");
    assert_eq!(resp.status().as_u16(), 400, "non-ASCII Last-Event-ID");
    // Far too long.
    let huge = format!("feed:1~{}~1", "a".repeat(60)).repeat(2000);
    let huge = huge.replace("~1feed", "~1,feed");
    let r = open_sse(
        &node,
        "",
        &[("Authorization", auth.as_str()), ("Last-Event-ID", &huge)],
    )
    .await;
    match r {
        Ok(_) => panic!("a {} byte Last-Event-ID opened a stream", huge.len()),
        Err((status, body)) => assert!(
            status == 400 || status == 431,
            "oversized Last-Event-ID: {status} {body}"
        ),
    }

    // The node still serves, and an empty Last-Event-ID is a fresh start.
    let (s, _) = node.get("/health").await;
    assert_eq!(s, 200);
    let mut st = open_ok(
        &node,
        "?rooms=feed:1",
        &[("Authorization", auth.as_str()), ("Last-Event-ID", "")],
    )
    .await;
    let (_, joined) = read_opening(&mut st, 3).await;
    assert!(joined["feed:1"].json().get("recovered").is_none());
    node.publish("feed:1", "e", json!(1)).await;
    st.expect_event("event", FRAME_WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_messages_carry_the_websocket_frame_json() {
    let node = TestNode::start(FEED).await;
    let token = node.user_token("frank");
    let mut s = open_ok(&node, &format!("?token={token}&rooms=feed:3"), &[]).await;
    let (_, joined) = read_opening(&mut s, 3).await;
    let epoch = joined["feed:3"].json()["epoch"]
        .as_str()
        .unwrap()
        .to_owned();
    let (mut ws, _) = node.connect_user("gina").await;
    ws.join("feed:3").await;

    node.publish("feed:3", "order.created", json!({"id": 7, "items": [1, 2]}))
        .await;
    let ws_frame = ws.expect_type("event", FRAME_WAIT).await;
    let m = s.expect_event("event", FRAME_WAIT).await;
    assert_eq!(m.json(), ws_frame, "SSE data equals the WebSocket frame");
    assert_eq!(m.json()["offset"], 1);
    let ids = id_offsets(m.id.as_deref().expect("event carries an id"));
    assert_eq!(ids.get("feed:3"), Some(&1), "{:?}", m.id);
    assert!(m
        .id
        .as_deref()
        .unwrap()
        .contains(&format!("feed:3~{epoch}~1")));

    // send_message arrives as `event: message` with `from` (compared with
    // what another WebSocket member receives; the sender gets its own copy
    // too, before its ack, which `request` skips over).
    let (mut sender, _) = node.connect_user("hugo").await;
    sender.join("feed:3").await;
    let ack = sender
        .request(json!({"type": "send_message", "room": "feed:3", "data": {"hi": true}}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let ws_msg = ws.expect_type("message", FRAME_WAIT).await;
    let m = s.expect_event("message", FRAME_WAIT).await;
    let j = m.json();
    assert_eq!(j, ws_msg, "message frame equals the WebSocket one");
    assert_eq!(j["from"]["user_id"], "hugo", "{j}");
    assert_eq!(j["offset"], 2, "{j}");
    assert_eq!(id_offsets(m.id.as_deref().unwrap()).get("feed:3"), Some(&2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_parameter_filters_events() {
    let node = TestNode::start(FEED).await;
    let token = node.user_token("hank");
    let mut s = open_ok(
        &node,
        &format!("?token={token}&rooms=feed:4&events=keep.*,exact"),
        &[],
    )
    .await;
    read_opening(&mut s, 3).await;
    for ev in ["drop.a", "keep.a", "exactly", "exact", "keep.b.c", "other"] {
        node.publish("feed:4", ev, json!({"ev": ev})).await;
    }
    let got = s.collect_for(Duration::from_millis(800)).await;
    let names: Vec<String> = got
        .iter()
        .filter(|m| m.event == "event")
        .map(|m| m.json()["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(names, vec!["keep.a", "exact", "keep.b.c"], "{got:?}");
    // The id still advances past filtered events' rooms only as delivered:
    // the last delivered was offset 5.
    let last = got.last().expect("messages");
    assert_eq!(
        id_offsets(last.id.as_deref().unwrap()).get("feed:4"),
        Some(&5)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_resumes_two_rooms_gap_free() {
    let node = TestNode::start(FEED).await;
    let token = node.token("ivy", &[], None, json!({"projects": [1, 2]}), HOUR);
    let auth = bearer(&token);
    let q = "?rooms=project:1,project:2";
    let mut s = open_ok(&node, q, &[("Authorization", auth.as_str())]).await;
    let (_, joined) = read_opening(&mut s, 4).await;
    assert_eq!(
        joined.keys().cloned().collect::<Vec<_>>(),
        vec!["global", "project:1", "project:2", "user:ivy"]
    );
    for i in 1..=3 {
        node.publish("project:1", "p1", json!({"i": i})).await;
        node.publish("project:2", "p2", json!({"i": i})).await;
    }
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(s.expect_event("event", FRAME_WAIT).await);
    }
    let last_id = got.last().unwrap().id.clone().expect("id");
    assert_eq!(
        id_offsets(&last_id),
        BTreeMap::from([
            ("global".to_owned(), 0),
            ("project:1".to_owned(), 3),
            ("project:2".to_owned(), 3),
            ("user:ivy".to_owned(), 0),
        ]),
        "id `{last_id}`"
    );
    drop(s);

    // Missed while away: two per project room and one in the user room.
    for i in 4..=5 {
        node.publish("project:1", "p1", json!({"i": i})).await;
        node.publish("project:2", "p2", json!({"i": i})).await;
    }
    node.publish("user:ivy", "note", json!({"n": 1})).await;

    let mut s = open_ok(
        &node,
        q,
        &[
            ("Authorization", auth.as_str()),
            ("Last-Event-ID", &last_id),
        ],
    )
    .await;
    let (_, joined) = read_opening(&mut s, 4).await;
    for (room, replayed) in [
        ("project:1", 2),
        ("project:2", 2),
        ("user:ivy", 1),
        ("global", 0),
    ] {
        let j = joined[room].json();
        assert_eq!(j["recovered"], true, "{room}: {j}");
        assert_eq!(j["replayed"], replayed, "{room}: {j}");
    }
    let mut after = std::mem::take(&mut s.early);
    after.extend(s.collect_for(Duration::from_millis(800)).await);
    let mut evs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for m in after.iter().filter(|m| m.event == "event") {
        let j = m.json();
        evs.entry(j["room"].as_str().unwrap().to_owned())
            .or_default()
            .push(j["offset"].as_u64().unwrap());
    }
    assert_eq!(
        evs,
        BTreeMap::from([
            ("project:1".to_owned(), vec![4, 5]),
            ("project:2".to_owned(), vec![4, 5]),
            ("user:ivy".to_owned(), vec![1]),
        ]),
        "exactly the missed events: {after:?}"
    );
    let last_id = s
        .seen
        .iter()
        .rev()
        .find_map(|m| m.id.clone())
        .expect("an id");
    assert_eq!(
        id_offsets(&last_id),
        BTreeMap::from([
            ("global".to_owned(), 0),
            ("project:1".to_owned(), 5),
            ("project:2".to_owned(), 5),
            ("user:ivy".to_owned(), 1),
        ]),
        "id after replay `{last_id}`"
    );
    // Live events continue after the replay.
    node.publish("project:2", "p2", json!({"i": 6})).await;
    let m = s.expect_event("event", FRAME_WAIT).await;
    assert_eq!(m.json()["offset"], 6, "{m:?}");
    drop(s);

    // The query-parameter form resumes the same way (nothing missed).
    let lid = s_last_id_of_offsets(&last_id, "project:2", 6);
    let mut s = open_ok(
        &node,
        &format!("{q}&last_event_id={lid}"),
        &[("Authorization", auth.as_str())],
    )
    .await;
    let (_, joined) = read_opening(&mut s, 4).await;
    for (room, j) in &joined {
        assert_eq!(j.json()["recovered"], true, "{room}: {:?}", j.data);
        assert_eq!(j.json()["replayed"], 0, "{room}: {:?}", j.data);
    }
    let mut after = std::mem::take(&mut s.early);
    after.extend(s.collect_for(Duration::from_millis(500)).await);
    assert!(
        after.iter().all(|m| m.event != "event"),
        "nothing was missed: {after:?}"
    );
}

/// `id` with `room`'s offset replaced by `offset`.
fn s_last_id_of_offsets(id: &str, room: &str, offset: u64) -> String {
    parse_id(id)
        .into_iter()
        .map(|(r, e, o)| format!("{r}~{e}~{}", if r == room { offset } else { o }))
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_count_toward_the_per_user_limit() {
    let node =
        TestNode::start("[limits]\nmax_connections_per_user = 1\nper_user_policy = \"reject\"\n")
            .await;
    let token = node.user_token("jack");
    let mut s = open_ok(&node, &format!("?token={token}"), &[]).await;
    read_opening(&mut s, 2).await;
    match open_sse(&node, &format!("?token={token}"), &[]).await {
        Ok(_) => panic!("a second stream for jack opened with max_connections_per_user = 1"),
        Err((status, body)) => {
            assert_eq!(status, 429, "{body}");
            assert_eq!(body["error"]["code"], "limit_exceeded", "{body}");
        }
    }
    match WsClient::connect(&node.ws_url(), TokenIn::Header(token.clone())).await {
        Ok(_) => panic!("a WebSocket for jack was accepted beside his SSE stream"),
        Err(e) => assert_eq!(upgrade_status(&e), Some(429), "{}", describe_ws_error(&e)),
    }
    // Another user is unaffected.
    let other = node.user_token("kate");
    let mut o = open_ok(&node, &format!("?token={other}"), &[]).await;
    read_opening(&mut o, 2).await;
    // Closing the stream frees the slot.
    drop(s);
    let deadline = Instant::now() + FRAME_WAIT;
    loop {
        match open_sse(&node, &format!("?token={token}"), &[]).await {
            Ok(mut s) => {
                read_opening(&mut s, 2).await;
                break;
            }
            Err((429, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("slot not freed after the stream closed: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_count_toward_max_connections() {
    let node = TestNode::start("[limits]\nmax_connections = 1\n").await;
    let t1 = node.user_token("lena");
    let mut s = open_ok(&node, &format!("?token={t1}"), &[]).await;
    read_opening(&mut s, 2).await;
    let t2 = node.user_token("mike");
    match open_sse(&node, &format!("?token={t2}"), &[]).await {
        Ok(_) => panic!("a second stream opened with max_connections = 1"),
        Err((status, body)) => {
            assert_eq!(status, 503, "{body}");
            assert_eq!(body["error"]["code"], "unavailable", "{body}");
        }
    }
    match WsClient::connect(&node.ws_url(), TokenIn::Header(t2.clone())).await {
        Ok(_) => panic!("a WebSocket was accepted beside the SSE stream at max_connections = 1"),
        Err(e) => assert_eq!(upgrade_status(&e), Some(503), "{}", describe_ws_error(&e)),
    }
    drop(s);
    let deadline = Instant::now() + FRAME_WAIT;
    loop {
        match open_sse(&node, &format!("?token={t2}"), &[]).await {
            Ok(mut s) => {
                read_opening(&mut s, 2).await;
                break;
            }
            Err((503, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("slot not freed after the stream closed: {e:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_disconnect_ends_the_stream_with_4013() {
    let node = TestNode::start(FEED).await;
    let token = node.user_token("nina");
    let mut s = open_ok(&node, &format!("?token={token}"), &[]).await;
    read_opening(&mut s, 2).await;
    let (status, body) = node
        .api(
            "POST",
            "/api/v1/users/nina/disconnect",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["disconnected"], 1,
        "the SSE stream is a connection: {body}"
    );
    let rest = s.expect_end(FRAME_WAIT).await;
    let d = rest
        .iter()
        .find(|m| m.event == "disconnect")
        .unwrap_or_else(|| panic!("an `event: disconnect` before the end: {rest:?}"));
    let j = d.json();
    assert_eq!(j["type"], "disconnect", "{j}");
    assert_eq!(j["code"], 4013, "{j}");
    assert_eq!(j["reconnect"], false, "{j}");
    assert!(j["reason"].is_string(), "{j}");
    assert_eq!(
        rest.last().map(|m| m.event.as_str()),
        Some("disconnect"),
        "last message: {rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_disconnect_with_reconnect_true() {
    let mut node = TestNode::start("[server]\nshutdown_drain = \"1s\"\n").await;
    let token = node.user_token("olga");
    let mut s = open_ok(&node, &format!("?token={token}"), &[]).await;
    read_opening(&mut s, 2).await;
    node.sigterm();
    let rest = s.expect_end(Duration::from_secs(15)).await;
    let d = rest
        .iter()
        .find(|m| m.event == "disconnect")
        .unwrap_or_else(|| panic!("an `event: disconnect` before the end: {rest:?}"));
    let j = d.json();
    assert_eq!(j["reconnect"], true, "{j}");
    assert_eq!(j["code"], 1001, "{j}");
    assert!(
        node.wait_exit_async(Duration::from_secs(15))
            .await
            .is_some(),
        "node exits after SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comment_heartbeat_comes_every_15_seconds() {
    let node = TestNode::start("").await;
    let token = node.user_token("pia");
    let mut s = open_ok(&node, &format!("?token={token}"), &[]).await;
    read_opening(&mut s, 2).await;
    let start = Instant::now();
    match s.next_item(Duration::from_secs(18)).await {
        SseItem::Comment(c) => {
            let after = start.elapsed();
            assert_eq!(c, "heartbeat", "comment text");
            assert!(
                after >= Duration::from_secs(13),
                "heartbeat after {after:?}, expected about 15 s"
            );
        }
        SseItem::Msg(m) => panic!("unexpected message on an idle stream: {m:?}"),
        other => panic!("no heartbeat comment within 18 s: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_arrives_without_waiting_for_the_next() {
    // One publish at a time, each awaited on the stream before the next:
    // an event must not sit in the stream's queue until another arrives.
    let node = TestNode::start(FEED).await;
    let token = node.user_token("quinn");
    let mut s = open_ok(&node, &format!("?token={token}&rooms=feed:5"), &[]).await;
    read_opening(&mut s, 3).await;
    for i in 1..=6u64 {
        node.publish("feed:5", "tick", json!({"i": i})).await;
        let t = Instant::now();
        match s.next_item(Duration::from_secs(3)).await {
            SseItem::Msg(m) if m.event == "event" => {
                assert_eq!(m.json()["offset"], i, "{m:?}");
            }
            other => panic!(
                "event {i} was not delivered within 3 s of its publish (got {other:?} after {:?}); \
                 seen {}",
                t.elapsed(),
                s.summary()
            ),
        }
    }
}
