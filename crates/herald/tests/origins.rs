//! The browser origin policy, `server.allowed_origins` (issue #18, item
//! 5): WebSocket upgrades, SSE, Socket.IO (polling and its WebSocket) and
//! CORS on the HTTP API, with the key set and unset.

mod common;

use common::sse::{bearer, open_sse};
use common::*;
use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const POLICY: &str = r#"
[server]
allowed_origins = ["https://app.example.com", "https://*.example.org"]
"#;

const ALLOWED: &str = "https://app.example.com";
const WILDCARD: &str = "https://eu.app.example.org";
const REFUSED: &str = "https://evil.example.net";
/// The wildcard's own domain is not one of its subdomains.
const BARE: &str = "https://example.org";

/// Upgrades `path` to a WebSocket with `origin`; Err holds the refusal's
/// status and body.
async fn upgrade(node: &TestNode, path: &str, origin: Option<&str>) -> Result<(), (u16, String)> {
    let mut req = format!("ws://{}{path}", node.addr())
        .into_client_request()
        .expect("request");
    if let Some(o) = origin {
        req.headers_mut()
            .insert("Origin", HeaderValue::from_str(o).expect("origin"));
    }
    let connected = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("the upgrade is answered");
    match connected {
        Ok((mut ws, _)) => {
            let _ = ws.close(None).await;
            Ok(())
        }
        Err(e) => Err((upgrade_status(&e).unwrap_or(0), describe_ws_error(&e))),
    }
}

/// Asserts the 403 that names the key.
fn assert_refused(refusal: Result<(), (u16, String)>) {
    let (status, body) = refusal.expect_err("refused");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("forbidden"), "{body}");
    assert!(body.contains("server.allowed_origins"), "{body}");
}

/// A plain HTTP request with an optional `Origin` and extra headers.
async fn http(
    method: Method,
    url: String,
    origin: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> (u16, HeaderMap, String) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut req = client.request(method, url);
    if let Some(o) = origin {
        req = req.header("Origin", o);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap_or_default())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().expect("ASCII"))
}

fn varies_by_origin(headers: &HeaderMap) -> bool {
    headers.get_all("vary").iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("origin"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_follow_the_policy() {
    let node = TestNode::start(POLICY).await;
    let path = format!("/ws?token={}", node.user_token("alice"));
    upgrade(&node, &path, Some(ALLOWED))
        .await
        .expect("exact origin");
    upgrade(&node, &path, Some(WILDCARD))
        .await
        .expect("wildcard origin");
    // Case and the default port do not make another origin.
    upgrade(&node, &path, Some("HTTPS://APP.EXAMPLE.COM:443"))
        .await
        .expect("same origin, other spelling");
    // No Origin: not a browser.
    upgrade(&node, &path, None).await.expect("no origin");
    assert_refused(upgrade(&node, &path, Some(REFUSED)).await);
    assert_refused(upgrade(&node, &path, Some(BARE)).await);
    assert_refused(upgrade(&node, &path, Some("http://app.example.com")).await);
    assert_refused(upgrade(&node, &path, Some("null")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_echoes_allowed_origins_and_refuses_others() {
    let node = TestNode::start(POLICY).await;
    let auth = bearer(&node.user_token("alice"));
    for origin in [ALLOWED, WILDCARD] {
        let s = open_sse(&node, "", &[("Authorization", &auth), ("Origin", origin)])
            .await
            .unwrap_or_else(|(status, body)| panic!("{origin}: {status} {body}"));
        let h = s.resp.headers();
        assert_eq!(header(h, "access-control-allow-origin"), Some(origin));
        assert!(varies_by_origin(h), "{h:?}");
    }
    let s = open_sse(&node, "", &[("Authorization", &auth)])
        .await
        .unwrap_or_else(|(status, body)| panic!("no origin: {status} {body}"));
    assert_eq!(
        header(s.resp.headers(), "access-control-allow-origin"),
        None
    );
    for origin in [REFUSED, BARE] {
        let Err((status, body)) =
            open_sse(&node, "", &[("Authorization", &auth), ("Origin", origin)]).await
        else {
            panic!("{origin} was let in");
        };
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(origin), "{message}");
        assert!(message.contains("server.allowed_origins"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_polling_and_websocket_follow_the_policy() {
    let node = TestNode::start(POLICY).await;
    let polling = format!("{}/socket.io/?EIO=4&transport=polling", node.url());
    let (status, h, body) = http(Method::GET, polling.clone(), Some(WILDCARD), &[], None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("0{"), "{body}");
    assert_eq!(header(&h, "access-control-allow-origin"), Some(WILDCARD));
    assert_eq!(header(&h, "access-control-allow-credentials"), Some("true"));

    let (status, h, body) = http(Method::GET, polling.clone(), Some(REFUSED), &[], None).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("server.allowed_origins"), "{body}");
    assert_eq!(header(&h, "access-control-allow-origin"), None);
    let (status, _, body) = http(Method::OPTIONS, polling.clone(), Some(REFUSED), &[], None).await;
    assert_eq!(status, 403, "preflight: {body}");
    let (status, h, _) = http(Method::OPTIONS, polling.clone(), Some(ALLOWED), &[], None).await;
    assert_eq!(status, 204);
    assert_eq!(header(&h, "access-control-allow-origin"), Some(ALLOWED));
    let (status, _, body) = http(Method::GET, polling, None, &[], None).await;
    assert_eq!(status, 200, "no origin: {body}");

    let ws = "/socket.io/?EIO=4&transport=websocket";
    upgrade(&node, ws, Some(ALLOWED)).await.expect("allowed");
    assert_refused(upgrade(&node, ws, Some(REFUSED)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_cors_answers_allowed_origins_only() {
    let node = TestNode::start(POLICY).await;
    let publish = format!("{}/api/v1/publish", node.url());
    let preflight = [
        ("Access-Control-Request-Method", "POST"),
        (
            "Access-Control-Request-Headers",
            "authorization, content-type, x-request-id",
        ),
    ];
    let (status, h, body) = http(
        Method::OPTIONS,
        publish.clone(),
        Some(ALLOWED),
        &preflight,
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(header(&h, "access-control-allow-origin"), Some(ALLOWED));
    assert!(varies_by_origin(&h), "{h:?}");
    let methods = header(&h, "access-control-allow-methods").unwrap_or_default();
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
    let allowed = header(&h, "access-control-allow-headers").unwrap_or_default();
    for name in [
        "authorization",
        "content-type",
        "x-request-id",
        "idempotency-key",
    ] {
        assert!(allowed.contains(name), "{name}: {allowed}");
    }
    assert!(header(&h, "x-request-id").is_some(), "{h:?}");

    let (status, h, body) = http(
        Method::OPTIONS,
        publish.clone(),
        Some(REFUSED),
        &preflight,
        None,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("server.allowed_origins"), "{body}");
    assert_eq!(header(&h, "access-control-allow-origin"), None);

    let auth = format!("Bearer {ADMIN_KEY}");
    let event = json!({"room": "global", "event": "e", "data": 1});
    let (status, h, body) = http(
        Method::POST,
        publish.clone(),
        Some(WILDCARD),
        &[("Authorization", &auth)],
        Some(event.clone()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&h, "access-control-allow-origin"), Some(WILDCARD));
    assert!(varies_by_origin(&h), "{h:?}");
    let exposed = header(&h, "access-control-expose-headers").unwrap_or_default();
    assert!(exposed.contains("x-request-id"), "{exposed}");

    // A page not allowed gets no CORS headers (its browser reads nothing);
    // a server without Origin is served as always.
    let (status, h, _) = http(
        Method::POST,
        publish.clone(),
        Some(REFUSED),
        &[("Authorization", &auth)],
        Some(event.clone()),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "access-control-allow-origin"), None);
    let (status, h, _) = http(
        Method::POST,
        publish,
        None,
        &[("Authorization", &auth)],
        Some(event),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "access-control-allow-origin"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_key_every_transport_behaves_as_before() {
    let node = TestNode::start("").await;
    let path = format!("/ws?token={}", node.user_token("alice"));
    upgrade(&node, &path, Some(REFUSED))
        .await
        .expect("any origin");

    let auth = bearer(&node.user_token("alice"));
    let s = open_sse(&node, "", &[("Authorization", &auth), ("Origin", REFUSED)])
        .await
        .unwrap_or_else(|(status, body)| panic!("{status} {body}"));
    assert_eq!(
        header(s.resp.headers(), "access-control-allow-origin"),
        Some("*")
    );

    let polling = format!("{}/socket.io/?EIO=4&transport=polling", node.url());
    let (status, h, _) = http(Method::GET, polling, Some(REFUSED), &[], None).await;
    assert_eq!(status, 200);
    assert_eq!(header(&h, "access-control-allow-origin"), Some(REFUSED));

    // The API sends no CORS headers; a preflight is a wrong method.
    let publish = format!("{}/api/v1/publish", node.url());
    let (status, h, _) = http(
        Method::OPTIONS,
        publish,
        Some(REFUSED),
        &[("Access-Control-Request-Method", "POST")],
        None,
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(header(&h, "access-control-allow-origin"), None);
}
