//! Issue #12 findings 9, 10 and 11: Kubernetes service-link variables,
//! tokens minted with the configured `iss`/`aud`, and development mode
//! only on loopback with the memory broker.

mod common;

use common::*;
use serde_json::json;

/// What Kubernetes injects into every pod of a namespace that has a
/// Service named `herald` (and one named `herald-redis`).
const SERVICE_LINKS: &[(&str, &str)] = &[
    ("HERALD_PORT", "tcp://10.96.0.12:8080"),
    ("HERALD_SERVICE_HOST", "10.96.0.12"),
    ("HERALD_SERVICE_PORT", "8080"),
    ("HERALD_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
    ("HERALD_PORT_8080_TCP_PROTO", "tcp"),
    ("HERALD_PORT_8080_TCP_PORT", "8080"),
    ("HERALD_PORT_8080_TCP_ADDR", "10.96.0.12"),
    ("HERALD_REDIS_SERVICE_HOST", "10.96.0.13"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_service_link_variables_are_ignored() {
    let node = TestNode::start_with_env("", SERVICE_LINKS).await;
    let (mut c, _) = node.connect_user("k8s").await;
    c.ping_ok().await;
    let log = node.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Kubernetes service-link"))
        .collect();
    assert_eq!(lines.len(), 1, "one info line: {log}");
    assert!(lines[0].contains("HERALD_PORT_8080_TCP_ADDR"), "{log}");
}

#[test]
fn other_herald_variables_are_still_refused_by_name() {
    let (_dir, path, _port) = TestNode::write_config("");
    let path = path.to_str().expect("path");
    for (name, named) in [
        ("HERALD_LISTEN", "HERALD_LISTEN"),
        ("HERALD_AUTH_HS256_SECRET", "HERALD_AUTH_HS256_SECRET"),
        ("HERALD_SERVER__LISTN", "listn"),
    ] {
        let mut env = SERVICE_LINKS.to_vec();
        env.push((name, "x"));
        let (code, out, err) = run_herald(&["config", "check", "--config", path], &env);
        assert_eq!(code, Some(1), "{name} accepted: {out}{err}");
        assert!(err.contains(named), "{name}: the error names it: {err}");
    }
}

/// Issue #13 item 3: `broker.kind` picks an engine compiled into this
/// build; any other kind is refused by `config check` (and at start),
/// naming the key and the kinds this build has.
#[test]
fn config_check_refuses_an_engine_this_build_lacks() {
    for kind in ["kafka", "rabbitmq"] {
        let (_dir, path, _port) = TestNode::write_config(&format!("[broker]\nkind = \"{kind}\"\n"));
        let path = path.to_str().expect("path");
        let (code, out, err) = run_herald(&["config", "check", "--config", path], &[]);
        assert_eq!(code, Some(1), "{kind} accepted: {out}{err}");
        assert!(err.contains("broker.kind"), "{kind}: {err}");
        assert!(err.contains(&format!("`{kind}`")), "{kind}: {err}");
        for built in ["`memory`", "`redis`", "`nats`"] {
            assert!(err.contains(built), "the kinds built in: {err}");
        }
    }
}

const IDP: &str = "[auth]\nissuer = \"https://idp.test\"\naudience = \"herald\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_api_sets_the_configured_issuer_and_audience() {
    let node = TestNode::start(IDP).await;
    let (s, b) = node
        .api(
            "POST",
            "/api/v1/tokens",
            Some(ADMIN_KEY),
            Some(json!({"sub": "minted"})),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let token = b["token"].as_str().expect("token");
    let (mut c, auth) = node.connect_token(token).await;
    assert_eq!(auth["user_id"], "minted");
    c.ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_subcommand_sets_the_configured_issuer_and_audience() {
    let node = TestNode::start(IDP).await;
    let cfg = node.config_path().to_str().expect("path").to_owned();
    let (code, out, err) = run_herald(&["token", "--sub", "cli", "--config", &cfg], &[]);
    assert_eq!(code, Some(0), "herald token failed: {err}");
    let (mut c, auth) = node.connect_token(out.trim()).await;
    assert_eq!(auth["user_id"], "cli");
    c.ping_ok().await;
}

#[test]
fn config_check_says_when_serve_would_run_in_development_mode() {
    let (_dir, path, _port) = TestNode::write_config_opts("", false);
    let path = path.to_str().expect("path");
    let (code, out, err) = run_herald(&["config", "check", "--config", path], &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("DEVELOPMENT MODE"), "{err}");
    let (_dir, keyed, _port) = TestNode::write_config("");
    let keyed = keyed.to_str().expect("path");
    let (code, _, err) = run_herald(&["config", "check", "--config", keyed], &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("DEVELOPMENT MODE"), "{err}");
}

#[test]
fn development_mode_refuses_a_reachable_listen_address_or_a_cluster_broker() {
    let (_dir, path, port) = TestNode::write_config_opts("", false);
    let path = path.to_str().expect("path");
    let everywhere = format!("0.0.0.0:{port}");
    let (code, out, err) = run_herald(
        &["config", "check", "--config", path],
        &[("HERALD_SERVER__LISTEN", &everywhere)],
    );
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("auth.hs256_secret"), "{err}");
    assert!(err.contains(&everywhere), "{err}");
    // `serve` refuses before binding or connecting anything.
    let (code, out, err) = run_herald(
        &["serve", "--config", path],
        &[
            ("HERALD_BROKER__KIND", "redis"),
            ("HERALD_BROKER__REDIS_URL", "redis://127.0.0.1:1"),
        ],
    );
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("broker.kind = \"redis\""), "{err}");
}
