//! deploy/: the Grafana dashboard and the Prometheus alerting rules use
//! exactly the metric names a node exposes (issue #18 item 4). Both files
//! are read, every `herald_*` name in their PromQL is reduced to its family
//! (`_bucket`, `_sum`, `_count` stripped), and a real node with what those
//! metrics need (Redis engine, webhooks, a proxy URL) must show each one on
//! `GET /metrics` after a little traffic.

mod common;

use common::*;
use herald_testkit::{free_port, RedisServer};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use yaml_rust2::{Yaml, YamlLoader};

fn deploy_file(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Every `herald_*` metric family named in `expr`.
fn families(expr: &str, into: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("herald_") {
        let start = i + at;
        // Part of a longer identifier (`xherald_`): not a metric name.
        let inside = start > 0 && {
            let b = bytes[start - 1];
            b.is_ascii_alphanumeric() || b == b'_'
        };
        let end = expr[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(expr.len(), |n| start + n);
        if !inside {
            let name = &expr[start..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            into.insert(family.to_owned());
        }
        i = end;
    }
}

/// The dashboard's PromQL expressions; checks its shape on the way.
fn dashboard_exprs() -> Vec<String> {
    let dash: Value = serde_json::from_str(&deploy_file("grafana/herald-dashboard.json"))
        .expect("the dashboard is JSON");
    let inputs = dash["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"),
        "the data source is the DS_PROMETHEUS input"
    );
    let panels = dash["panels"].as_array().expect("panels");
    let mut exprs = Vec::new();
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {} uses the input",
            p["title"]
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has queries", p["title"]);
        for t in targets {
            exprs.push(t["expr"].as_str().expect("expr").to_owned());
        }
    }
    assert!(exprs.len() >= 20, "the dashboard has its panels");
    exprs
}

/// The rules' expressions; checks groups -> rules -> alert, expr, for,
/// annotations (summary and description) on the way.
fn alert_exprs() -> Vec<String> {
    let docs = YamlLoader::load_from_str(&deploy_file("prometheus/herald-alerts.yml"))
        .expect("the rules are YAML");
    let groups = docs[0]["groups"].as_vec().expect("groups is a list");
    assert!(!groups.is_empty());
    let mut exprs = Vec::new();
    let mut names = BTreeSet::new();
    for g in groups {
        assert!(g["name"].as_str().is_some(), "a group has a name");
        for rule in g["rules"].as_vec().expect("rules is a list") {
            let alert = rule["alert"].as_str().expect("every rule is an alert");
            assert!(names.insert(alert.to_owned()), "{alert} twice");
            let for_ = rule["for"]
                .as_str()
                .unwrap_or_else(|| panic!("{alert}: for"));
            assert!(
                for_.ends_with('m') || for_.ends_with('s'),
                "{alert}: for {for_}"
            );
            for key in ["summary", "description"] {
                let text = rule["annotations"][key].as_str();
                assert!(
                    text.is_some_and(|t| !t.is_empty()),
                    "{alert}: annotations.{key}"
                );
            }
            assert!(
                !matches!(rule["labels"]["severity"], Yaml::BadValue),
                "{alert}: severity"
            );
            exprs.push(rule["expr"].as_str().expect("expr").to_owned());
        }
    }
    assert!(names.len() >= 10, "the alerts are there: {names:?}");
    exprs
}

/// Waits (bounded) until the node reaches its broker.
async fn wait_ready(node: &TestNode) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.get("/ready").await.0 != 200 {
        assert!(Instant::now() < deadline, "the node never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn exposed(text: &str, family: &str) -> bool {
    text.lines().any(|l| {
        let name = match l.strip_prefix("# TYPE ") {
            Some(rest) => rest.split(' ').next().unwrap_or(""),
            None if l.starts_with('#') => return false,
            None => l.split(['{', ' ']).next().unwrap_or(""),
        };
        name == family
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| name.strip_suffix(s) == Some(family))
    })
}

#[test]
fn families_are_extracted_from_promql() {
    let mut f = BTreeSet::new();
    families(
        "histogram_quantile(0.99, sum by (le) (rate(herald_delivery_latency_seconds_bucket{x=\"herald_no\"}[5m]))) / xherald_y + herald_publish_total",
        &mut f,
    );
    let f: Vec<&str> = f.iter().map(String::as_str).collect();
    assert_eq!(
        f,
        [
            "herald_delivery_latency_seconds",
            "herald_no",
            "herald_publish_total"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_use_is_exposed() {
    let mut wanted = BTreeSet::new();
    for e in dashboard_exprs().iter().chain(alert_exprs().iter()) {
        families(e, &mut wanted);
    }
    assert!(wanted.len() >= 25, "names found: {wanted:?}");
    let redis = RedisServer::start();
    // Webhooks to a closed port (posts fail, the metrics are there), and a
    // proxy join URL (its breaker gauge and call counters).
    let closed = free_port();
    let node = TestNode::start_process(&format!(
        r#"
[broker]
kind = "redis"
redis_url = "{redis}"
prefix = "deploy-{pid}"
node_heartbeat = "500ms"

[namespaces.chat]
join = "any"
send = "any"

[namespaces.gated]
join = "proxy"

[proxy]
join_url = "http://127.0.0.1:{closed}/join"
timeout = "500ms"

[webhooks]
url = "http://127.0.0.1:{closed}/webhooks"
secret = "deploy-metrics-secret-0123456789"
timeout = "1s"
"#,
        redis = redis.url(),
        pid = std::process::id(),
    ))
    .await;
    wait_ready(&node).await;
    let (mut c, _) = node.connect_user("alice").await;
    c.ping_ok().await;
    node.publish("user:alice", "deployed", json!({"n": 1}))
        .await;
    c.expect_type("event", FRAME_WAIT).await;
    // A join the (unreachable) backend must allow: a failed proxy call.
    let refused = c
        .request(json!({"type": "join_room", "room": "gated:1"}))
        .await;
    assert_eq!(refused["type"], "error", "{refused}");
    c.close().await;
    // A refused token: an auth failure.
    let bad = WsClient::connect(&node.ws_url(), TokenIn::Header("nope".into())).await;
    assert!(bad.is_err());
    // Families with labels or samples appear as the node works (histograms
    // after their first sample): wait for them, bounded.
    let deadline = Instant::now() + Duration::from_secs(15);
    let missing = loop {
        let (status, text) = node.get("/metrics").await;
        assert_eq!(status, 200);
        let missing: Vec<&String> = wanted.iter().filter(|f| !exposed(&text, f)).collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        missing.is_empty(),
        "deploy/ references metrics the node does not expose: {missing:?}"
    );
}
