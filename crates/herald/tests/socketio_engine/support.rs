//! Raw Engine.IO clients for `socketio_engine.rs`: HTTP long polling with
//! reqwest, and packets over the harness's raw WebSocket.

use crate::common::{RawWs, TestNode};
use serde_json::Value;
use std::time::Duration;

/// How long any one step may take.
pub const WAIT: Duration = Duration::from_secs(5);

/// An HTTP answer: status, headers, body.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// Asserts an Engine.IO error answer with `code`.
    pub fn assert_error(&self, status: u16, code: u64) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.json()["code"], code, "{}", self.body);
    }

    /// The packets of a polling body.
    pub fn packets(&self) -> Vec<String> {
        assert_eq!(self.status, 200, "{}", self.body);
        self.body.split('\u{1e}').map(str::to_owned).collect()
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("client")
}

pub async fn request(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Vec<u8>>,
    origin: Option<&str>,
) -> Answer {
    let mut req = client.request(method, url);
    if let Some(body) = body {
        req = req
            .header("content-type", "text/plain;charset=UTF-8")
            .body(body);
    }
    if let Some(origin) = origin {
        req = req.header("origin", origin);
    }
    let res = req.send().await.expect("request");
    Answer {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body: res.text().await.expect("body"),
    }
}

pub async fn get(client: &reqwest::Client, url: String) -> Answer {
    request(client, reqwest::Method::GET, url, None, None).await
}

pub async fn post(client: &reqwest::Client, url: String, body: &[u8]) -> Answer {
    request(
        client,
        reqwest::Method::POST,
        url,
        Some(body.to_vec()),
        None,
    )
    .await
}

pub fn poll_url(node: &TestNode, sid: &str) -> String {
    format!(
        "{}/socket.io/?EIO=4&transport=polling&sid={sid}",
        node.url()
    )
}

/// Opens a polling session; returns its sid and open packet.
pub async fn open_polling(node: &TestNode, client: &reqwest::Client) -> (String, Value) {
    let url = format!("{}/socket.io/?EIO=4&transport=polling", node.url());
    let answer = get(client, url).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let open = answer.body.strip_prefix('0').expect("an open packet");
    let open: Value = serde_json::from_str(open).expect("open JSON");
    (open["sid"].as_str().expect("sid").to_owned(), open)
}

/// GETs with the sid until the answer is an error (the session is gone),
/// within [`WAIT`]; returns that answer.
pub async fn until_gone(node: &TestNode, client: &reqwest::Client, sid: &str) -> Answer {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // A noop POST does not count as polling, and wakes no one.
        let answer = post(client, poll_url(node, sid), b"6").await;
        if answer.status != 200 {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "session {sid} still alive"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends one text frame.
pub async fn send_text(ws: &mut RawWs, text: &str) {
    ws.send_frame(1, text.as_bytes()).await.expect("send");
}

/// The next text frame, skipping pings (`2`), which it answers.
pub async fn next_text(ws: &mut RawWs) -> Option<String> {
    loop {
        let frame = ws.next_frame(WAIT).await?;
        if frame.opcode != 1 {
            return Some(format!("<opcode {}>", frame.opcode));
        }
        let text = String::from_utf8(frame.payload).expect("UTF-8");
        if text == "2" {
            send_text(ws, "3").await;
            continue;
        }
        return Some(text);
    }
}

/// GETs until the packets seen include one starting with each of `want`,
/// in order; returns every GET's packets (noops left out).
pub async fn poll_until(
    node: &TestNode,
    client: &reqwest::Client,
    sid: &str,
    want: &[&str],
) -> Vec<Vec<String>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut bodies = Vec::new();
    let mut seen = Vec::new();
    loop {
        let packets = get(client, poll_url(node, sid)).await.packets();
        for packet in &packets {
            if packet == "2" {
                post(client, poll_url(node, sid), b"3").await;
            }
        }
        let packets: Vec<String> = packets.into_iter().filter(|p| p != "6").collect();
        seen.extend(packets.iter().cloned());
        if !packets.is_empty() {
            bodies.push(packets);
        }
        let mut rest = want.iter().peekable();
        for packet in &seen {
            if rest.peek().is_some_and(|w| packet.starts_with(*w)) {
                rest.next();
            }
        }
        if rest.peek().is_none() {
            return bodies;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waiting for {want:?}; seen {seen:?}"
        );
    }
}

/// Opens a polling session and sends CONNECT with a token (not polling).
pub async fn connect_polling(node: &TestNode, client: &reqwest::Client, user: &str) -> String {
    let (sid, _) = open_polling(node, client).await;
    let connect = format!(r#"40{{"token":"{}"}}"#, node.user_token(user));
    let answer = post(client, poll_url(node, &sid), connect.as_bytes()).await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
    sid
}
