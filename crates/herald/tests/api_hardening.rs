//! Hardening of the HTTP API (issue #12): the API key is checked before the
//! body is read, bodies are bounded in size and time, history serves stored
//! frames without parsing them again, tenants are bounded, `limit=0` is a
//! bad request, and errors hyper answers itself carry the JSON body.
//!
//! Most tests talk raw HTTP/1.1 over TCP, so they control exactly which
//! bytes are sent and when.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for an answer that should come at once.
const ANSWER: Duration = Duration::from_secs(5);

const HIST: &str = r#"
[namespaces.deep]
join = "any"
send = "any"
history_size = 10
history_ttl = "1h"
"#;

/// One HTTP response read off a raw socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    head: String,
    body: String,
}

impl RawResponse {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }

    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "{self:?}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{self:?}"
        );
    }
}

/// Opens a connection and sends `bytes`.
async fn open(node: &TestNode, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(node.addr()).await.expect("connect");
    s.write_all(bytes).await.expect("send request");
    s
}

/// Reads one response: its head, then `Content-Length` bytes of body (or
/// up to the end of the connection). `None` when nothing complete arrived
/// by `wait`.
async fn read_response(s: &mut TcpStream, wait: Duration) -> Option<RawResponse> {
    let deadline = Instant::now() + wait;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                return Some(RawResponse { status, head, body });
            }
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn post_head(path: &str, key: Option<&str>, extra: &str) -> String {
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{auth}{extra}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_request_with_a_large_declared_body_gets_401_before_sending_it() {
    let node = TestNode::start("").await;
    for path in ["/api/v1/publish", "/api/v1/broadcast", "/api/v1/tokens"] {
        // Headers only: the 2 MiB body is never sent.
        let head = post_head(path, None, "Content-Length: 2000000\r\n");
        let mut s = open(&node, head.as_bytes()).await;
        let r = read_response(&mut s, ANSWER)
            .await
            .unwrap_or_else(|| panic!("{path}: no answer before the body was sent"));
        r.assert_error(401, "unauthorized");
    }
    // A publish-only key at an admin call: 403, also before the body.
    let head = post_head(
        "/api/v1/tokens",
        Some(PUBLISH_KEY),
        "Content-Length: 2000000\r\n",
    );
    let mut s = open(&node, head.as_bytes()).await;
    let r = read_response(&mut s, ANSWER).await.expect("an answer");
    r.assert_error(403, "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_body_over_2_mib_gets_413_at_once() {
    let node = TestNode::start(HIST).await;
    for len in ["3000000000", "2097153"] {
        let head = post_head(
            "/api/v1/publish",
            Some(ADMIN_KEY),
            &format!("Content-Length: {len}\r\n"),
        );
        let mut s = open(&node, head.as_bytes()).await;
        let r = read_response(&mut s, ANSWER)
            .await
            .unwrap_or_else(|| panic!("Content-Length {len}: no answer"));
        r.assert_error(413, "too_large");
        assert!(
            r.head.to_ascii_lowercase().contains("connection: close"),
            "{r:?}"
        );
    }
    // Exactly at the limit is read (and then judged as JSON).
    let body = format!(
        r#"{{"room":"deep:a","event":"e","data":"{}"}}"#,
        "x".repeat(2 * 1024 * 1024 - 40)
    );
    let padding = 2 * 1024 * 1024 - body.len();
    let body = format!("{body}{}", " ".repeat(padding));
    let head = post_head(
        "/api/v1/publish",
        Some(ADMIN_KEY),
        &format!("Content-Length: {}\r\n", body.len()),
    );
    let mut s = open(&node, format!("{head}{body}").as_bytes()).await;
    let r = read_response(&mut s, Duration::from_secs(15))
        .await
        .expect("an answer");
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_times_out_with_408() {
    let node = TestNode::start("[server]\nbody_timeout = \"1s\"\n").await;
    let head = post_head(
        "/api/v1/publish",
        Some(ADMIN_KEY),
        "Content-Length: 100\r\n",
    );
    let mut s = open(&node, head.as_bytes()).await;
    s.write_all(br#"{"room":"#).await.expect("first bytes");
    // The rest never comes; the answer must.
    let r = read_response(&mut s, Duration::from_secs(10))
        .await
        .expect("408 before the test's deadline");
    r.assert_error(408, "bad_request");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("server.body_timeout")),
        "{r:?}"
    );
    // The node serves on.
    let (status, _) = node.get("/health").await;
    assert_eq!(status, 200);
}

/// `[[[...1...]]]`, `depth` levels of arrays.
fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_splices_stored_frames_without_parsing_them_again() {
    let node = TestNode::start_process(HIST).await;
    // A client's send_message is stored as sent: 126 levels deep, the most
    // a frame parser with serde_json's default limit (128) reads. Inside
    // the history answer it sits deeper than that.
    let (mut c, _) = node.connect_user("deep").await;
    c.join("deep:ws").await;
    let data = nested(126);
    c.send_raw(WsClient::raw_text_frame(
        format!(r#"{{"type":"send_message","room":"deep:ws","data":{data}}}"#).into_bytes(),
    ))
    .await;
    let path = "/api/v1/rooms/deep:ws/history";
    let deadline = Instant::now() + FRAME_WAIT;
    let text = loop {
        let (status, body) = node.api("GET", path, Some(ADMIN_KEY), None).await;
        assert_eq!(status, 200, "history of deep data: {body}");
        // Too deep for the test's own JSON parser: the body comes back as text.
        match body {
            Value::String(text) if text.contains(&data) => break text,
            other => {
                assert!(Instant::now() < deadline, "event never stored: {other}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert!(text.starts_with(r#"{"room":"deep:ws""#), "{text}");
    assert!(text.contains(r#""offset":1"#), "{text}");
    // The same connection and node keep serving.
    let (status, body) = node
        .api(
            "GET",
            "/api/v1/rooms/deep:ws/history?since=1",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"], json!([]), "{body}");
    assert_eq!(node.metric_sum("herald_http_panics_total").await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_refuses_data_nested_over_100_levels_and_history_keeps_the_rest() {
    let node = TestNode::start(HIST).await;
    for (path, body) in [
        (
            "/api/v1/publish",
            format!(
                r#"{{"room":"deep:api","event":"e","data":{}}}"#,
                nested(200)
            ),
        ),
        (
            "/api/v1/publish",
            format!(
                r#"{{"room":"deep:api","event":"e","data":{}}}"#,
                nested(5000)
            ),
        ),
        (
            "/api/v1/publish",
            format!(
                r#"{{"room":"deep:api","event":"e","data":{}}}"#,
                nested(101)
            ),
        ),
        (
            "/api/v1/broadcast",
            format!(
                r#"{{"rooms":["deep:api"],"event":"e","data":{}}}"#,
                nested(101)
            ),
        ),
    ] {
        let (status, answer) = node.api_raw(path, Some(ADMIN_KEY), &body).await;
        assert_eq!(status, 400, "{path}: {answer}");
        assert_eq!(answer["error"]["code"], "bad_request", "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("`data`")),
            "{answer}"
        );
        // Whatever publish did, history answers.
        let (status, h) = node
            .api(
                "GET",
                "/api/v1/rooms/deep:api/history",
                Some(ADMIN_KEY),
                None,
            )
            .await;
        assert_eq!(status, 200, "history after {path}: {h}");
    }
    // Brackets inside strings are text, not nesting.
    let text = format!(r#"{{"s":"{}"}}"#, "[".repeat(300));
    let (status, answer) = node
        .api_raw(
            "/api/v1/publish",
            Some(ADMIN_KEY),
            &format!(r#"{{"room":"deep:api","event":"e","data":{text}}}"#),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = node
        .api_raw(
            "/api/v1/publish",
            Some(ADMIN_KEY),
            &format!(
                r#"{{"room":"deep:api","event":"e","data":{}}}"#,
                nested(100)
            ),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, h) = node
        .api(
            "GET",
            "/api/v1/rooms/deep:api/history",
            Some(ADMIN_KEY),
            None,
        )
        .await;
    assert_eq!(status, 200, "{h}");
    let events = h["events"].as_array().expect("events");
    assert_eq!(events.len(), 2, "{h}");
    assert_eq!(events[1]["data"].to_string(), nested(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_over_64_bytes_are_refused_naming_the_field() {
    let node = TestNode::start(HIST).await;
    let long = "t".repeat(65);
    let (status, answer) = node
        .api(
            "POST",
            "/api/v1/publish",
            Some(ADMIN_KEY),
            Some(json!({"room": "deep:t", "event": "e", "data": 1, "tenant": long})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`tenant`")),
        "{answer}"
    );
    for path in [
        format!("/api/v1/rooms/deep:t/history?tenant={long}"),
        format!("/api/v1/rooms/deep:t/presence?tenant={long}"),
        format!("/api/v1/users/u/connections?tenant={long}"),
        "/api/v1/users/u/connections?tenant=a%20b".to_owned(),
    ] {
        let (status, answer) = node.api("GET", &path, Some(ADMIN_KEY), None).await;
        assert_eq!(status, 400, "{path}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("`tenant`")),
            "{path}: {answer}"
        );
    }
    let (status, answer) = node
        .api(
            "POST",
            "/api/v1/tokens",
            Some(ADMIN_KEY),
            Some(json!({"sub": "u", "tenant": long})),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    // A token claiming such a tenant does not verify.
    let token = node.token("u", &[], Some(&long), json!({}), Duration::from_secs(60));
    match WsClient::connect(&node.ws_url(), TokenIn::Header(token)).await {
        Ok(_) => panic!("a token with a 65-byte tenant was accepted"),
        Err(e) => assert_eq!(upgrade_status(&e), Some(401), "{}", describe_ws_error(&e)),
    }
    // 64 bytes is fine everywhere.
    let ok = "t".repeat(64);
    node.publish_body(json!({"room": "deep:t", "event": "e", "data": 1, "tenant": ok}))
        .await;
    let token = node.token("u", &[], Some(&ok), json!({}), Duration::from_secs(60));
    let (mut c, _) = node.connect_token(&token).await;
    c.ping_ok().await;
}

/// Sends `request` from a separate task (the server may answer and close
/// before reading it all) and reads the answer.
async fn exchange(node: &TestNode, request: Vec<u8>) -> Option<RawResponse> {
    let s = TcpStream::connect(node.addr()).await.expect("connect");
    let (mut read, mut write) = s.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&request).await;
        write
    });
    let deadline = Instant::now() + ANSWER;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let answer = loop {
        if let Some(r) = parse_response(&buf) {
            break Some(r);
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break None;
        };
        match tokio::time::timeout(left, read.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break parse_response(&buf),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    writer.abort();
    answer
}

fn parse_response(buf: &[u8]) -> Option<RawResponse> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let body = buf.get(end + 4..end + 4 + len)?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(RawResponse {
        status,
        head,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_answered_below_the_router_carry_the_json_body() {
    let node = TestNode::start("").await;
    let get = |target: &str, headers: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n").into_bytes()
    };
    let many_headers: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("a garbage request line", b"GARBAGE\r\n\r\n".to_vec(), 400),
        (
            "a TLS client hello",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(),
            400,
        ),
        (
            "a header line without a colon",
            get("/health", "Broken\r\n"),
            400,
        ),
        (
            "a target over Herald's 48 KiB",
            get(&format!("/health?x={}", "a".repeat(50 * 1024)), ""),
            414,
        ),
        (
            "a target over hyper's 64 KiB",
            get(&format!("/health?x={}", "a".repeat(70 * 1024)), ""),
            414,
        ),
        ("150 header fields", get("/health", &many_headers), 431),
        (
            "header fields over Herald's 64 KiB",
            get("/health", &format!("X-Big: {}\r\n", "v".repeat(70 * 1024))),
            431,
        ),
        (
            "a head over hyper's buffer",
            get("/health", &format!("X-Big: {}\r\n", "v".repeat(420 * 1024))),
            431,
        ),
    ];
    for (what, request, status) in cases {
        let r = exchange(&node, request)
            .await
            .unwrap_or_else(|| panic!("{what}: no complete answer"));
        assert_eq!(r.status, status, "{what}: {r:?}");
        assert!(
            r.head
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{what}: {r:?}"
        );
        r.assert_error(status, "bad_request");
    }
    let (status, _) = node.get("/health").await;
    assert_eq!(status, 200);
}
