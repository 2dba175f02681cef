//! Operations: health and readiness, metrics, graceful shutdown on SIGTERM
//! and SIGINT, config validation and env overrides, the `token` and
//! `config check` subcommands (PROTOCOL.md 1 and 2, issue #2 items 1, 2, 8).

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_and_ws_health_answer_200() {
    let node = TestNode::start("").await;
    for path in ["/health", "/ready", "/ws/health"] {
        let (s, body) = node.get(path).await;
        assert_eq!(s, 200, "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_every_required_name() {
    let node = TestNode::start_process("").await;
    // Activity so every labelled series has a sample.
    let (mut c, _) = node.connect_user("alice").await;
    c.ping_ok().await;
    node.publish("user:alice", "m", json!(1)).await;
    c.expect_type("event", FRAME_WAIT).await;
    c.close().await;
    let bad = WsClient::connect(&node.ws_url(), TokenIn::Header("nope".into())).await;
    assert!(bad.is_err());
    let (mut c2, _) = node.connect_user("bob").await;
    c2.ping_ok().await;
    // The closed connection leaves the gauge once the node has seen the
    // close: wait for that instead of a fixed pause.
    let deadline = Instant::now() + FRAME_WAIT;
    loop {
        let open = node.metric_sum("herald_connections").await;
        if open == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "herald_connections stays {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s, text) = node.get("/metrics").await;
    assert_eq!(s, 200);
    let mut missing = Vec::new();
    for name in [
        "herald_connections",
        "herald_connections_opened_total",
        "herald_connections_closed_total",
        "herald_auth_failures_total",
        "herald_messages_received_total",
        "herald_messages_sent_total",
        "herald_publish_total",
        "herald_delivery_latency_seconds",
        "herald_send_queue_overflows_total",
        "herald_rooms",
    ] {
        let present = text.lines().any(|l| {
            !l.starts_with('#')
                && (l.starts_with(&format!("{name} "))
                    || l.starts_with(&format!("{name}{{"))
                    || l.starts_with(&format!("{name}_bucket"))
                    || l.starts_with(&format!("{name}_count")))
        });
        if !present {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "metrics missing: {missing:?}\n{text}");
    assert!(
        text.contains("herald_connections_closed_total{") && text.contains("reason="),
        "closed total has a reason label"
    );
    assert!(
        text.contains("herald_auth_failures_total{"),
        "auth failures labelled by reason"
    );
    assert!(
        text.contains("herald_delivery_latency_seconds_bucket"),
        "delivery latency is a histogram"
    );
    let open = node.metric_sum("herald_connections").await;
    assert_eq!(open, Some(1.0), "one connection open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_with_1001_and_exits_0() {
    let mut node = TestNode::start_process("[server]\nshutdown_drain = \"1s\"\n").await;
    let mut clients = Vec::new();
    for i in 0..3 {
        let (c, _) = node.connect_user(&format!("u{i}")).await;
        clients.push(c);
    }
    let started = Instant::now();
    node.sigterm();
    // Readiness drops during the drain.
    let mut saw_not_ready = false;
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        let (s, _) = node.get("/ready").await;
        if s == 503 || s == 0 {
            saw_not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        saw_not_ready,
        "/ready never stopped answering 200 after SIGTERM"
    );
    // No new connections while draining.
    if let Ok(mut late) =
        WsClient::connect(&node.ws_url(), TokenIn::Header(node.user_token("late"))).await
    {
        match late.recv(Duration::from_secs(3)).await {
            Incoming::Json(v) if v["type"] == "authenticated" => {
                panic!("a new connection was accepted while draining")
            }
            _ => {}
        }
    }
    for c in clients.iter_mut() {
        let close = c.expect_close(Duration::from_secs(8)).await;
        assert_eq!(close.code, 1001, "{close:?}");
        let d = close
            .disconnect
            .unwrap_or_else(|| panic!("disconnect frame before 1001"));
        assert_eq!(d["code"], 1001, "{d}");
        assert_eq!(d["reconnect"], true, "shutdown says reconnect: {d}");
    }
    let status = node
        .wait_exit_async(Duration::from_secs(6))
        .await
        .unwrap_or_else(|| panic!("no exit within drain + 5 s"));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_also_shuts_down_gracefully() {
    let mut node = TestNode::start_process("[server]\nshutdown_drain = \"1s\"\n").await;
    let (mut c, _) = node.connect_user("u").await;
    node.signal("INT");
    let close = c.expect_close(Duration::from_secs(8)).await;
    assert_eq!(close.code, 1001, "{close:?}");
    let status = node
        .wait_exit_async(Duration::from_secs(6))
        .await
        .unwrap_or_else(|| panic!("no exit after SIGINT"));
    assert_eq!(status.code(), Some(0), "exit status {status}");
}

#[test]
fn unknown_config_key_refuses_to_start_naming_the_key() {
    let (_dir, path, _port) = TestNode::write_config("[server]\nbogus_knob = 1\n");
    let (code, out, err) = run_herald(&["serve", "--config", path.to_str().expect("path")], &[]);
    assert_ne!(code, Some(0), "started with an unknown key");
    assert!(code.is_some(), "killed by a signal instead of exiting");
    assert!(
        (out.clone() + &err).contains("bogus_knob"),
        "the error names the key: {out}{err}"
    );
}

#[test]
fn bad_duration_refuses_to_start_naming_the_key() {
    let (_dir, path, _port) = TestNode::write_config("[limits]\nauth_timeout = \"soon\"\n");
    let (code, out, err) = run_herald(&["serve", "--config", path.to_str().expect("path")], &[]);
    assert_ne!(code, Some(0), "started with a bad duration");
    assert!(
        (out.clone() + &err).contains("auth_timeout"),
        "the error names the key: {out}{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_overrides_beat_the_config_file() {
    let node = TestNode::start_with_env(
        "[limits]\nmax_connections_per_user = 5\n",
        &[
            ("HERALD_LIMITS__MAX_CONNECTIONS_PER_USER", "1"),
            ("HERALD_LIMITS__PER_USER_POLICY", "reject"),
        ],
    )
    .await;
    let (mut c, _) = node.connect_user("alice").await;
    match WsClient::connect(&node.ws_url(), TokenIn::Header(node.user_token("alice"))).await {
        Ok(_) => panic!("env override max_connections_per_user=1 ignored"),
        Err(e) => assert_eq!(upgrade_status(&e), Some(429), "{}", describe_ws_error(&e)),
    }
    c.ping_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_subcommand_mints_a_token_the_node_accepts() {
    let node = TestNode::start("").await;
    let cfg = node.config_path().to_str().expect("path").to_owned();
    let (code, out, err) = run_herald(
        &[
            "token", "--sub", "cli-user", "--roles", "a,b", "--ttl", "1h", "--config", &cfg,
        ],
        &[],
    );
    assert_eq!(code, Some(0), "herald token failed: {err}");
    let token = out
        .split_whitespace()
        .find(|w| w.matches('.').count() == 2)
        .unwrap_or_else(|| panic!("no JWT printed: {out}"))
        .to_owned();
    let (mut c, auth) = node.connect_token(&token).await;
    assert_eq!(auth["user_id"], "cli-user");
    c.ping_ok().await;
}

#[test]
fn config_check_prints_effective_config_with_secrets_masked() {
    let (_dir, path, _port) = TestNode::write_config("");
    let (code, out, err) = run_herald(
        &["config", "check", "--config", path.to_str().expect("path")],
        &[],
    );
    assert_eq!(code, Some(0), "config check failed: {out}{err}");
    let all = out.clone() + &err;
    assert!(all.contains("listen"), "prints the effective config: {all}");
    assert!(
        !all.contains(SECRET),
        "hs256 secret printed unmasked: {all}"
    );
    assert!(!all.contains(ADMIN_KEY), "api key printed unmasked: {all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_spreads_closes_over_the_drain_window() {
    let mut node = TestNode::start_process("[server]\nshutdown_drain = \"2s\"\n").await;
    let mut clients = Vec::new();
    for i in 0..10 {
        let (c, _) = node.connect_user(&format!("s{i}")).await;
        clients.push(c);
    }
    node.sigterm();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut c in clients {
        tasks.push(tokio::spawn(async move {
            let close = c.expect_close(Duration::from_secs(10)).await;
            (close.code, started.elapsed())
        }));
    }
    let mut times = Vec::new();
    for t in tasks {
        let (code, at) = t.await.expect("client task");
        assert_eq!(code, 1001);
        times.push(at);
    }
    times.sort();
    let spread = times[times.len() - 1] - times[0];
    assert!(
        spread >= Duration::from_millis(300),
        "10 closes within {spread:?}: not spread over the 2 s drain ({times:?})"
    );
    assert!(
        times[times.len() - 1] <= Duration::from_secs(4),
        "last close after {:?}, past the 2 s drain",
        times[times.len() - 1]
    );
    let status = node
        .wait_exit_async(Duration::from_secs(7))
        .await
        .unwrap_or_else(|| panic!("no exit"));
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_one_line_per_connection_open_and_close_with_reason() {
    let node = TestNode::start_with_env("", &[("HERALD_LOG_FORMAT", "json")]).await;
    let (c, auth) = node.connect_user("logged").await;
    let conn_id = auth["connection_id"].as_str().expect("id").to_owned();
    c.close().await;
    let deadline = Instant::now() + FRAME_WAIT;
    let (opened, closed) = loop {
        let log = node.log();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .filter(|l| l.trim_start().starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let mentions: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|v| v.to_string().contains(&conn_id))
            .collect();
        let opened = mentions
            .iter()
            .filter(|v| v.to_string().contains("open"))
            .count();
        let closed: Vec<&&serde_json::Value> = mentions
            .iter()
            .filter(|v| v.to_string().contains("close"))
            .collect();
        if opened >= 1 && !closed.is_empty() {
            break (
                opened,
                closed.iter().map(|v| (**v).clone()).collect::<Vec<_>>(),
            );
        }
        assert!(
            Instant::now() < deadline,
            "no JSON open/close lines for {conn_id} in the log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(opened, 1, "one open line");
    assert_eq!(closed.len(), 1, "one close line: {closed:?}");
    assert!(
        closed[0].to_string().contains("reason"),
        "the close line has a reason: {}",
        closed[0]
    );
}
