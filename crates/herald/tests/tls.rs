//! TLS on the listener (`server.tls_cert_file`, `server.tls_key_file`):
//! verified WSS and SSE, reloads (files changed, SIGHUP through the real
//! binary, a failed one), refusals at start and in `config check`, large
//! and many events to a slow WSS reader, and Socket.IO over HTTPS and WSS.

mod common;
#[path = "tls/pki.rs"]
mod pki;
#[path = "tls/support.rs"]
mod support;

use common::cluster::eventually;
use common::{run_herald, TestNode};
use pki::{Files, Pki};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifying_client_gets_events_over_wss_and_sse_and_others_are_refused() {
    let pki = Pki::new("Herald test CA");
    let files = Files::new(&pki.leaf("node-a", 1));
    let node = Node::start(&pki, &files, "").await;
    let client = https(&pki);

    let mut ws = wss_joined(node.port, &pki, "alice", "feed:tls", false).await;
    let mut sse = client
        .get(format!(
            "https://localhost:{}/sse?token={}&rooms=feed:tls",
            node.port,
            token("bob")
        ))
        .send()
        .await
        .expect("SSE over HTTPS");
    assert_eq!(sse.status(), 200);
    let mut seen = String::new();
    read_until(&mut sse, &mut seen, "room_joined").await;

    publish(
        &client,
        node.port,
        "feed:tls",
        "hello",
        json!({"over": "tls"}),
    )
    .await;
    let event = next_event(&mut ws, "hello").await;
    assert_eq!(event["data"], json!({"over": "tls"}));
    read_until(&mut sse, &mut seen, r#""over":"tls""#).await;

    // A client that does not trust the node's CA fails its handshake...
    let stranger = Pki::new("Some other CA");
    let refused = tls_connect(node.port, &connector(&stranger.ca_der), false).await;
    assert!(
        refused.is_err(),
        "a client without the CA completed a handshake"
    );
    // ...and so does plain HTTP; the node serves on.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/health", node.port))
        .timeout(WAIT)
        .send()
        .await;
    assert!(
        plain.map(|r| r.status() != 200).unwrap_or(true),
        "plain HTTP answered 200"
    );
    publish(&client, node.port, "feed:tls", "again", json!(2)).await;
    assert_eq!(next_event(&mut ws, "again").await["data"], json!(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_files_swap_the_certificate_for_new_handshakes_and_open_connections_stay() {
    let pki = Pki::new("Herald test CA");
    let first = pki.leaf("node-first", 1);
    let files = Files::new(&first);
    let node = Node::start(&pki, &files, "").await;
    assert_eq!(presented(node.port, &pki).await, first.der);
    let mut ws = wss_joined(node.port, &pki, "alice", "feed:reload", false).await;

    let second = pki.leaf("node-second", 2);
    files.write(&second);
    until_presented(
        node.port,
        &pki,
        &second,
        "the new certificate on new handshakes",
        Duration::from_secs(15),
    )
    .await;

    // The connection opened before the swap keeps its session.
    let client = https(&pki);
    publish(&client, node.port, "feed:reload", "after", json!("swap")).await;
    assert_eq!(next_event(&mut ws, "after").await["data"], "swap");
}

/// The node process: `herald serve` with TLS, killed when dropped.
struct Process {
    child: Child,
    port: u16,
    _dir: std::path::PathBuf,
}

impl Process {
    async fn start(pki: &Pki, files: &Files) -> Process {
        let (dir, config, port) = TestNode::write_config(&format!("[server]\n{}", files.toml()));
        let log = std::fs::File::create(dir.join("herald.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn herald");
        let process = Process {
            child,
            port,
            _dir: dir,
        };
        wait_healthy(pki, port).await;
        process
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name}");
    }

    /// The value of the `/metrics` line starting with `line_prefix`.
    async fn metric(&self, pki: &Pki, line_prefix: &str) -> Option<f64> {
        let text = https(pki)
            .get(format!("https://localhost:{}/metrics", self.port))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|l| l.strip_prefix(line_prefix))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_through_the_binary_and_a_failed_reload_keeps_the_certificate() {
    let pki = Pki::new("Herald test CA");
    let first = pki.leaf("node-first", 1);
    let files = Files::new(&first);
    let node = Process::start(&pki, &files).await;
    assert_eq!(presented(node.port, &pki).await, first.der);
    let ok = r#"herald_tls_reloads_total{outcome="ok"} "#;
    let error = r#"herald_tls_reloads_total{outcome="error"} "#;
    assert_eq!(
        node.metric(&pki, ok).await,
        Some(0.0),
        "scraped before any reload"
    );
    assert_eq!(node.metric(&pki, error).await, Some(0.0));

    // Same lengths and modification times: only the signal can tell.
    let second = pki.leaf("node-second", 2);
    files.write_unnoticed(&second);
    node.signal("HUP");
    until_presented(
        node.port,
        &pki,
        &second,
        "SIGHUP's reload",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(node.metric(&pki, ok).await, Some(1.0));

    // A broken certificate file: the reload fails, the certificate stays.
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nbroken\n").expect("write");
    node.signal("HUP");
    eventually(
        "the failed reload counted",
        Duration::from_secs(10),
        || async {
            let n = node.metric(&pki, error).await.unwrap_or(0.0);
            if n >= 1.0 {
                Ok(())
            } else {
                Err(format!("{n} failed reloads"))
            }
        },
    )
    .await;
    assert_eq!(presented(node.port, &pki).await, second.der);
}

/// Waits until new handshakes on `port` present `leaf`'s certificate.
async fn until_presented(port: u16, pki: &Pki, leaf: &pki::Leaf, what: &str, within: Duration) {
    eventually(what, within, || async {
        if presented(port, pki).await == leaf.der {
            Ok(())
        } else {
            Err("the old certificate".to_owned())
        }
    })
    .await;
}

/// Writes a config with the TLS files of `leaf` (and `extra` keys) into a
/// fresh directory; returns it and the files.
fn config_with(leaf: &pki::Leaf, extra: &str) -> (Files, std::path::PathBuf) {
    let files = Files::new(leaf);
    let text = support::config_toml(&files, extra);
    let path = files.dir.join("herald.toml");
    std::fs::write(&path, text).expect("config");
    (files, path)
}

/// `herald config check --config <config>`: its exit code and stderr.
fn config_check(config: &std::path::Path) -> (Option<i32>, String) {
    let path = config.to_str().expect("utf-8");
    let (code, _, stderr) = run_herald(&["config", "check", "--config", path], &[]);
    (code, stderr)
}

#[test]
fn bad_certificates_stop_the_node_and_fail_config_check_naming_the_key() {
    let pki = Pki::new("Herald test CA");
    let good = pki.leaf("node", 1);
    let other = pki.leaf("other", 2);

    let (files, config) = config_with(&good, "");
    std::fs::write(&files.cert, "not a certificate\n").expect("write");
    let path = config.to_str().expect("utf-8");
    for args in [
        &["serve", "--config", path][..],
        &["config", "check", "--config", path],
    ] {
        let (code, _, stderr) = run_herald(args, &[]);
        assert_ne!(code, Some(0), "{args:?} accepted a broken certificate");
        assert!(
            stderr.contains("server.tls_cert_file"),
            "{args:?}: {stderr}"
        );
    }

    // A key that is not the certificate's.
    let (files, config) = config_with(&good, "");
    std::fs::write(&files.key, &other.key_pem).expect("write");
    let (code, stderr) = config_check(&config);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("server.tls_key_file") && stderr.contains("does not match"),
        "{stderr}"
    );

    // Half-configured TLS.
    let (code, _, stderr) = run_herald(
        &["config", "check"],
        &[
            (
                "HERALD_AUTH__HS256_SECRET",
                "integration-test-secret-0123456789abcdef",
            ),
            (
                "HERALD_SERVER__TLS_CERT_FILE",
                files.cert.to_str().expect("utf-8"),
            ),
        ],
    );
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("server.tls_key_file") && stderr.contains("missing"),
        "{stderr}"
    );

    // An expired certificate is a warning only.
    let (_files, config) = config_with(&pki.expired_leaf("old"), "");
    let (code, stderr) = config_check(&config);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: server.tls_cert_file") && stderr.contains("expired"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_event_and_a_burst_reach_a_slow_wss_reader_whole_and_in_order() {
    const BURST: usize = 2000;
    let pki = Pki::new("Herald test CA");
    let files = Files::new(&pki.leaf("node", 1));
    let extra = "[limits]\nmax_message_bytes = 2097152\nsend_queue_messages = 4096\nsend_queue_bytes = 16777216\n";
    let node = Node::start(&pki, &files, extra).await;
    let client = https(&pki);
    // A 4 KiB receive window and no reading while everything is
    // published: the node's socket fills, ciphertext waits in rustls.
    let mut ws = wss_joined(node.port, &pki, "slow", "feed:big", true).await;
    let big: String = (0..1_000_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    publish(&client, node.port, "feed:big", "big", json!(big)).await;
    for seq in 0..BURST {
        publish(&client, node.port, "feed:big", "small", json!(seq)).await;
    }
    let first = next_event(&mut ws, "big").await;
    assert!(
        first["data"] == Value::String(big),
        "the large event arrived altered"
    );
    for seq in 0..BURST {
        let v = next_event(&mut ws, "small").await;
        assert_eq!(v["data"], json!(seq), "out of order or lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_works_over_https_polling_and_a_tls_websocket() {
    let pki = Pki::new("Herald test CA");
    let files = Files::new(&pki.leaf("node", 1));
    let node = Node::start(&pki, &files, "").await;
    let client = https(&pki);

    let open = client
        .get(format!(
            "https://localhost:{}/socket.io/?EIO=4&transport=polling",
            node.port
        ))
        .send()
        .await
        .expect("polling handshake");
    assert_eq!(open.status(), 200);
    let body = open.text().await.expect("body");
    let open: Value =
        serde_json::from_str(body.strip_prefix('0').expect("open packet")).expect("JSON");
    assert!(open["sid"].is_string(), "{open}");

    let mut ws = wss(
        node.port,
        &pki,
        "/socket.io/?EIO=4&transport=websocket",
        false,
    )
    .await;
    assert!(
        next_text(&mut ws).await.starts_with("0{"),
        "open packet first"
    );
    send_text(&mut ws, &format!(r#"40{{"token":"{}"}}"#, token("carol"))).await;
    assert!(
        next_text(&mut ws).await.starts_with("40{"),
        "CONNECT answered"
    );
    send_text(&mut ws, r#"421["join_room",{"room":"feed:sio"}]"#).await;
    loop {
        if next_text(&mut ws).await.starts_with("431") {
            break;
        }
    }
    publish(&client, node.port, "feed:sio", "tls.sio", json!({"n": 7})).await;
    loop {
        let packet = next_text(&mut ws).await;
        if packet.starts_with(r#"42["tls.sio""#) {
            assert!(packet.contains(r#"{"n":7}"#), "{packet}");
            break;
        }
    }
}
