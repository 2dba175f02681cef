//! The application backend process the proxy and webhook tests run beside
//! Herald: `tests/backend/backend.py` (Python, standard library only),
//! started on a free loopback port and killed on drop.
//!
//! What it answers, by endpoint (each records its request bodies, read
//! with [`Backend::calls`]):
//! - `POST /connect`: credential `opaque:<user>[:<tenant>]` is accepted as
//!   that user; one listed in `connect.users` gets that answer verbatim;
//!   `refuse:<message>` gets 401 and `forbid:<message>` 403 with
//!   `{"message"}`; anything else 401 `unknown credential`.
//! - `POST /join`, `POST /send`: `{"allow": join.allow[room]}` (send:
//!   `send.allow["<room> <event>"]` or `send.allow[room]`), default false,
//!   with `cache_ttl` when configured.
//! - `POST /rpc`: echoes `{"method","data","user_id"}`; method `error` gets
//!   400 `{"message":"rpc error requested"}`.
//! - `POST /webhooks`: checks `Herald-Signature` with [`Backend::SECRET`]
//!   and records the events (see [`Backend::webhook_events`]).
//!
//! Each endpoint's `mode` (set with [`Backend::configure`]): `ok`, `fail`
//! (500), `slow` (waits `delay_ms`, default 5000, then answers) or
//! `fail_for` (500 until the Unix time `until_ms` passes).

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running backend process.
pub struct Backend {
    base: String,
    child: Option<Child>,
    http: reqwest::Client,
}

impl Backend {
    /// The webhook signing secret the backend checks signatures with.
    pub const SECRET: &'static str = "hook-secret";

    /// Starts the backend and waits (up to 10 s) until it listens.
    pub async fn start() -> Backend {
        tokio::task::spawn_blocking(Self::spawn)
            .await
            .expect("backend start task")
    }

    fn spawn() -> Backend {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/backend/backend.py");
        let mut child = Command::new("python3")
            .args([script, "--port", "0", "--secret", Self::SECRET])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the test backend (tests/backend/backend.py)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("the test backend did not start within 10 s");
            }
        };
        let port: u16 = line
            .trim()
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected backend banner: {line:?}"));
        Backend {
            base: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
        }
    }

    /// The URL of `path` on the backend, e.g. `url("/connect")`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Deep-merges `config` into the backend's configuration, e.g.
    /// `json!({"join": {"allow": {"chat:9": true}, "cache_ttl": "30s"}})`.
    pub async fn configure(&self, config: Value) {
        self.post("/_control/config", &config).await;
    }

    /// Back to the default configuration, with calls and events cleared.
    pub async fn reset(&self) {
        self.post("/_control/reset", &Value::Null).await;
    }

    /// Request bodies received on endpoint `name` (`connect`, `join`,
    /// `send`, `rpc`), in order, failed answers included.
    pub async fn calls(&self, name: &str) -> Vec<Value> {
        self.get_list(&format!("/_control/calls/{name}")).await
    }

    /// Every webhook event accepted (answered 200), in arrival order, each
    /// with `"_signature_ok": bool` added.
    pub async fn webhook_events(&self) -> Vec<Value> {
        self.get_list("/_control/webhooks").await
    }

    /// Every webhook POST: `{"status", "count", "signature_ok"}`.
    pub async fn webhook_posts(&self) -> Vec<Value> {
        self.get_list("/_control/webhook_posts").await
    }

    /// Kills the backend now: later calls to it are refused.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn post(&self, path: &str, body: &Value) {
        let response = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("backend {path}: {e}"));
        assert!(
            response.status().is_success(),
            "backend {path}: {}",
            response.status()
        );
    }

    async fn get_list(&self, path: &str) -> Vec<Value> {
        let response = self
            .http
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("backend {path}: {e}"));
        match response.json::<Value>().await {
            Ok(Value::Array(items)) => items,
            other => panic!("backend {path}: expected a JSON array, got {other:?}"),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}
