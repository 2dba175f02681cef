//! A small Server-Sent Events client for the `/sse` tests: a parser over
//! reqwest's chunked body (standing in for a browser's EventSource), the
//! request helpers, the opening-handshake reader, `id:` parsing, and a raw
//! reader that stops reading.

use super::{TestNode, FRAME_WAIT};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A one-hour token lifetime.
pub const HOUR: Duration = Duration::from_secs(3600);

/// A node config with an open `feed` namespace that keeps history.
pub const FEED: &str = r#"
[namespaces.feed]
join = "any"
send = "any"
history_size = 100
history_ttl = "1h"
"#;

/// One SSE message (fields per the WHATWG event-stream format).
#[derive(Debug, Clone, Default)]
pub struct SseMsg {
    pub event: String,
    pub data: String,
    pub id: Option<String>,
    pub retry: Option<u64>,
}

impl SseMsg {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {:?}", self.data))
    }
}

#[derive(Debug)]
pub enum SseItem {
    Msg(SseMsg),
    Comment(String),
    /// Why the stream ended (shown in panic messages).
    Ended(#[allow(dead_code)] String),
    Timeout,
}

/// An event-stream parser fed bytes from any source (a reqwest body, or
/// a raw socket's de-chunked body).
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    cur: SseMsg,
    has_fields: bool,
}

/// A streaming SSE response with its own parser.
pub struct SseStream {
    pub resp: reqwest::Response,
    parser: SseParser,
    ended: Option<String>,
    /// Every message seen, in order.
    pub seen: Vec<SseMsg>,
    /// Events that arrived among the opening `room_joined` messages
    /// (replays follow their own room's `room_joined`).
    pub early: Vec<SseMsg>,
}

impl SseParser {
    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message or comment in what was pushed.
    pub fn next_item(&mut self) -> Option<SseItem> {
        while let Some(line) = self.pop_line() {
            if let Some(item) = self.take_line(line) {
                return Some(item);
            }
        }
        None
    }

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
}

impl SseStream {
    /// The next message or comment, bounded by `timeout`.
    pub async fn next_item(&mut self, timeout: Duration) -> SseItem {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(item) = self.parser.next_item() {
                if let SseItem::Msg(msg) = &item {
                    self.seen.push(msg.clone());
                }
                return item;
            }
            if let Some(e) = &self.ended {
                return SseItem::Ended(e.clone());
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Err(_) => return SseItem::Timeout,
                Ok(Ok(Some(bytes))) => self.parser.push(&bytes),
                Ok(Ok(None)) => self.ended = Some("stream ended".into()),
                Ok(Err(e)) => self.ended = Some(format!("stream failed: {e}")),
            }
        }
    }

    /// The next message (comments skipped); panics on anything else.
    pub async fn next_msg(&mut self, timeout: Duration) -> SseMsg {
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
    pub async fn expect_event(&mut self, ty: &str, timeout: Duration) -> SseMsg {
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
    pub async fn collect_for(&mut self, dur: Duration) -> Vec<SseMsg> {
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

    /// The messages before the `event` message whose JSON `event` is
    /// `name` (a sentinel published after what must or must not arrive);
    /// the sentinel itself is read and left out.
    pub async fn collect_until_event(&mut self, name: &str, timeout: Duration) -> Vec<SseMsg> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_item(left).await {
                SseItem::Msg(m) if m.event == "event" && m.json()["event"] == name => return out,
                SseItem::Msg(m) => out.push(m),
                SseItem::Comment(_) => {}
                other => panic!(
                    "no `{name}` event within {timeout:?}: {other:?}; seen {}",
                    self.summary()
                ),
            }
        }
    }

    /// Messages until `n` of them are `event` messages.
    pub async fn collect_events(&mut self, n: usize, timeout: Duration) -> Vec<SseMsg> {
        let deadline = Instant::now() + timeout;
        let mut out: Vec<SseMsg> = Vec::new();
        while out.iter().filter(|m| m.event == "event").count() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_item(left).await {
                SseItem::Msg(m) => out.push(m),
                SseItem::Comment(_) => {}
                other => panic!(
                    "{n} events not read within {timeout:?}: {other:?}; seen {}",
                    self.summary()
                ),
            }
        }
        out
    }

    /// Reads until the stream ends; returns the messages seen meanwhile.
    pub async fn expect_end(&mut self, timeout: Duration) -> Vec<SseMsg> {
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

    pub fn summary(&self) -> String {
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
pub fn stream_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client")
}

/// Opens `/sse{query}` with `headers`; Ok(stream) on 200, otherwise Err
/// with the status and the JSON body.
pub async fn open_sse(
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
        parser: SseParser::default(),
        ended: None,
        seen: Vec::new(),
        early: Vec::new(),
    })
}

pub async fn open_ok(node: &TestNode, query: &str, headers: &[(&str, &str)]) -> SseStream {
    match open_sse(node, query, headers).await {
        Ok(s) => s,
        Err((status, body)) => panic!("GET /sse{query} answered {status}: {body}"),
    }
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Reads `authenticated` and then the `room_joined` of every room; returns
/// them keyed by room. Events in between (replays, which follow their own
/// room's `room_joined`) are kept in `s.early`.
pub async fn read_opening(s: &mut SseStream, rooms: usize) -> (SseMsg, BTreeMap<String, SseMsg>) {
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
pub fn parse_id(id: &str) -> Vec<(String, String, u64)> {
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

pub fn id_offsets(id: &str) -> BTreeMap<String, u64> {
    parse_id(id).into_iter().map(|(r, _, o)| (r, o)).collect()
}

/// Opens `/sse{query}` on a raw socket with a 4 KiB receive buffer and
/// reads only the response head (checked: 200, chunked), so that nothing
/// more is read unless the test does: the peer of a stuck browser tab, or
/// one advertising a zero window on purpose.
pub async fn stuck_sse(node: &TestNode, query: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let addr = node.addr().parse().expect("node address");
    let mut stream = tokio::time::timeout(FRAME_WAIT, socket.connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let request = format!(
        "GET /sse{query} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        node.addr()
    );
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(FRAME_WAIT, stream.read(&mut byte))
            .await
            .expect("response head timed out")
            .expect("read head");
        assert_eq!(n, 1, "closed during the response head");
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    assert!(text.starts_with("HTTP/1.1 200"), "SSE answered: {text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{text}"
    );
    stream
}
