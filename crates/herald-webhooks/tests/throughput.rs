//! Webhook throughput: how many events per second one dispatcher delivers
//! from a full outbox (docs/benchmarks.md, "Webhooks"). Ignored by default:
//!
//! ```text
//! cargo test -p herald-webhooks --test throughput -- --ignored --nocapture
//! ```
//!
//! The receiver is a minimal HTTP/1.1 server in this process (answers 200
//! after reading and parsing each batch), or, with
//! `HERALD_WEBHOOK_BENCH_URL` set, that URL (e.g. the test backend,
//! `python3 crates/herald/tests/backend/backend.py --port 8999` and
//! `HERALD_WEBHOOK_BENCH_URL=http://127.0.0.1:8999/webhooks`).
//! `HERALD_WEBHOOK_BENCH_EVENTS` (default 100000) and
//! `HERALD_WEBHOOK_BENCH_BATCH` (default 100) size the run.

use herald_broker_memory::MemoryOutbox;
use herald_core::{ConnectionRecord, HookEvent, HookSet, Outbox, RoomKey, RoomName, Tenant};
use herald_webhooks::{Dispatcher, WebhookSettings};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A typical event: `member.joined` with every field.
fn event(i: usize) -> HookEvent {
    let record = ConnectionRecord {
        connection_id: format!("{i:032x}"),
        tenant: Tenant::default_tenant(),
        user_id: format!("user-{}", i % 1000),
        node_id: "bench-node-1".into(),
        transport: "websocket".into(),
        rooms: Vec::new(),
        connected_at: 0,
    };
    let room = RoomKey::new(
        Tenant::default_tenant(),
        RoomName::parse(&format!("chat:{}", i % 100)).expect("room"),
    );
    HookEvent::member_joined(&room, &record)
}

/// Serves until the test ends: reads each request, parses its body as
/// JSON, counts the events and answers 200.
async fn receiver(received: Arc<AtomicU64>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/webhooks", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                // Answers are small: sent at once, not after the next ACK.
                let _ = socket.set_nodelay(true);
                let (read, mut write) = socket.into_split();
                let mut read = BufReader::new(read);
                loop {
                    let mut length = 0usize;
                    loop {
                        let mut line = String::new();
                        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    if read.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let v: serde_json::Value = serde_json::from_slice(&body).expect("json body");
                    let n = v["events"].as_array().map_or(0, Vec::len);
                    received.fetch_add(n as u64, Ordering::Relaxed);
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if write.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run with --ignored --nocapture"]
async fn webhook_throughput() {
    let total = env_or("HERALD_WEBHOOK_BENCH_EVENTS", 100_000);
    let batch_size = env_or("HERALD_WEBHOOK_BENCH_BATCH", 100);
    let received = Arc::new(AtomicU64::new(0));
    let (url, receiver_name) = match std::env::var("HERALD_WEBHOOK_BENCH_URL") {
        Ok(url) => (url.clone(), url),
        Err(_) => (
            receiver(received.clone()).await,
            "in-process Rust receiver".to_owned(),
        ),
    };
    let outbox = Arc::new(MemoryOutbox::new(total.max(1)));
    let events: Vec<HookEvent> = (0..total).map(event).collect();
    let body_bytes: usize = events.iter().map(|e| e.to_bytes().len()).sum();
    for chunk in events.chunks(1024) {
        outbox.append(chunk).await.expect("append");
    }
    let settings = WebhookSettings {
        url,
        secret: b"hook-secret".to_vec(),
        events: HookSet::all(),
        max_age: Duration::from_secs(3600),
        batch_size,
        timeout: Duration::from_secs(10),
        headers: Vec::new(),
    };
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let started = Instant::now();
    Dispatcher::new(settings, outbox.clone())
        .expect("dispatcher")
        .spawn(cancel.clone(), &tasks);
    let deadline = started + Duration::from_secs(300);
    while !outbox.is_empty() {
        assert!(Instant::now() < deadline, "not drained in 300 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    cancel.cancel();
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    if receiver_name.starts_with("in-process") {
        assert_eq!(received.load(Ordering::Relaxed), total as u64);
    }
    println!(
        "webhooks: {total} events ({} B each on average) in batches of {batch_size} to {receiver_name}: \
         {:.2} s, {:.0} events/s, {:.0} POSTs/s",
        body_bytes / total.max(1),
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        (total.div_ceil(batch_size)) as f64 / took.as_secs_f64(),
    );
}
