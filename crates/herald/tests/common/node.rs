//! `TestNode`: one node with its own temp dir and config, its start-up,
//! HTTP API and token minting. By default the node runs in-process
//! (`inproc`: a listener on port 0, no port race, no process start-up);
//! `start_process` runs `herald serve` instead, for signals, exit codes,
//! environment overrides and `/metrics`. Stopped (and its dir removed) on
//! drop.

use super::inproc::InProcess;
use super::tokens::sign_hs256;
use super::ws::{describe_ws_error, TokenIn, WsClient};
use super::{now_secs, ADMIN_KEY, FRAME_WAIT, PUBLISH_KEY, SECRET};
use serde_json::{json, Value};
use std::fs;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// One running node: in-process or a `herald serve` process.
pub struct TestNode {
    child: Option<Child>,
    inproc: Option<InProcess>,
    port: u16,
    dir: PathBuf,
    config_path: PathBuf,
    log_path: PathBuf,
    http: reqwest::Client,
    secret: String,
}

impl TestNode {
    /// Starts an in-process node with `toml` merged over the harness
    /// defaults.
    pub async fn start(toml: &str) -> TestNode {
        Self::start_custom(toml, &[], true).await
    }

    /// Starts a node with extra environment variables: a process, since
    /// the environment is global to the test binary.
    pub async fn start_with_env(toml: &str, env: &[(&str, &str)]) -> TestNode {
        Self::start_custom(toml, env, true).await
    }

    /// Starts a node; without `with_secret` no default HS256 secret is added
    /// (for nodes that trust only asymmetric keys). In-process unless `env`
    /// is given.
    pub async fn start_custom(toml: &str, env: &[(&str, &str)], with_secret: bool) -> TestNode {
        if !env.is_empty() {
            return Self::start_process_custom(toml, env, with_secret).await;
        }
        match Self::try_start_inproc(toml, with_secret).await {
            Ok(node) => node,
            Err(log) => panic!("in-process herald did not become healthy:\n{log}"),
        }
    }

    /// Starts a `herald serve` process: for tests of signals, exit codes,
    /// `pid()`, `/metrics` (one recorder per process) or SIGKILL.
    pub async fn start_process(toml: &str) -> TestNode {
        Self::start_process_custom(toml, &[], true).await
    }

    /// `start_process` with environment variables and the secret choice.
    pub async fn start_process_custom(
        toml: &str,
        env: &[(&str, &str)],
        with_secret: bool,
    ) -> TestNode {
        // The port is chosen by binding and releasing it, so another
        // process may take it before herald binds: retry.
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
        let port = free_port();
        let (dir, path) = Self::write_config_on(toml, with_secret, port);
        (dir, path, port)
    }

    /// Writes the config with `server.listen` on `port` (0 for in-process
    /// nodes, whose listener is bound by the harness); returns (dir, path).
    fn write_config_on(toml: &str, with_secret: bool, port: u16) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(unique("herald-it"));
        fs::create_dir_all(&dir).expect("create temp dir");
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
        (dir, config_path)
    }

    /// The HS256 secret in a written config (tokens are signed with it).
    fn configured_secret(config_path: &PathBuf) -> String {
        let t: toml::Table = fs::read_to_string(config_path)
            .expect("read config")
            .parse()
            .expect("toml");
        t["auth"]
            .get("hs256_secret")
            .and_then(|v| v.as_str())
            .unwrap_or(SECRET)
            .to_owned()
    }

    fn http_client() -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("http client")
    }

    async fn try_start_inproc(toml: &str, with_secret: bool) -> Result<TestNode, String> {
        let (dir, config_path) = Self::write_config_on(toml, with_secret, 0);
        let secret = Self::configured_secret(&config_path);
        let text = fs::read_to_string(&config_path).expect("read config");
        // Built as the binary builds it, minus the HERALD_* environment.
        let mut config = herald_server::Config::from_toml(&text)
            .map_err(|e| format!("invalid configuration: {e}"))?;
        let table: toml::Table = text.parse().expect("toml");
        let drain_set = table
            .get("server")
            .and_then(|s| s.get("shutdown_drain"))
            .is_some();
        if !drain_set {
            // Drop closes every connection at once instead of spreading
            // the closes over the default 10 s.
            config.server.shutdown_drain = Duration::ZERO;
        }
        let log_path = dir.join("herald.log");
        let (inproc, port) = InProcess::start(config, &log_path)?;
        let node = TestNode {
            child: None,
            inproc: Some(inproc),
            port,
            dir,
            config_path,
            log_path,
            http: Self::http_client(),
            secret,
        };
        node.wait_healthy().await.map(|()| node)
    }

    /// Polls `/health` until 200, for at most 20 s; fails at once if the
    /// node stopped.
    async fn wait_healthy(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.inproc.as_ref().is_some_and(InProcess::exited) {
                return Err(format!("herald stopped early:\n{}", self.log()));
            }
            if let Ok(r) = self
                .http
                .get(format!("{}/health", self.url()))
                .timeout(Duration::from_secs(2))
                .send()
                .await
            {
                if r.status().as_u16() == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("no 200 from /health within 20 s:\n{}", self.log()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn try_start(
        toml: &str,
        env: &[(&str, &str)],
        with_secret: bool,
    ) -> Result<TestNode, String> {
        let (dir, config_path, port) = Self::write_config_opts(toml, with_secret);
        let secret = Self::configured_secret(&config_path);
        let log_path = dir.join("herald.log");
        let log = fs::File::create(&log_path).expect("create log file");
        let log2 = log.try_clone().expect("clone log handle");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        // The node reads every HERALD_* variable as config: keep the
        // developer's shell out of it; tests pass their own overrides below.
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
            inproc: None,
            port,
            dir,
            config_path,
            log_path,
            http: Self::http_client(),
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

    /// Starts draining an in-process node without waiting for it; drop
    /// waits. A cluster stops its nodes together this way.
    pub fn begin_stop(&mut self) {
        if let Some(n) = self.inproc.as_mut() {
            n.begin_stop();
        }
    }

    /// Whether the node runs in this process (see `start_process`).
    pub fn in_process(&self) -> bool {
        self.inproc.is_some()
    }

    /// The process id of the node (a process node: see `start_process`).
    pub fn pid(&self) -> u32 {
        assert!(
            !self.in_process(),
            "pid() and signals need a process node: start it with TestNode::start_process"
        );
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
        assert!(
            !(path.starts_with("/metrics") && self.in_process()),
            "/metrics is process-global (one recorder per process): use TestNode::start_process"
        );
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

    /// Waits (bounded) for the process to exit, without blocking the runtime.
    pub async fn wait_exit_async(&mut self, timeout: Duration) -> Option<ExitStatus> {
        assert!(
            !self.in_process(),
            "exit status needs a process node: start it with TestNode::start_process"
        );
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
        // Drains (every connection closed at once) and joins its thread.
        self.inproc = None;
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
