//! The operator dashboard (issue #6), driven in headless Chromium over the
//! DevTools protocol: the page loads, refuses bad keys, authenticates with
//! the admin key, and its numbers change when clients connect and a test
//! publishes; the room inspector and the playground work. The test saves a
//! screenshot to `docs/img/dashboard.png` for the README.

mod common;

use common::cdp::{js_str, skip_browser_tests, CdpPage, Chromium};
use common::*;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// The number shown in element `#id`, if it shows one.
async fn number(page: &mut CdpPage, id: &str) -> Option<f64> {
    let text = page
        .eval(&format!(
            "(document.getElementById({}) || {{}}).textContent || ''",
            js_str(id)
        ))
        .await
        .ok()?;
    parse_shown(text.as_str()?)
}

/// Parses a figure as the page prints it: `1,234`, `3.5`, `1.2k`.
fn parse_shown(text: &str) -> Option<f64> {
    let t = text.trim().replace(',', "");
    if let Some(k) = t.strip_suffix('k') {
        return k.parse::<f64>().ok().map(|v| v * 1000.0);
    }
    t.parse().ok()
}

/// Types `key` into the login form and submits it.
async fn submit_key(page: &mut CdpPage, key: &str) {
    page.eval(&format!(
        "(() => {{ const i = document.getElementById('api-key'); i.value = {}; \
         document.getElementById('login-form').requestSubmit(); return true; }})()",
        js_str(key)
    ))
    .await
    .expect("submit the key");
}

/// Sets an input's value.
async fn fill(page: &mut CdpPage, id: &str, value: &str) {
    page.eval(&format!(
        "document.getElementById({}).value = {}",
        js_str(id),
        js_str(value)
    ))
    .await
    .unwrap_or_else(|e| panic!("fill #{id}: {e}"));
}

/// Submits a form or clicks a button.
async fn click(page: &mut CdpPage, id: &str) {
    page.eval(&format!(
        "(() => {{ const e = document.getElementById({}); \
         if (e.tagName === 'FORM') e.requestSubmit(); else e.click(); return true; }})()",
        js_str(id)
    ))
    .await
    .unwrap_or_else(|e| panic!("click #{id}: {e}"));
}

async fn wait(page: &mut CdpPage, what: &str, expr: &str) -> serde_json::Value {
    page.wait_for(expr, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Publishes to `project:apollo` in waves until aborted.
async fn background_traffic(url: String, mut n: u64) {
    let http = reqwest::Client::new();
    let waves = [
        2u64, 4, 7, 10, 12, 11, 8, 5, 3, 2, 4, 8, 13, 16, 14, 9, 6, 4, 3, 5,
    ];
    for burst in waves.iter().cycle() {
        for _ in 0..*burst {
            n += 1;
            let _ = http
                .post(format!("{url}/api/v1/publish"))
                .bearer_auth(ADMIN_KEY)
                .json(&json!({"room": "project:apollo", "event": "build.finished", "data": {"build": n}}))
                .send()
                .await;
        }
        // A load generator: its pace over time is what the charts show.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn screenshot_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/img/dashboard.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_serves_assets_with_strict_headers() {
    // A process of its own: the dashboard reads the Prometheus recorder,
    // which is one per process (an in-process node may not own it).
    let node = TestNode::start_process("").await;
    let client = reqwest::Client::new();
    for (path, ty) in [
        ("/dashboard", "text/html"),
        ("/dashboard/index.html", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
    ] {
        let r = client
            .get(format!("{}{path}", node.url()))
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let h = r.headers();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        assert!(get("content-type").starts_with(ty), "{path}: {h:?}");
        assert_eq!(get("cache-control"), "no-cache", "{path}");
        let csp = get("content-security-policy");
        assert!(
            csp.contains("default-src 'none'")
                && csp.contains("script-src 'self'")
                && csp.contains("connect-src 'self' ws:"),
            "{path}: {csp}"
        );
    }
    let (status, body) = node
        .api("GET", "/dashboard/../../etc/passwd", None, None)
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = node.api("GET", "/dashboard/nope.js", None, None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "not_found", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_numbers_change_in_headless_chromium() {
    if skip_browser_tests("dashboard_numbers_change_in_headless_chromium") {
        return;
    }
    // A process of its own: the dashboard reads the Prometheus recorder,
    // which is one per process (an in-process node may not own it).
    let node = TestNode::start_process("").await;
    let browser = Chromium::launch();
    let url = format!("{}/dashboard", node.url());
    let mut page = browser.new_page(&url).await;
    wait(
        &mut page,
        "the login form shows",
        "!!document.getElementById('api-key') && !document.getElementById('login').hidden",
    )
    .await;

    // Bad keys get clear messages and no dashboard.
    submit_key(&mut page, "not-a-key-0000000000000").await;
    wait(
        &mut page,
        "a wrong key is refused with 401",
        "document.getElementById('login-error').textContent.includes('401')",
    )
    .await;
    submit_key(&mut page, PUBLISH_KEY).await;
    wait(
        &mut page,
        "a publish-only key is refused with 403",
        "document.getElementById('login-error').textContent.includes('admin scope')",
    )
    .await;
    assert_eq!(
        page.eval("document.getElementById('dashboard').hidden")
            .await
            .unwrap(),
        json!(true)
    );

    // The admin key opens the dashboard and the figures appear.
    submit_key(&mut page, ADMIN_KEY).await;
    wait(
        &mut page,
        "#connections shows a number",
        "/^[0-9][0-9,]*$/.test(document.getElementById('connections').textContent)",
    )
    .await;
    assert_eq!(
        page.eval("sessionStorage.getItem('herald.apiKey')")
            .await
            .unwrap(),
        json!(ADMIN_KEY),
        "the key is kept in sessionStorage"
    );
    let before = number(&mut page, "connections").await.expect("connections");

    // Clients connect (two of them in a project room with presence and
    // history) and events are published; the page must notice.
    let projects = json!({"projects": ["apollo"]});
    let hour = Duration::from_secs(3600);
    let mut clients = Vec::new();
    for name in ["ada", "grace"] {
        let token = node.token(name, &[], None, projects.clone(), hour);
        let (mut c, _) = node.connect_token(&token).await;
        c.join("project:apollo").await;
        clients.push(c);
    }
    for name in ["linus", "barbara", "ken"] {
        let (c, _) = node.connect_user(name).await;
        clients.push(c);
    }
    let opened = clients.len() as f64;

    let deadline = Instant::now() + WAIT;
    let (mut max_conns, mut max_pub, mut max_del) = (0.0f64, 0.0f64, 0.0f64);
    let mut latency_seen = false;
    let mut n = 0u64;
    while Instant::now() < deadline {
        for room in ["project:apollo", "user:linus", "user:barbara"] {
            n += 1;
            node.publish(room, "build.finished", json!({"build": n, "ok": true}))
                .await;
        }
        max_conns = max_conns.max(number(&mut page, "connections").await.unwrap_or(0.0));
        max_pub = max_pub.max(number(&mut page, "publish-rate").await.unwrap_or(0.0));
        max_del = max_del.max(number(&mut page, "delivery-rate").await.unwrap_or(0.0));
        latency_seen |= page
            .eval("/[0-9]/.test(document.getElementById('p99').textContent)")
            .await
            .is_ok_and(|v| v == json!(true));
        if max_conns >= before + opened && max_pub > 0.0 && max_del > 0.0 && latency_seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        max_conns >= before + opened,
        "#connections went from {before} to at most {max_conns}, expected +{opened}"
    );
    assert!(max_pub > 0.0, "#publish-rate never went above 0");
    assert!(max_del > 0.0, "#delivery-rate never went above 0");
    assert!(latency_seen, "#p99 never showed a latency");
    for id in ["users", "rooms"] {
        assert!(
            number(&mut page, id).await.is_some_and(|v| v > 0.0),
            "#{id} shows no number"
        );
    }
    assert!(
        page.eval("document.querySelectorAll('#nodes tr').length")
            .await
            .unwrap()
            .as_u64()
            .is_some_and(|n| n >= 1),
        "the nodes table lists this node"
    );

    // Room inspector: members and the last events of project:apollo.
    fill(&mut page, "inspect-room", "project:apollo").await;
    click(&mut page, "inspector-form").await;
    wait(
        &mut page,
        "the inspector lists both members",
        "document.getElementById('inspector-member-count').textContent === '2'",
    )
    .await;
    wait(
        &mut page,
        "the inspector lists the last events",
        "document.querySelectorAll('#inspector-events li:not(.empty)').length > 0",
    )
    .await;
    let shown = page
        .eval("document.getElementById('inspector-events').textContent")
        .await
        .unwrap();
    assert!(
        shown.as_str().unwrap_or("").contains("build.finished"),
        "{shown}"
    );

    // Playground: mint, connect, join, publish, see the event arrive.
    fill(&mut page, "pg-sub", "margaret").await;
    fill(&mut page, "pg-claims", r#"{"projects": ["apollo"]}"#).await;
    click(&mut page, "pg-token-form").await;
    wait(
        &mut page,
        "the playground mints a token",
        "document.getElementById('pg-token').value.split('.').length === 3",
    )
    .await;
    click(&mut page, "pg-connect").await;
    wait(
        &mut page,
        "the playground connects",
        "document.getElementById('pg-state').textContent === 'open'",
    )
    .await;
    fill(&mut page, "pg-room", "project:apollo").await;
    click(&mut page, "pg-join-form").await;
    wait(
        &mut page,
        "the playground joins",
        "document.getElementById('pg-log').textContent.includes('\"type\":\"room_joined\"')",
    )
    .await;
    fill(&mut page, "pg-event", "deploy.started").await;
    fill(
        &mut page,
        "pg-data",
        r#"{"env": "staging", "by": "margaret"}"#,
    )
    .await;
    click(&mut page, "pg-publish-form").await;
    wait(
        &mut page,
        "the playground receives its event",
        "document.getElementById('pg-log').textContent.includes('\"event\":\"deploy.started\"')",
    )
    .await;

    // A few more seconds of varied traffic so the charts have a shape,
    // then the screenshot for the README.
    // Publishing goes on in the background while the screenshot is taken,
    // so the figures show live values.
    let traffic = tokio::spawn(background_traffic(node.url(), n));
    for i in 0..14 {
        if i % 4 == 1 {
            let (c, _) = node.connect_user(&format!("watcher-{i}")).await;
            clients.push(c);
        }
        if i == 10 {
            if let Some(c) = clients.pop() {
                c.close().await;
            }
        }
        // The charts plot values over time: time is the subject here.
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    page.eval("window.scrollTo(0, 0)").await.unwrap();
    // Lets the browser paint after the scroll before the screenshot; the
    // page exposes no condition for "painted".
    tokio::time::sleep(Duration::from_millis(300)).await;

    let errors: Vec<String> = page
        .errors()
        .into_iter()
        // The refused keys above are logged by the browser as failed loads.
        .filter(|e| !(e.contains("401") || e.contains("403")))
        .collect();
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");

    let png = page.full_page_png(1280).await;
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = screenshot_path();
    std::fs::create_dir_all(path.parent().expect("parent")).expect("create docs/img");
    std::fs::write(&path, &png).expect("write the screenshot");
    eprintln!("dashboard screenshot: {}", path.display());

    traffic.abort();
    for c in clients {
        c.close().await;
    }
    page.close().await;
    drop(browser);
}
