//! `ProxyClient` over real HTTP: a small HTTP/1.1 server on a loopback
//! port answers as each test tells it, and records what it received.

use herald_proxy::{http_client, CallError, ProxyClient, ProxySettings};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// What the server answers: status, body, and a delay before answering.
#[derive(Clone)]
struct Script {
    status: u16,
    body: String,
    delay: Duration,
}

/// A loopback HTTP server that records each request's head and body.
struct Server {
    url: String,
    script: Arc<Mutex<Script>>,
    requests: Arc<Mutex<Vec<(String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(status: u16, body: Value) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let script = Arc::new(Mutex::new(Script {
            status,
            body: body.to_string(),
            delay: Duration::ZERO,
        }));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (script.clone(), requests.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                conns.spawn(serve(stream, s.clone(), r.clone()));
            }
        });
        Server {
            url,
            script,
            requests,
            task,
        }
    }

    async fn set(&self, status: u16, body: Value, delay: Duration) {
        *self.script.lock().await = Script {
            status,
            body: body.to_string(),
            delay,
        };
    }

    async fn count(&self) -> usize {
        self.requests.lock().await.len()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    script: Arc<Mutex<Script>>,
    requests: Arc<Mutex<Vec<(String, Value)>>>,
) {
    let mut buf = Vec::new();
    loop {
        let (head, body) = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let body = buf[end + 4..end + 4 + len].to_vec();
                    buf.drain(..end + 4 + len);
                    break (head, body);
                }
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        requests.lock().await.push((head, body));
        let script = script.lock().await.clone();
        tokio::time::sleep(script.delay).await;
        let response = format!(
            "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
            script.status,
            script.body.len(),
            script.body
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn settings(timeout_ms: u64) -> ProxySettings {
    ProxySettings {
        timeout: Duration::from_millis(timeout_ms),
        max_concurrency: 4,
        breaker_failures: 2,
        breaker_cooldown: Duration::from_millis(300),
        headers: vec![("authorization".into(), "Bearer backend-secret".into())],
    }
}

fn client(server: &Server, settings: &ProxySettings) -> ProxyClient {
    ProxyClient::new(
        "join",
        &server.url,
        settings,
        http_client().expect("client"),
    )
    .expect("valid settings")
}

#[tokio::test]
async fn requests_carry_json_and_the_static_headers() {
    let server = Server::start(200, json!({"ok": true})).await;
    let c = client(&server, &settings(2000));
    let answer: Value = c.call(&json!({"room": "chat:9"})).await.expect("answer");
    assert_eq!(answer, json!({"ok": true}));
    let requests = server.requests.lock().await;
    let (head, body) = &requests[0];
    assert!(head.starts_with("post /hook "), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(
        head.contains("authorization: bearer backend-secret"),
        "{head}"
    );
    assert_eq!(body, &json!({"room": "chat:9"}));
}

#[tokio::test]
async fn statuses_map_to_answers_refusals_and_failures() {
    let server = Server::start(403, json!({"message": "not a member"})).await;
    let c = client(&server, &settings(2000));
    let refused = c.call::<Value>(&json!({})).await;
    assert_eq!(
        refused,
        Err(CallError::Refused {
            status: 403,
            message: "not a member".into()
        })
    );
    server.set(503, json!({}), Duration::ZERO).await;
    assert!(matches!(
        c.call::<Value>(&json!({})).await,
        Err(CallError::Failed(_))
    ));
}

#[tokio::test]
async fn the_deadline_bounds_the_call_and_the_wait_for_a_slot() {
    let server = Server::start(200, json!({})).await;
    server.set(200, json!({}), Duration::from_secs(3)).await;
    let mut s = settings(300);
    s.max_concurrency = 1;
    s.breaker_failures = 100;
    let c = client(&server, &s);
    let (one, two) = (json!({"n": 1}), json!({"n": 2}));
    let started = std::time::Instant::now();
    let (first, second) = tokio::join!(c.call::<Value>(&one), async {
        // Starts once the first holds the only slot.
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.call::<Value>(&two).await
    });
    assert!(matches!(first, Err(CallError::Timeout(_))), "{first:?}");
    // The second waited for the slot within its own deadline: it either
    // never got it (not sent) or got it as the first gave up and ran out
    // of time itself. Neither waited for the backend's 3 s.
    assert!(
        matches!(
            second,
            Err(CallError::Unavailable(_) | CallError::Timeout(_))
        ),
        "{second:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the deadline"
    );
}

#[tokio::test]
async fn the_breaker_opens_fails_fast_and_a_probe_closes_it() {
    let server = Server::start(500, json!({})).await;
    let c = client(&server, &settings(2000));
    for _ in 0..2 {
        assert!(matches!(
            c.call::<Value>(&json!({})).await,
            Err(CallError::Failed(_))
        ));
    }
    assert!(c.breaker_open());
    assert!(matches!(
        c.call::<Value>(&json!({})).await,
        Err(CallError::Unavailable(_))
    ));
    assert_eq!(server.count().await, 2, "open: not sent");
    // An answer that does not parse is a failure too, so the probe after
    // the cooldown reopens it.
    server
        .set(200, json!("not an object"), Duration::ZERO)
        .await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(matches!(
        c.call::<serde_json::Map<String, Value>>(&json!({})).await,
        Err(CallError::Failed(_))
    ));
    assert!(c.breaker_open());
    server
        .set(200, json!({"allow": true}), Duration::ZERO)
        .await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    let answer: Value = c.call(&json!({})).await.expect("the probe");
    assert_eq!(answer, json!({"allow": true}));
    assert!(!c.breaker_open());
    assert_eq!(server.count().await, 4);
}
