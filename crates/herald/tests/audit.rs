//! Request ids, the audit log of admin calls and named API keys (issue #18,
//! item 3): every `/api/` answer carries `X-Request-Id` (the client's when
//! sane, else a generated one), error bodies carry it as
//! `error.request_id`, and each admin call writes one `herald::audit` line
//! naming the key by its name, never the key itself.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An API answer with its `X-Request-Id`.
#[derive(Debug)]
struct Answer {
    status: u16,
    request_id: Option<String>,
    body: Value,
}

impl Answer {
    /// Asserts an error answer whose body repeats the header's id.
    fn assert_error_with_id(&self, status: u16) -> &str {
        assert_eq!(self.status, status, "{self:?}");
        let id = self.request_id.as_deref().expect("X-Request-Id header");
        assert_eq!(self.body["error"]["request_id"], id, "{self:?}");
        id
    }
}

async fn call(
    node: &TestNode,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    request_id: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let client = reqwest::Client::new();
    let mut req = client
        .request(method, format!("{}{path}", node.url()))
        .timeout(Duration::from_secs(10));
    if let Some(k) = key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    if let Some(id) = request_id {
        req = req.header("X-Request-Id", id);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("API call");
    let status = resp.status().as_u16();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().expect("ASCII id").to_owned());
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        request_id,
        body,
    }
}

fn is_generated(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_answer_carries_the_request_id_errors_included() {
    let node = TestNode::start("").await;
    let stats = "/api/v1/stats";

    let given = call(
        &node,
        Method::GET,
        stats,
        Some(ADMIN_KEY),
        Some("trace-me-42"),
        None,
    )
    .await;
    assert_eq!(given.status, 200, "{given:?}");
    assert_eq!(given.request_id.as_deref(), Some("trace-me-42"));

    // Absent, blank, too long or with a space: a new id each time.
    let long = "x".repeat(129);
    let mut generated = Vec::new();
    for bad in [None, Some("has space"), Some(long.as_str())] {
        let a = call(&node, Method::GET, stats, Some(ADMIN_KEY), bad, None).await;
        assert_eq!(a.status, 200, "{a:?}");
        let id = a.request_id.expect("a generated id");
        assert!(is_generated(&id), "{bad:?} -> {id}");
        generated.push(id);
    }
    generated.dedup();
    assert_eq!(generated.len(), 3, "{generated:?}");
    let max = "y".repeat(128);
    let a = call(&node, Method::GET, stats, Some(ADMIN_KEY), Some(&max), None).await;
    assert_eq!(a.request_id.as_deref(), Some(max.as_str()));

    // 401, 404 (unknown route), 400 (bad body), a wrong method: the id in
    // the header and in the body.
    let body = json!({"room": "global", "event": "e", "data": 1});
    let a = call(
        &node,
        Method::POST,
        "/api/v1/publish",
        None,
        Some("r-401"),
        Some(body),
    )
    .await;
    assert_eq!(a.assert_error_with_id(401), "r-401");
    let a = call(
        &node,
        Method::GET,
        "/api/v1/nope",
        Some(ADMIN_KEY),
        None,
        None,
    )
    .await;
    assert!(is_generated(a.assert_error_with_id(404)));
    let a = call(
        &node,
        Method::POST,
        "/api/v1/publish",
        Some(ADMIN_KEY),
        Some("r-400"),
        Some(json!({"room": "global"})),
    )
    .await;
    assert_eq!(a.assert_error_with_id(400), "r-400");
    let a = call(
        &node,
        Method::GET,
        "/api/v1/tokens",
        Some(ADMIN_KEY),
        Some("r-405"),
        None,
    )
    .await;
    assert_eq!(a.assert_error_with_id(405), "r-405");

    // 413: a declared body over 2 MiB is refused before it is read.
    let mut s = TcpStream::connect(node.addr()).await.expect("connect");
    let head = format!(
        "POST /api/v1/publish HTTP/1.1\r\nHost: herald\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\
         X-Request-Id: r-413\r\nContent-Type: application/json\r\nContent-Length: 3000000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("send head");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .expect("the 413 arrives at once")
        .expect("read");
    let raw = String::from_utf8_lossy(&raw).to_string();
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(
        raw.to_ascii_lowercase().contains("x-request-id: r-413"),
        "{raw}"
    );
    assert!(raw.contains(r#""request_id":"r-413""#), "{raw}");

    // Outside the API nothing changes.
    let resp = reqwest::get(format!("{}/health", node.url()))
        .await
        .expect("health");
    assert!(resp.headers().get("x-request-id").is_none());
}

/// The admin key named, the publish key left to its default (`key-2`).
const NAMED_KEYS: &str = r#"
[[auth.api_keys]]
key = "test-admin-key-0000000000"
scopes = ["admin"]
name = "ops-console"

[[auth.api_keys]]
key = "test-publish-key-000000000"
scopes = ["publish"]
"#;

/// A key no config holds.
const WRONG_KEY: &str = "not-a-configured-key-000000";

/// The node's JSON log lines on `target`.
fn lines_on(log: &str, target: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == target)
        .collect()
}

/// One admin call and the audit line it must leave.
struct Audited {
    /// The `X-Request-Id` sent, which finds the line.
    id: &'static str,
    method: Method,
    path: &'static str,
    key: Option<&'static str>,
    body: Option<Value>,
    status: u16,
    /// `action`, `api_key`, `resource`, `tenant`, `outcome` of the line.
    line: [&'static str; 5],
}

fn admin_calls() -> Vec<Audited> {
    let get = |id, path, key, status, line| Audited {
        id,
        method: Method::GET,
        path,
        key,
        body: None,
        status,
        line,
    };
    let admin = Some(ADMIN_KEY);
    let ops = "ops-console";
    vec![
        get(
            "a-stats",
            "/api/v1/stats",
            admin,
            200,
            ["stats.read", ops, "-", "-", "ok"],
        ),
        get(
            "a-presence",
            "/api/v1/rooms/project:p1/presence",
            admin,
            200,
            ["presence.read", ops, "room:project:p1", "-", "ok"],
        ),
        get(
            "a-history",
            "/api/v1/rooms/project%3Ap1/history?limit=5",
            admin,
            200,
            ["history.read", ops, "room:project:p1", "-", "ok"],
        ),
        get(
            "a-conns",
            "/api/v1/users/alice/connections",
            admin,
            200,
            ["connections.read", ops, "user:alice", "-", "ok"],
        ),
        Audited {
            method: Method::POST,
            ..get(
                "a-disc",
                "/api/v1/users/alice/disconnect?tenant=acme",
                admin,
                200,
                ["connection.disconnect", ops, "user:alice", "acme", "ok"],
            )
        },
        Audited {
            method: Method::POST,
            body: Some(json!({"sub": "bob", "tenant": "acme"})),
            ..get(
                "a-mint",
                "/api/v1/tokens",
                admin,
                200,
                ["token.mint", ops, "user:bob", "acme", "ok"],
            )
        },
        // Refused: a valid key without the scope by its name (the publish
        // key's default name), others as `unknown`.
        get(
            "a-forbidden",
            "/api/v1/stats",
            Some(PUBLISH_KEY),
            403,
            ["stats.read", "key-2", "-", "-", "forbidden"],
        ),
        get(
            "a-unknown",
            "/api/v1/stats",
            Some(WRONG_KEY),
            401,
            ["stats.read", "unknown", "-", "-", "unauthorized"],
        ),
        get(
            "a-nokey",
            "/api/v1/stats",
            None,
            401,
            ["stats.read", "unknown", "-", "-", "unauthorized"],
        ),
        get(
            "a-badroom",
            "/api/v1/rooms/bad%20room/presence",
            admin,
            400,
            ["presence.read", ops, "room:bad room", "-", "bad_request"],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_are_audited_by_key_name_and_publishes_are_not() {
    let node = TestNode::start_with_env(
        NAMED_KEYS,
        &[
            ("HERALD_LOG_FORMAT", "json"),
            ("RUST_LOG", "info,herald_server::api=debug"),
        ],
    )
    .await;
    let calls = admin_calls();
    for c in &calls {
        let a = call(
            &node,
            c.method.clone(),
            c.path,
            c.key,
            Some(c.id),
            c.body.clone(),
        )
        .await;
        assert_eq!(a.status, c.status, "{}: {a:?}", c.id);
        assert_eq!(a.request_id.as_deref(), Some(c.id));
    }
    let body = json!({"room": "global", "event": "e", "data": 1});
    let a = call(
        &node,
        Method::POST,
        "/api/v1/publish",
        Some(PUBLISH_KEY),
        Some("a-publish"),
        Some(body),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");

    // The lines are written by a thread of their own: wait for them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (audit, log) = loop {
        let log = node.log();
        let audit: BTreeMap<String, Value> = lines_on(&log, "herald::audit")
            .into_iter()
            .map(|v| (v["request_id"].as_str().unwrap_or_default().to_owned(), v))
            .collect();
        if audit.len() >= calls.len() && log.contains("a-publish") {
            break (audit, log);
        }
        assert!(
            Instant::now() < deadline,
            "{} audit lines of {}:\n{log}",
            audit.len(),
            calls.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        audit.len(),
        calls.len(),
        "one line per admin call: {audit:#?}"
    );
    for c in &calls {
        let line = audit
            .get(c.id)
            .unwrap_or_else(|| panic!("no audit line for {}:\n{log}", c.id));
        let [action, api_key, resource, tenant, outcome] = c.line;
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["message"], "admin API call", "{line}");
        assert_eq!(line["action"], action, "{line}");
        assert_eq!(line["api_key"], api_key, "{line}");
        assert_eq!(line["resource"], resource, "{line}");
        assert_eq!(line["tenant"], tenant, "{line}");
        assert_eq!(line["outcome"], outcome, "{line}");
        assert_eq!(line["status"], c.status, "{line}");
        assert_eq!(line["method"], c.method.as_str(), "{line}");
        let path = c.path.split('?').next().unwrap_or_default();
        assert_eq!(line["path"], path, "{line}");
        let remote = line["remote_addr"].as_str().unwrap_or_default();
        assert!(remote.starts_with("127.0.0.1:"), "{line}");
        let ms = line["duration_ms"].as_f64();
        assert!(ms.is_some_and(|d| d >= 0.0), "{line}");
    }

    // Publishes leave no audit line, but their debug line names the call.
    assert!(!audit.contains_key("a-publish"));
    let published = lines_on(&log, "herald_server::api")
        .into_iter()
        .find(|v| v["request_id"] == "a-publish")
        .unwrap_or_else(|| panic!("no publish debug line:\n{log}"));
    assert_eq!(published["api_key"], "key-2", "{published}");
    assert_eq!(published["room"], "global", "{published}");

    // No key is anywhere in the log.
    for secret in [ADMIN_KEY, PUBLISH_KEY, WRONG_KEY] {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }
}

#[test]
fn config_check_refuses_duplicate_and_bad_key_names_and_shows_names() {
    let keys = |names: [&str; 3]| {
        let mut toml = String::new();
        for (i, name) in names.iter().enumerate() {
            toml.push_str(&format!(
                "[[auth.api_keys]]\nkey = \"configured-key-{i}-0000000000\"\nscopes = [\"admin\"]\n{name}\n"
            ));
        }
        toml
    };
    let (_dir, path, _) = TestNode::write_config(&keys([
        r#"name = "ops""#,
        r#"name = "ops""#,
        r#"name = "bad name""#,
    ]));
    let (code, out, err) = run_herald(
        &["config", "check", "--config", path.to_str().expect("path")],
        &[],
    );
    assert_ne!(code, Some(0), "{out}{err}");
    assert!(err.contains("auth.api_keys[1].name"), "{err}");
    assert!(err.contains("unique"), "{err}");
    assert!(err.contains("auth.api_keys[2].name"), "{err}");
    assert!(!err.contains("auth.api_keys[0].name"), "{err}");

    let (_dir, path, _) = TestNode::write_config(&keys([r#"name = "ops""#, "", ""]));
    let (code, out, err) = run_herald(
        &["config", "check", "--config", path.to_str().expect("path")],
        &[],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    for name in ["ops", "key-2", "key-3"] {
        assert!(out.contains(&format!("name = \"{name}\"")), "{name}: {out}");
    }
    assert!(!out.contains("configured-key"), "keys stay masked: {out}");
}
