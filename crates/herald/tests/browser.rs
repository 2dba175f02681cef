//! An SSE client in a real browser (issue #3): headless Chromium loads a
//! page served by the test, whose script opens an `EventSource` to a test
//! node; the test publishes, reads `window.received` over the DevTools
//! protocol and checks types, offsets and `lastEventId`. Then the node
//! cuts the stream and the browser's own reconnect resumes it with
//! `Last-Event-ID`.
//!
//! Needs Debian's `chromium` at /usr/bin/chromium; fails clearly without
//! it unless `SKIP_BROWSER_TESTS=1`.

mod common;

use common::cdp::{self, Chromium};
use common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const FEED: &str = r#"
[namespaces.feed]
join = "any"
history_size = 100
history_ttl = "1h"
"#;

/// Serves `html` at every path but `/favicon.ico` on 127.0.0.1:0; returns
/// the port. The accept loop lives as long as the test's runtime.
async fn serve_page(html: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind page server");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        for _ in 0..100 {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let html = html.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 2048];
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16384 {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return false,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    true
                })
                .await;
                if read != Ok(true) {
                    return;
                }
                let head = String::from_utf8_lossy(&buf);
                let path = head.split_whitespace().nth(1).unwrap_or("/");
                let (status, body, ctype) = if path.starts_with("/favicon") {
                    ("204 No Content", String::new(), "text/plain")
                } else {
                    ("200 OK", html, "text/html; charset=utf-8")
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    port
}

/// The page: one EventSource, every message recorded with its type, data
/// and lastEventId.
fn page_html(sse_url: &str) -> String {
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>herald sse</title></head>
<body><p>herald EventSource test</p>
<script>
window.received = [];
window.opens = 0;
window.failures = [];
const es = new EventSource({url});
window.es = es;
const types = ["authenticated", "room_joined", "room_left", "event", "message",
  "member_joined", "member_left", "disconnect"];
for (const t of types) {{
  es.addEventListener(t, (e) => {{
    window.received.push({{type: e.type, data: e.data, lastEventId: e.lastEventId}});
  }});
}}
es.onopen = () => {{ window.opens += 1; }};
es.onerror = (e) => {{
  window.failures.push({{readyState: es.readyState, data: e.data === undefined ? null : e.data}});
}};
</script></body></html>"#,
        url = cdp::js_str(sse_url)
    )
}

/// Parses `room~epoch~offset,...`.
fn parse_id(id: &str) -> Vec<(String, String, u64)> {
    id.split(',')
        .map(|entry| {
            let p: Vec<&str> = entry.split('~').collect();
            assert_eq!(p.len(), 3, "lastEventId entry `{entry}` of `{id}`");
            let off = p[2]
                .parse()
                .unwrap_or_else(|_| panic!("offset in `{entry}` of `{id}`"));
            (p[0].to_owned(), p[1].to_owned(), off)
        })
        .collect()
}

async fn received(page: &mut cdp::CdpPage) -> Vec<Value> {
    let text = page
        .eval("JSON.stringify(window.received)")
        .await
        .unwrap_or_else(|e| panic!("read window.received: {e}"));
    let list: Vec<Value> =
        serde_json::from_str(text.as_str().expect("a JSON string")).expect("received is JSON");
    list.into_iter()
        .map(|mut m| {
            let data: Value = serde_json::from_str(m["data"].as_str().unwrap_or("null"))
                .unwrap_or_else(|e| panic!("message data is not JSON ({e}): {m}"));
            m["data"] = data;
            m
        })
        .collect()
}

/// Polls until `count(received) >= n` or `timeout`; returns the list.
async fn wait_received(
    page: &mut cdp::CdpPage,
    what: &str,
    n: usize,
    count: impl Fn(&[Value]) -> usize,
    timeout: Duration,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let got = received(page).await;
        if count(&got) >= n {
            return got;
        }
        if std::time::Instant::now() > deadline {
            let failures = page
                .eval("JSON.stringify(window.failures)")
                .await
                .unwrap_or_default();
            panic!(
                "the page did not receive {what} (want {n}, have {}) within {timeout:?}; \
                 received {got:#?}; EventSource errors {failures}; page errors {:?}",
                count(&got),
                page.errors()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn event_offsets(list: &[Value]) -> Vec<u64> {
    list.iter()
        .filter(|m| m["type"] == "event")
        .map(|m| m["data"]["offset"].as_u64().expect("offset"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventsource_in_headless_chromium_receives_and_resumes() {
    if cdp::skip_browser_tests("eventsource_in_headless_chromium_receives_and_resumes") {
        return;
    }
    let node = TestNode::start(FEED).await;
    let token = node.user_token("webuser");
    let sse_url = format!("{}/sse?rooms=feed:1&token={token}", node.url());
    let page_port = serve_page(page_html(&sse_url)).await;
    let page_url = format!("http://127.0.0.1:{page_port}/index.html");

    let browser = Chromium::launch();
    let mut page = browser.new_page(&page_url).await;

    // The opening: authenticated, then one room_joined per room.
    let got = wait_received(
        &mut page,
        "the opening messages",
        3,
        |l| l.iter().filter(|m| m["type"] == "room_joined").count(),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(got[0]["type"], "authenticated", "{got:#?}");
    assert_eq!(got[0]["data"]["user_id"], "webuser", "{got:#?}");
    let mut rooms: Vec<String> = got[1..4]
        .iter()
        .map(|m| {
            assert_eq!(m["type"], "room_joined", "{got:#?}");
            m["data"]["room"].as_str().expect("room").to_owned()
        })
        .collect();
    rooms.sort();
    assert_eq!(rooms, vec!["feed:1", "global", "user:webuser"]);
    let epoch = got[1..4]
        .iter()
        .find(|m| m["data"]["room"] == "feed:1")
        .map(|m| m["data"]["epoch"].as_str().expect("epoch").to_owned())
        .expect("feed:1 joined");

    for i in 1..=5 {
        node.publish("feed:1", "tick", json!({"n": i})).await;
    }
    let got = wait_received(
        &mut page,
        "5 events",
        5,
        |l| l.iter().filter(|m| m["type"] == "event").count(),
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(event_offsets(&got), vec![1, 2, 3, 4, 5], "{got:#?}");
    for m in got.iter().filter(|m| m["type"] == "event") {
        let d = &m["data"];
        assert_eq!(d["type"], "event", "{m}");
        assert_eq!(d["room"], "feed:1", "{m}");
        assert_eq!(d["event"], "tick", "{m}");
        assert_eq!(d["data"]["n"], d["offset"], "{m}");
        assert_eq!(d["epoch"], epoch.as_str(), "{m}");
        // lastEventId: every room of the stream, in room-name order, with
        // this event's position for its room.
        let id = m["lastEventId"].as_str().expect("lastEventId");
        let entries = parse_id(id);
        let names: Vec<&str> = entries.iter().map(|(r, _, _)| r.as_str()).collect();
        assert_eq!(
            names,
            vec!["feed:1", "global", "user:webuser"],
            "lastEventId `{id}`"
        );
        assert_eq!(
            entries[0],
            (
                "feed:1".to_owned(),
                epoch.clone(),
                d["offset"].as_u64().unwrap()
            ),
            "lastEventId `{id}`"
        );
    }

    // The node cuts the stream; the browser reconnects by itself (retry:
    // 2000) and sends Last-Event-ID; what was published meanwhile is
    // replayed, nothing twice.
    let (s, b) = node
        .api(
            "POST",
            "/api/v1/users/webuser/disconnect",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["disconnected"], 1, "{b}");
    for i in 6..=7 {
        node.publish("feed:1", "tick", json!({"n": i})).await;
    }
    let got = wait_received(
        &mut page,
        "the resumed stream with events 6 and 7",
        7,
        |l| l.iter().filter(|m| m["type"] == "event").count(),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        event_offsets(&got),
        vec![1, 2, 3, 4, 5, 6, 7],
        "gap-free and no duplicates across the browser's reconnect: {got:#?}"
    );
    let disconnect = got
        .iter()
        .find(|m| m["type"] == "disconnect")
        .unwrap_or_else(|| panic!("a disconnect message before the cut: {got:#?}"));
    assert_eq!(disconnect["data"]["code"], 4013, "{disconnect}");
    let auths = got.iter().filter(|m| m["type"] == "authenticated").count();
    assert_eq!(auths, 2, "one authenticated per connection: {got:#?}");
    let rejoined = got
        .iter()
        .filter(|m| m["type"] == "room_joined" && m["data"]["room"] == "feed:1")
        .nth(1)
        .unwrap_or_else(|| panic!("feed:1 joined again: {got:#?}"));
    assert_eq!(
        rejoined["data"]["recovered"], true,
        "the browser sent Last-Event-ID and the stream recovered: {rejoined}"
    );
    assert_eq!(rejoined["data"]["epoch"], epoch.as_str(), "{rejoined}");
    let opens = page.eval("window.opens").await.expect("opens");
    assert_eq!(opens, json!(2), "two EventSource opens");
    let last = got.last().expect("messages");
    let entries = parse_id(last["lastEventId"].as_str().expect("id"));
    assert_eq!(entries[0].2, 7, "{last}");
    // Close the EventSource before the browser goes.
    let _ = page.eval("window.es.close(); true").await;
}

/// A page whose WebSocket joins `room` and records every frame, and the
/// extensions it negotiated.
fn ws_page_html(ws_url: &str, room: &str) -> String {
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>herald ws deflate</title></head>
<body><script>
window.frames_in = [];
window.ext = null;
const ws = new WebSocket({url});
ws.onopen = () => {{ window.ext = ws.extensions; }};
ws.onmessage = (m) => {{
  const f = JSON.parse(m.data);
  window.frames_in.push(f);
  if (f.type === "authenticated") ws.send(JSON.stringify({{type: "join_room", id: 1, room: {room}}}));
}};
</script></body></html>"#,
        url = cdp::js_str(ws_url),
        room = cdp::js_str(room)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_websocket_negotiates_permessage_deflate() {
    if cdp::skip_browser_tests("chromium_websocket_negotiates_permessage_deflate") {
        return;
    }
    let config = format!("{FEED}\n[compression]\nenabled = true\nmin_bytes = 256\n");
    let node = TestNode::start_process(&config).await;
    let token = node.user_token("zipper");
    let ws_url = format!("{}?token={token}", node.ws_url());
    let page_port = serve_page(ws_page_html(&ws_url, "feed:z")).await;
    let browser = Chromium::launch();
    let mut page = browser
        .new_page(&format!("http://127.0.0.1:{page_port}/index.html"))
        .await;
    let joined = "window.frames_in.some(f => f.type === 'room_joined')";
    page.wait_for(joined, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("no room_joined: {e}; errors {:?}", page.errors()));
    let ext = page.eval("window.ext").await.expect("ws.extensions");
    assert!(
        ext.as_str()
            .is_some_and(|e| e.starts_with("permessage-deflate")),
        "the browser's WebSocket negotiated deflate: {ext}"
    );
    let text = "sphinx of black quartz, judge my vow ".repeat(40);
    for n in 0..3 {
        node.publish("feed:z", "big", json!({"n": n, "text": text}))
            .await;
    }
    let events = "window.frames_in.filter(f => f.type === 'event').length >= 3";
    page.wait_for(events, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("no events: {e}; errors {:?}", page.errors()));
    let got = page
        .eval("JSON.stringify(window.frames_in.filter(f => f.type === 'event').map(f => f.data))")
        .await
        .expect("events");
    let got: Vec<Value> = serde_json::from_str(got.as_str().expect("JSON text")).expect("JSON");
    let want: Vec<Value> = (0..3).map(|n| json!({"n": n, "text": text})).collect();
    assert_eq!(got, want);
    let sent = node.metric_sum("herald_ws_compressed_frames_total").await;
    assert_eq!(sent, Some(3.0), "the node sent them compressed");
    page.close().await;
}
