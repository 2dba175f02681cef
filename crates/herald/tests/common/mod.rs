//! Test harness shared by the integration tests: a real `herald serve`
//! process on its own loopback port, a WebSocket client wrapper with bounded
//! waits, a raw WebSocket socket for misbehaving clients, and token minting.
//!
//! Everything here waits with a deadline; nothing loops forever.

#![allow(dead_code)]

pub mod cdp;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// HS256 secret every test node is configured with (unless overridden).
pub const SECRET: &str = "integration-test-secret-0123456789abcdef";
/// API key with scope `admin` (the server wants keys of 16+ characters).
pub const ADMIN_KEY: &str = "test-admin-key-0000000000";
/// API key with scope `publish` only.
pub const PUBLISH_KEY: &str = "test-publish-key-000000000";

/// Wait for an expected frame.
pub const FRAME_WAIT: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched by default.
pub const SILENCE: Duration = Duration::from_millis(600);

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// One running `herald serve` process.
pub struct TestNode {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    http: reqwest::Client,
    secret: String,
}

impl TestNode {
    /// Starts a node with `toml` merged over the harness defaults.
    pub async fn start(toml: &str) -> TestNode {
        Self::start_with_env(toml, &[]).await
    }

    /// Starts a node with extra environment variables.
    pub async fn start_with_env(toml: &str, env: &[(&str, &str)]) -> TestNode {
        Self::start_custom(toml, env, true).await
    }

    /// Starts a node; without `with_secret` no default HS256 secret is added
    /// (for nodes that trust only asymmetric keys).
    pub async fn start_custom(toml: &str, env: &[(&str, &str)], with_secret: bool) -> TestNode {
        let mut last_log = String::new();
        for _attempt in 0..3 {
            match Self::try_start(toml, env, with_secret).await {
                Ok(node) => return node,
                Err(log) => last_log = log,
            }
        }
        panic!("herald did not become healthy after 3 attempts; last log:\n{last_log}");
    }

    /// Writes the config file for `toml` (merged with harness defaults on a
    /// fresh port) into a fresh temp dir; returns (dir, config path, port).
    pub fn write_config(toml: &str) -> (PathBuf, PathBuf, u16) {
        Self::write_config_opts(toml, true)
    }

    /// `write_config`, optionally without the default HS256 secret.
    pub fn write_config_opts(toml: &str, with_secret: bool) -> (PathBuf, PathBuf, u16) {
        let dir = std::env::temp_dir().join(unique("herald-it"));
        fs::create_dir_all(&dir).expect("create temp dir");
        let port = free_port();
        let mut table: toml::Table = toml.parse().expect("test config is valid TOML");
        let server = table
            .entry("server")
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .expect("[server] is a table");
        server.insert(
            "listen".into(),
            toml::Value::String(format!("127.0.0.1:{port}")),
        );
        let auth = table
            .entry("auth")
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .expect("[auth] is a table");
        if with_secret {
            auth.entry("hs256_secret")
                .or_insert_with(|| toml::Value::String(SECRET.into()));
        }
        auth.entry("api_keys").or_insert_with(|| {
            let mut admin = toml::Table::new();
            admin.insert("key".into(), toml::Value::String(ADMIN_KEY.into()));
            admin.insert(
                "scopes".into(),
                toml::Value::Array(vec![toml::Value::String("admin".into())]),
            );
            let mut publish = toml::Table::new();
            publish.insert("key".into(), toml::Value::String(PUBLISH_KEY.into()));
            publish.insert(
                "scopes".into(),
                toml::Value::Array(vec![toml::Value::String("publish".into())]),
            );
            toml::Value::Array(vec![toml::Value::Table(admin), toml::Value::Table(publish)])
        });
        let text = toml::to_string(&table).expect("serialize config");
        let config_path = dir.join("herald.toml");
        fs::write(&config_path, text).expect("write config");
        (dir, config_path, port)
    }

    async fn try_start(
        toml: &str,
        env: &[(&str, &str)],
        with_secret: bool,
    ) -> Result<TestNode, String> {
        let (dir, config_path, port) = Self::write_config_opts(toml, with_secret);
        let secret = {
            let t: toml::Table = fs::read_to_string(&config_path)
                .expect("read config")
                .parse()
                .expect("toml");
            t["auth"]
                .get("hs256_secret")
                .and_then(|v| v.as_str())
                .unwrap_or(SECRET)
                .to_owned()
        };
        let log_path = dir.join("herald.log");
        let log = fs::File::create(&log_path).expect("create log file");
        let log2 = log.try_clone().expect("clone log handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        // The node reads every HERALD_* variable as config: keep the
        // developer's shell (and test switches like HERALD_SKIP_BROWSER)
        // out of it; tests pass their own overrides below.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("HERALD_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn herald binary");
        let mut node = TestNode {
            child: Some(child),
            port,
            dir,
            config_path,
            log_path,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("http client"),
            secret,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log = node.log();
                node.child = None;
                return Err(format!("herald exited early with {status}:\n{log}"));
            }
            if let Ok(r) = node
                .http
                .get(format!("{}/health", node.url()))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                if r.status().as_u16() == 200 {
                    return Ok(node);
                }
            }
            if Instant::now() > deadline {
                return Err(format!("no 200 from /health within 20 s:\n{}", node.log()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `ws://127.0.0.1:PORT/ws`
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn config_path(&self) -> &PathBuf {
        &self.config_path
    }

    /// The process id of the node.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node running").id()
    }

    /// Everything the node logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Mints a token signed with the node's secret.
    pub fn token(
        &self,
        sub: &str,
        roles: &[&str],
        tenant: Option<&str>,
        extra_claims: Value,
        ttl: Duration,
    ) -> String {
        let now = now_secs();
        let mut claims = json!({
            "sub": sub,
            "iat": now,
            "exp": now + ttl.as_secs() as i64,
        });
        if !roles.is_empty() {
            claims["roles"] = json!(roles);
        }
        if let Some(t) = tenant {
            claims["tenant"] = json!(t);
        }
        if let Value::Object(extra) = extra_claims {
            for (k, v) in extra {
                claims[k] = v;
            }
        }
        sign_hs256(&self.secret, &claims)
    }

    /// A plain one-hour token for `sub`.
    pub fn user_token(&self, sub: &str) -> String {
        self.token(sub, &[], None, json!({}), Duration::from_secs(3600))
    }

    /// A token with exactly `claims`, signed with the node's secret.
    pub fn token_with_claims(&self, claims: &Value) -> String {
        sign_hs256(&self.secret, claims)
    }

    /// Connects a WebSocket with `sub`'s token in the header; expects the
    /// unprompted `authenticated` frame and returns it with the client.
    pub async fn connect_user(&self, sub: &str) -> (WsClient, Value) {
        let token = self.user_token(sub);
        self.connect_token(&token).await
    }

    /// Connects with `token` in the header and reads `authenticated`.
    pub async fn connect_token(&self, token: &str) -> (WsClient, Value) {
        let mut c = WsClient::connect(&self.ws_url(), TokenIn::Header(token.to_owned()))
            .await
            .unwrap_or_else(|e| panic!("WebSocket upgrade failed: {}", describe_ws_error(&e)));
        let auth = c.expect_type("authenticated", FRAME_WAIT).await;
        (c, auth)
    }

    /// Any API call: returns (status, JSON body or Null).
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{}", self.url(), path));
        if let Some(k) = key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("API call {path} failed: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(if text.is_empty() {
            Value::Null
        } else {
            Value::String(text)
        });
        (status, json)
    }

    /// POSTs raw bytes as a JSON body.
    pub async fn api_raw(&self, path: &str, key: Option<&str>, body: &str) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{}", self.url(), path))
            .header("Content-Type", "application/json")
            .body(body.to_owned());
        if let Some(k) = key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let resp = req.send().await.expect("API call");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Publishes with the admin key; panics unless 200. Returns the answer.
    pub async fn publish(&self, room: &str, event: &str, data: Value) -> Value {
        self.publish_body(json!({"room": room, "event": event, "data": data}))
            .await
    }

    /// Publishes a full body with the admin key; panics unless 200.
    pub async fn publish_body(&self, body: Value) -> Value {
        let (status, answer) = self
            .api(
                "POST",
                "/api/v1/publish",
                Some(ADMIN_KEY),
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 200, "publish {body} answered {status}: {answer}");
        answer
    }

    /// GET on a plain path: (status, body text). Connection errors map to 0.
    pub async fn get(&self, path: &str) -> (u16, String) {
        match self
            .http
            .get(format!("{}{}", self.url(), path))
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(r) => {
                let s = r.status().as_u16();
                (s, r.text().await.unwrap_or_default())
            }
            Err(_) => (0, String::new()),
        }
    }

    /// Sends a signal with the `kill` command.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Async-friendly `wait_exit`.
    pub async fn wait_exit_async(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The sum of the samples of metric `prefix` (exact name, any labels).
    pub async fn metric_sum(&self, prefix: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await;
        let mut found = None;
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let exact = line
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'));
            if exact {
                if let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                    *found.get_or_insert(0.0) += v;
                }
            }
        }
        found
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            eprintln!(
                "---- herald log tail ({}) ----\n{}",
                self.log_path.display(),
                tail.join("\n")
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Signs `claims` with HS256 and `secret`.
pub fn sign_hs256(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign token")
}

/// An unsigned token with `alg: none`.
pub fn alg_none_token(claims: &Value) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = b64.encode(serde_json::to_vec(claims).expect("claims"));
    format!("{header}.{payload}.")
}

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

/// A hand-made WebSocket client on a raw socket: it never answers pings and
/// reads only when told to.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One frame parsed from the server.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// What reading a raw socket until the end produced.
#[derive(Debug, Default)]
pub struct RawOutcome {
    pub frames: Vec<RawFrame>,
    pub close: Option<(u16, String)>,
    pub eof: bool,
    pub error: Option<String>,
}

impl RawOutcome {
    /// Text frames parsed as JSON.
    pub fn json(&self) -> Vec<Value> {
        self.frames
            .iter()
            .filter(|f| f.opcode == 1)
            .filter_map(|f| serde_json::from_slice(&f.payload).ok())
            .collect()
    }
}

impl RawWs {
    /// Connects and upgrades `path_and_query` (e.g. `/ws?token=...`).
    pub async fn connect(addr: &str, path_and_query: &str) -> RawWs {
        let mut stream = tokio::time::timeout(FRAME_WAIT, TcpStream::connect(addr))
            .await
            .expect("tcp connect timed out")
            .expect("tcp connect");
        let req = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream
            .write_all(req.as_bytes())
            .await
            .expect("write handshake");
        let mut buf = Vec::new();
        let deadline = tokio::time::Instant::now() + FRAME_WAIT;
        let header_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
                .await
                .expect("handshake answer timed out")
                .expect("read handshake");
            assert!(n > 0, "server closed during handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "raw upgrade refused: {head}"
        );
        buf.drain(..header_end);
        RawWs { stream, buf }
    }

    /// Writes one masked client frame.
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mut out = vec![0x80 | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&out).await
    }

    fn parse_one(&mut self) -> Option<RawFrame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let opcode = b[0] & 0x0f;
        let masked = b[1] & 0x80 != 0;
        let mut len = (b[1] & 0x7f) as usize;
        let mut pos = 2;
        if len == 126 {
            if b.len() < 4 {
                return None;
            }
            len = u16::from_be_bytes([b[2], b[3]]) as usize;
            pos = 4;
        } else if len == 127 {
            if b.len() < 10 {
                return None;
            }
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[2..10]);
            len = u64::from_be_bytes(a) as usize;
            pos = 10;
        }
        let mask = if masked {
            if b.len() < pos + 4 {
                return None;
            }
            let m = [b[pos], b[pos + 1], b[pos + 2], b[pos + 3]];
            pos += 4;
            Some(m)
        } else {
            None
        };
        if b.len() < pos + len {
            return None;
        }
        let mut payload = b[pos..pos + len].to_vec();
        if let Some(m) = mask {
            for (i, x) in payload.iter_mut().enumerate() {
                *x ^= m[i % 4];
            }
        }
        self.buf.drain(..pos + len);
        Some(RawFrame { opcode, payload })
    }

    /// Reads frames until a close frame, EOF, an error or `timeout`.
    pub async fn read_until_end(&mut self, timeout: Duration) -> RawOutcome {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = RawOutcome::default();
        loop {
            while let Some(f) = self.parse_one() {
                if f.opcode == 8 {
                    let code = if f.payload.len() >= 2 {
                        u16::from_be_bytes([f.payload[0], f.payload[1]])
                    } else {
                        1005
                    };
                    let reason =
                        String::from_utf8_lossy(f.payload.get(2..).unwrap_or(&[])).into_owned();
                    out.close = Some((code, reason));
                    out.frames.push(f);
                    return out;
                }
                out.frames.push(f);
            }
            let mut chunk = vec![0u8; 65536];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return out,
                Ok(Ok(0)) => {
                    out.eof = true;
                    return out;
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => {
                    out.error = Some(e.to_string());
                    return out;
                }
            }
        }
    }
}

/// Reads a file fully (for logs).
pub fn read_file(path: &std::path::Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// Percent-encodes a room name for a URL path.
pub fn enc(room: &str) -> String {
    room.replace(':', "%3A")
        .replace('/', "%2F")
        .replace('@', "%40")
}
