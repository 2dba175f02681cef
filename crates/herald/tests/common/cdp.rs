//! A small Chrome DevTools Protocol driver for Debian's headless Chromium:
//! launch it on a fresh profile, open a page, evaluate JavaScript, wait for
//! a condition with a deadline, take screenshots. Chromium and its helper
//! processes are killed when the `Chromium` value is dropped.
//!
//! Shared by the browser-driven tests; extend it, but keep existing
//! functions' signatures.

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Where Debian's `chromium` package puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Set to `1` to skip browser tests on machines without Chromium.
pub const SKIP_ENV: &str = "SKIP_BROWSER_TESTS";
/// Longest wait for one CDP reply.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether browser tests should be skipped: `SKIP_BROWSER_TESTS=1`.
/// Without it, a missing Chromium fails the test with a clear message.
pub fn skip_browser_tests(test: &str) -> bool {
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        eprintln!("{test}: skipped because {SKIP_ENV}=1");
        return true;
    }
    assert!(
        Path::new(CHROMIUM).exists(),
        "{test} needs headless Chromium at {CHROMIUM} (Debian: `apt-get install chromium`); \
         set {SKIP_ENV}=1 to skip browser tests"
    );
    false
}

/// One running headless Chromium with its own profile directory.
pub struct Chromium {
    child: Option<Child>,
    profile: PathBuf,
    devtools: String,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Chromium {
    /// Launches Chromium with a 1280×800 window.
    pub fn launch() -> Chromium {
        Self::launch_with(1280, 800, &[])
    }

    /// Launches Chromium with a `width`×`height` window and extra flags;
    /// waits (bounded) for its DevTools endpoint.
    pub fn launch_with(width: u32, height: u32, extra_args: &[&str]) -> Chromium {
        let profile = std::env::temp_dir().join(format!(
            "herald-chromium-{}-{}",
            std::process::id(),
            super::now_ms()
        ));
        std::fs::create_dir_all(&profile).expect("create Chromium profile dir");
        let mut cmd = Command::new(CHROMIUM);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            "--disable-dev-shm-usage",
            "--disable-crash-reporter",
            "--hide-scrollbars",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--window-size={width},{height}"))
        .args(extra_args)
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so dropping kills the helpers too.
        .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMIUM}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                // Keeps draining stderr for the browser's whole life, so it
                // never blocks on a full pipe.
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split("DevTools listening on ").nth(1) {
                        let _ = tx.send(rest.trim().to_owned());
                    }
                    let mut l = lines.lock();
                    l.push_back(line);
                    if l.len() > 200 {
                        l.pop_front();
                    }
                }
            });
        }
        let mut browser = Chromium {
            child: Some(child),
            profile,
            devtools: String::new(),
            stderr: lines,
        };
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => browser.devtools = url,
            Err(_) => panic!(
                "Chromium printed no `DevTools listening on` line within 30 s; stderr:\n{}",
                browser.stderr_tail()
            ),
        }
        browser
    }

    /// The browser-level DevTools WebSocket URL.
    pub fn devtools_url(&self) -> &str {
        &self.devtools
    }

    /// `127.0.0.1:PORT` of the DevTools endpoint.
    pub fn devtools_host(&self) -> String {
        self.devtools
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// The last lines Chromium wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let l = self.stderr.lock();
        l.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// Opens a new tab at `url` and attaches to it.
    pub async fn new_page(&self, url: &str) -> CdpPage {
        let mut browser = CdpPage::connect(&self.devtools).await;
        let target = browser
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await
            .unwrap_or_else(|e| panic!("Target.createTarget: {e}"));
        let id = target["targetId"]
            .as_str()
            .unwrap_or_else(|| panic!("no targetId in {target}"))
            .to_owned();
        browser.close().await;
        let mut page =
            CdpPage::connect(&format!("ws://{}/devtools/page/{id}", self.devtools_host())).await;
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            page.call(domain, json!({}))
                .await
                .unwrap_or_else(|e| panic!("{domain}: {e}"));
        }
        page.navigate(url).await;
        page
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The whole process group: browser, renderers, zygotes.
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg("--")
                .arg(format!("-{}", child.id()))
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- chromium stderr tail ----\n{}", self.stderr_tail());
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One DevTools session (a page, or the browser itself).
pub struct CdpPage {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    events: Vec<Value>,
}

impl CdpPage {
    /// Connects to a DevTools WebSocket URL.
    pub async fn connect(url: &str) -> CdpPage {
        let (ws, _) = tokio::time::timeout(CALL_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap_or_else(|_| panic!("DevTools connect to {url} timed out"))
            .unwrap_or_else(|e| panic!("DevTools connect to {url}: {e}"));
        CdpPage {
            ws,
            next_id: 1,
            events: Vec::new(),
        }
    }

    /// Sends one command and waits for its result; events arriving
    /// meanwhile are kept (see `events`).
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .map_err(|e| format!("send {method}: {e}"))?;
        let deadline = tokio::time::Instant::now() + CALL_TIMEOUT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| format!("{method}: no reply within {CALL_TIMEOUT:?}"))?;
            let text = match next {
                Some(Ok(Message::Text(t))) => t.as_str().to_owned(),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("{method}: {e}")),
                None => return Err(format!("{method}: DevTools connection closed")),
            };
            let v: Value = serde_json::from_str(&text).map_err(|e| format!("bad CDP JSON: {e}"))?;
            if v["id"] == json!(id) {
                if let Some(err) = v.get("error") {
                    return Err(format!("{method}: {err}"));
                }
                return Ok(v["result"].clone());
            }
            if v.get("method").is_some() {
                if self.events.len() >= 2000 {
                    self.events.remove(0);
                }
                self.events.push(v);
            }
        }
    }

    /// Every event received so far (`{method, params}`).
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// Console errors, uncaught exceptions and log entries of level
    /// `error` seen so far, as text.
    pub fn errors(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e["method"].as_str()? {
                "Runtime.exceptionThrown" => {
                    let d = &e["params"]["exceptionDetails"];
                    Some(format!(
                        "exception: {} {}",
                        d["text"].as_str().unwrap_or(""),
                        d["exception"]["description"].as_str().unwrap_or("")
                    ))
                }
                "Runtime.consoleAPICalled" if e["params"]["type"] == "error" => {
                    Some(format!("console.error: {}", e["params"]["args"]))
                }
                "Log.entryAdded" if e["params"]["entry"]["level"] == "error" => Some(format!(
                    "log: {} {}",
                    e["params"]["entry"]["text"].as_str().unwrap_or(""),
                    e["params"]["entry"]["url"].as_str().unwrap_or("")
                )),
                _ => None,
            })
            .collect()
    }

    /// Evaluates `expr` in the page (awaiting promises) and returns its
    /// value; a thrown exception is an error.
    pub async fn eval(&mut self, expr: &str) -> Result<Value, String> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(format!(
                "`{expr}` threw: {}",
                ex["exception"]["description"]
                    .as_str()
                    .or(ex["text"].as_str())
                    .unwrap_or("exception")
            ));
        }
        Ok(r["result"]["value"].clone())
    }

    /// Evaluates `expr` until it yields a truthy value or `timeout` passes.
    pub async fn wait_for(&mut self, expr: &str, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.eval(expr).await {
                Ok(v) if truthy(&v) => return Ok(v),
                Ok(v) => v,
                Err(e) => json!(e),
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "`{expr}` not truthy within {timeout:?}; last value {last}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Navigates to `url` and waits (bounded) for the load to complete.
    pub async fn navigate(&mut self, url: &str) {
        let r = self
            .call("Page.navigate", json!({"url": url}))
            .await
            .unwrap_or_else(|e| panic!("navigate to {url}: {e}"));
        if let Some(err) = r.get("errorText") {
            panic!("navigate to {url}: {err}");
        }
        self.wait_for(
            &format!(
                "document.readyState === 'complete' && location.href === {}",
                json!(url)
            ),
            Duration::from_secs(20),
        )
        .await
        .unwrap_or_else(|e| panic!("load {url}: {e}"));
    }

    /// A PNG of the viewport.
    pub async fn screenshot_png(&mut self) -> Vec<u8> {
        self.screenshot(json!({"format": "png"})).await
    }

    /// A PNG of the whole page, `width` CSS pixels wide.
    pub async fn full_page_png(&mut self, width: u32) -> Vec<u8> {
        let height = self
            .eval("Math.ceil(document.documentElement.scrollHeight)")
            .await
            .ok()
            .and_then(|v| v.as_f64())
            .unwrap_or(800.0);
        self.screenshot(json!({
            "format": "png",
            "captureBeyondViewport": true,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        }))
        .await
    }

    async fn screenshot(&mut self, params: Value) -> Vec<u8> {
        use base64::Engine;
        let r = self
            .call("Page.captureScreenshot", params)
            .await
            .unwrap_or_else(|e| panic!("screenshot: {e}"));
        let data = r["data"].as_str().expect("screenshot data");
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .expect("screenshot is base64")
    }

    /// Ends the session.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }
}

/// JavaScript truthiness of a returned value.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// A JavaScript string literal for `s`.
pub fn js_str(s: &str) -> String {
    json!(s).to_string()
}
