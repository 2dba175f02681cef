//! `WsClient`: a WebSocket client with bounded waits that logs the frames
//! it saw, with what a read produced (`Incoming`), how a connection ended
//! (`CloseInfo`) and where the token goes (`TokenIn`).

use super::FRAME_WAIT;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Where a client puts its token.
#[derive(Debug, Clone)]
pub enum TokenIn {
    Header(String),
    Query(String),
    None,
}

/// What a read produced.
#[derive(Debug)]
pub enum Incoming {
    Json(Value),
    /// A text frame that is not JSON.
    Text(String),
    Binary(Vec<u8>),
    Close(Option<(u16, String)>),
    /// The stream ended or failed without a close frame.
    Ended(String),
    Timeout,
}

/// How a connection ended.
#[derive(Debug, Clone)]
pub struct CloseInfo {
    pub code: u16,
    pub reason: String,
    /// The `disconnect` frame seen before the close, if any.
    pub disconnect: Option<Value>,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The HTTP status in a failed upgrade, if the server answered one.
pub fn upgrade_status(err: &tungstenite::Error) -> Option<u16> {
    match err {
        tungstenite::Error::Http(resp) => Some(resp.status().as_u16()),
        _ => None,
    }
}

pub fn describe_ws_error(err: &tungstenite::Error) -> String {
    match err {
        tungstenite::Error::Http(resp) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            format!("HTTP {} {}", resp.status(), body)
        }
        other => other.to_string(),
    }
}

/// A WebSocket client with bounded waits that keeps a log of what it saw.
pub struct WsClient {
    ws: Ws,
    /// Every JSON frame received, in order.
    pub seen: Vec<Value>,
    /// WebSocket pings received.
    pub pings: usize,
    closed: Option<CloseInfo>,
    next_id: u64,
}

impl WsClient {
    /// Opens `url` with the token where `token_in` says.
    pub async fn connect(url: &str, token_in: TokenIn) -> Result<WsClient, tungstenite::Error> {
        let full = match &token_in {
            TokenIn::Query(t) => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}token={t}")
            }
            _ => url.to_owned(),
        };
        let mut req = full.into_client_request()?;
        if let TokenIn::Header(t) = &token_in {
            req.headers_mut().insert(
                "Authorization",
                HeaderValue::from_str(&format!("Bearer {t}")).expect("header value"),
            );
        }
        let (ws, _resp) = tokio::time::timeout(
            Duration::from_secs(15),
            tokio_tungstenite::connect_async(req),
        )
        .await
        .map_err(|_| {
            tungstenite::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "upgrade timed out",
            ))
        })??;
        Ok(WsClient {
            ws,
            seen: Vec::new(),
            pings: 0,
            closed: None,
            next_id: 1,
        })
    }

    /// Sends one JSON value as a text frame.
    pub async fn send_json(&mut self, v: Value) {
        self.send_raw(Message::text(v.to_string())).await;
    }

    /// Sends any message; panics if the socket refuses.
    pub async fn send_raw(&mut self, m: Message) {
        tokio::time::timeout(FRAME_WAIT, self.ws.send(m))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    /// Sends, returning whether the socket accepted it.
    pub async fn try_send_raw(&mut self, m: Message) -> bool {
        matches!(
            tokio::time::timeout(FRAME_WAIT, self.ws.send(m)).await,
            Ok(Ok(()))
        )
    }

    /// A text frame holding arbitrary (possibly invalid UTF-8) bytes.
    pub fn raw_text_frame(bytes: Vec<u8>) -> Message {
        Message::Frame(Frame::message(bytes, OpCode::Data(Data::Text), true))
    }

    /// Reads the next non-ping/pong item, waiting at most `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Incoming {
        if let Some(c) = &self.closed {
            return Incoming::Ended(format!("already closed with {}", c.code));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let item = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Incoming::Timeout,
                Ok(item) => item,
            };
            match item {
                None => return Incoming::Ended("stream ended".into()),
                Some(Err(e)) => return Incoming::Ended(e.to_string()),
                Some(Ok(Message::Ping(_))) => {
                    self.pings += 1;
                    continue;
                }
                Some(Ok(Message::Pong(_))) => continue,
                Some(Ok(Message::Text(t))) => {
                    return match serde_json::from_str::<Value>(t.as_str()) {
                        Ok(v) => {
                            self.seen.push(v.clone());
                            Incoming::Json(v)
                        }
                        Err(_) => Incoming::Text(t.as_str().to_owned()),
                    }
                }
                Some(Ok(Message::Binary(b))) => return Incoming::Binary(b.to_vec()),
                Some(Ok(Message::Close(f))) => {
                    return Incoming::Close(f.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Some(Ok(Message::Frame(_))) => continue,
            }
        }
    }

    /// The next JSON frame; panics on anything else.
    pub async fn next_json(&mut self, timeout: Duration) -> Value {
        match self.recv(timeout).await {
            Incoming::Json(v) => v,
            other => panic!(
                "expected a JSON frame within {timeout:?}, got {other:?}; seen so far: {}",
                self.seen_summary()
            ),
        }
    }

    /// Reads until a frame of type `ty` arrives; returns it. Panics with
    /// the frames seen otherwise.
    pub async fn expect_type(&mut self, ty: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Incoming::Json(v) if v["type"] == ty => return v,
                Incoming::Json(v) => skipped.push(v),
                other => panic!(
                    "expected a `{ty}` frame within {timeout:?}, got {other:?} after {}",
                    summary(&skipped)
                ),
            }
        }
    }

    /// Reads until a frame with `id` arrives; returns it.
    pub async fn expect_reply(&mut self, id: &Value, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Incoming::Json(v) if &v["id"] == id => return v,
                Incoming::Json(v) => skipped.push(v),
                other => panic!(
                    "expected a reply with id {id} within {timeout:?}, got {other:?} after {}",
                    summary(&skipped)
                ),
            }
        }
    }

    /// Sends `req` with a fresh numeric id and returns the reply with it.
    pub async fn request(&mut self, mut req: Value) -> Value {
        let id = json!(self.next_id);
        self.next_id += 1;
        req["id"] = id.clone();
        self.send_json(req).await;
        self.expect_reply(&id, FRAME_WAIT).await
    }

    /// Sends `req` and asserts the reply is an `error` with `code`.
    pub async fn request_error(&mut self, req: Value, code: &str) -> Value {
        let reply = self.request(req.clone()).await;
        assert_eq!(
            reply["type"], "error",
            "{req} should fail with {code}, got {reply}"
        );
        assert_eq!(
            reply["code"], code,
            "{req} should fail with {code}, got {reply}"
        );
        assert!(
            reply["message"].is_string(),
            "error frames carry a message: {reply}"
        );
        reply
    }

    /// `join_room` that must succeed; returns `room_joined`.
    pub async fn join(&mut self, room: &str) -> Value {
        let reply = self
            .request(json!({"type": "join_room", "room": room}))
            .await;
        assert_eq!(reply["type"], "room_joined", "join {room}: {reply}");
        assert_eq!(reply["room"], room, "join {room}: {reply}");
        reply
    }

    /// Application ping with an id; asserts the `pong` with that id.
    pub async fn ping_ok(&mut self) {
        let reply = self.request(json!({"type": "ping"})).await;
        assert_eq!(reply["type"], "pong", "ping answered {reply}");
    }

    /// Reads until the connection closes; returns the close and whether a
    /// `disconnect` frame came first.
    pub async fn expect_close(&mut self, timeout: Duration) -> CloseInfo {
        if let Some(c) = &self.closed {
            return c.clone();
        }
        let deadline = Instant::now() + timeout;
        let mut disconnect = None;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Incoming::Json(v) => {
                    if v["type"] == "disconnect" {
                        disconnect = Some(v.clone());
                    }
                    skipped.push(v);
                }
                Incoming::Close(f) => {
                    let (code, reason) = f.unwrap_or((1005, String::new()));
                    let info = CloseInfo {
                        code,
                        reason,
                        disconnect,
                    };
                    self.closed = Some(info.clone());
                    return info;
                }
                Incoming::Timeout => panic!(
                    "connection not closed within {timeout:?}; frames seen: {}",
                    summary(&skipped)
                ),
                Incoming::Ended(e) => panic!(
                    "connection ended without a close frame ({e}); frames seen: {}",
                    summary(&skipped)
                ),
                other => skipped.push(json!({"non_json": format!("{other:?}")})),
            }
        }
    }

    /// Like `expect_close` but also accepts the stream ending without a close
    /// frame (returns None then).
    pub async fn expect_close_or_drop(&mut self, timeout: Duration) -> Option<CloseInfo> {
        let deadline = Instant::now() + timeout;
        let mut disconnect = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Incoming::Json(v) if v["type"] == "disconnect" => disconnect = Some(v),
                Incoming::Json(_) => {}
                Incoming::Close(f) => {
                    let (code, reason) = f.unwrap_or((1005, String::new()));
                    return Some(CloseInfo {
                        code,
                        reason,
                        disconnect,
                    });
                }
                Incoming::Ended(_) => return None,
                Incoming::Timeout => panic!("connection not closed within {timeout:?}"),
                _ => {}
            }
        }
    }

    /// Asserts that no frame (other than ping/pong) arrives within `dur`
    /// and that the connection stays open.
    pub async fn expect_silence(&mut self, dur: Duration) {
        match self.recv(dur).await {
            Incoming::Timeout => {}
            other => panic!("expected silence for {dur:?}, got {other:?}"),
        }
    }

    /// Collects every JSON frame arriving within `dur`.
    pub async fn collect_for(&mut self, dur: Duration) -> Vec<Value> {
        let deadline = Instant::now() + dur;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return out;
            }
            match self.recv(left).await {
                Incoming::Json(v) => out.push(v),
                Incoming::Timeout => return out,
                other => panic!("while collecting frames got {other:?}"),
            }
        }
    }

    /// Reads `n` frames of type `ty` (others skipped), bounded by `timeout`.
    pub async fn collect_type(&mut self, ty: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Incoming::Json(v) if v["type"] == ty => out.push(v),
                Incoming::Json(_) => {}
                other => panic!(
                    "waiting for {n} `{ty}` frames got {} then {other:?}",
                    out.len()
                ),
            }
        }
        out
    }

    /// Sends a close frame with `code` and reads until the server's close
    /// frame (skipping data frames); returns its (code, reason), or `None`
    /// if the stream ended without one.
    pub async fn close_handshake(mut self, code: u16, reason: &str) -> Option<(u16, String)> {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        let frame = CloseFrame {
            code: code.into(),
            reason: reason.to_owned().into(),
        };
        tokio::time::timeout(FRAME_WAIT, self.ws.close(Some(frame)))
            .await
            .expect("sending the close frame timed out")
            .expect("send close frame");
        let deadline = Instant::now() + FRAME_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Incoming::Close(f) => return Some(f.unwrap_or((1005, String::new()))),
                Incoming::Ended(_) => return None,
                Incoming::Timeout => panic!("no close frame within {FRAME_WAIT:?}"),
                _ => {}
            }
        }
    }

    /// Asserts that nothing was queued for this client before now: sends a
    /// `ping` and requires the very next frame to be its `pong`. The node
    /// answers a ping through the same send queue as everything else, so
    /// any frame already queued for this connection would come first. Use
    /// it after the action whose effect must not reach this client has
    /// completed on this node (e.g. the publish call returned); for
    /// deliveries that travel through another node, publish a sentinel in
    /// the same room and use [`WsClient::expect_next_type`] instead.
    pub async fn expect_nothing_queued(&mut self) {
        let id = format!("quiet-{}", self.next_id);
        self.next_id += 1;
        self.send_json(json!({"type": "ping", "id": id})).await;
        match self.recv(FRAME_WAIT).await {
            Incoming::Json(v) if v["type"] == "pong" && v["id"] == id.as_str() => {}
            other => panic!(
                "expected nothing before the pong of {id}, got {other:?}; seen so far: {}",
                self.seen_summary()
            ),
        }
    }

    /// The very next frame, which must be of type `ty` (a sentinel: frames
    /// that must not arrive would come before it).
    pub async fn expect_next_type(&mut self, ty: &str) -> Value {
        match self.recv(FRAME_WAIT).await {
            Incoming::Json(v) if v["type"] == ty => v,
            other => panic!(
                "expected `{ty}` as the next frame, got {other:?}; seen so far: {}",
                self.seen_summary()
            ),
        }
    }

    /// The JSON frames before the event frame whose `event` is `name` (a
    /// sentinel published after what must or must not arrive); the
    /// sentinel itself is read and left out.
    pub async fn collect_until_event(&mut self, name: &str) -> Vec<Value> {
        let deadline = Instant::now() + FRAME_WAIT;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Incoming::Json(v) if v["type"] == "event" && v["event"] == name => return out,
                Incoming::Json(v) => out.push(v),
                other => panic!(
                    "no `{name}` event within {FRAME_WAIT:?}: {other:?}; seen {}",
                    self.seen_summary()
                ),
            }
        }
    }

    /// Starts a close handshake from the client side.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }

    pub fn seen_summary(&self) -> String {
        summary(&self.seen)
    }
}

fn summary(frames: &[Value]) -> String {
    let shown: Vec<String> = frames
        .iter()
        .rev()
        .take(12)
        .rev()
        .map(|v| {
            let s = v.to_string();
            if s.len() > 300 {
                format!("{}…", &s[..300])
            } else {
                s
            }
        })
        .collect();
    format!("[{} frames: {}]", frames.len(), shown.join(", "))
}
