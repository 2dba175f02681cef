//! What the ingest tests share: a recording target, a node's consumer,
//! and the producing service's view of Redis.

use async_trait::async_trait;
use fred::interfaces::StreamsInterface;
use fred::types::{Key, Value};
use herald_broker_redis::keys::Keys;
use herald_broker_redis::{
    IngestConsumer, IngestFailure, IngestOptions, IngestTarget, RedisClients, RedisSettings,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub const PREFIX: &str = "ingest-test";
pub const GROUP: &str = "herald";

pub fn settings(url: &str, node: &str) -> RedisSettings {
    RedisSettings {
        url: url.to_owned(),
        prefix: PREFIX.into(),
        node_id: node.into(),
        node_heartbeat: Duration::from_secs(1),
        command_timeout: Duration::from_secs(2),
    }
}

/// Short claims, so that tests need not wait 30 s.
pub fn fast() -> IngestOptions {
    IngestOptions {
        claim_idle: Duration::from_millis(300),
        claim_interval: Duration::from_millis(100),
        max_deliveries: 5,
        block: Duration::from_millis(200),
        batch: 100,
        dead_letter_max_len: 1_000,
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Mode {
    Accept,
    Unavailable,
    /// Never returns: the node is stuck as if it had died mid-entry.
    Hang,
}

/// Records what it was asked to publish; payloads naming room `bad` are
/// invalid.
pub struct Target {
    pub mode: Mutex<Mode>,
    delay: Duration,
    attempts: AtomicUsize,
    published: Mutex<Vec<(String, String)>>,
}

impl Target {
    pub fn new(mode: Mode) -> Arc<Self> {
        Arc::new(Self {
            mode: Mutex::new(mode),
            delay: Duration::ZERO,
            attempts: AtomicUsize::new(0),
            published: Mutex::new(Vec::new()),
        })
    }

    /// Accepts, after 1 ms each.
    pub fn slow() -> Arc<Self> {
        Arc::new(Self {
            mode: Mutex::new(Mode::Accept),
            delay: Duration::from_millis(1),
            attempts: AtomicUsize::new(0),
            published: Mutex::new(Vec::new()),
        })
    }

    pub fn attempts(&self) -> usize {
        self.attempts.load(Ordering::SeqCst)
    }

    pub fn published(&self) -> Vec<(String, String)> {
        self.published.lock().clone()
    }

    pub fn ids(&self) -> Vec<String> {
        self.published().into_iter().map(|(id, _)| id).collect()
    }
}

#[async_trait]
impl IngestTarget for Target {
    async fn publish(
        &self,
        entry_id: &str,
        payload: &str,
        _trace: Option<herald_core::TraceContext>,
    ) -> Result<(), IngestFailure> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if payload.contains(r#""room":"bad""#) {
            return Err(IngestFailure::Invalid("room: bad".into()));
        }
        tokio::time::sleep(self.delay).await;
        let mode = *self.mode.lock();
        match mode {
            Mode::Accept => {
                self.published
                    .lock()
                    .push((entry_id.to_owned(), payload.to_owned()));
                Ok(())
            }
            Mode::Unavailable => Err(IngestFailure::Unavailable("broker down (test)".into())),
            Mode::Hang => std::future::pending().await,
        }
    }
}

/// One node's consumer.
pub struct Node {
    cancel: CancellationToken,
    tasks: TaskTracker,
    clients: RedisClients,
}

pub fn start_node(url: &str, node: &str, target: Arc<Target>, options: IngestOptions) -> Node {
    let settings = settings(url, node);
    let clients = RedisClients::connect(&settings).expect("clients");
    clients.start();
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    IngestConsumer::spawn_with(
        clients.clone(),
        &settings,
        target,
        options,
        cancel.clone(),
        &tasks,
    );
    Node {
        cancel,
        tasks,
        clients,
    }
}

impl Node {
    /// Cancels the consumer; its task must end promptly.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tasks.close();
        tokio::time::timeout(Duration::from_secs(5), self.tasks.wait())
            .await
            .expect("the consumer task stops on cancel");
        self.clients.quit().await;
    }
}

/// The test's own view of Redis, as a producing service.
pub struct Service {
    pub clients: RedisClients,
    pub keys: Keys,
}

impl Service {
    pub async fn connect(url: &str) -> Self {
        let clients = RedisClients::connect(&settings(url, "service")).expect("clients");
        clients.start();
        let service = Self {
            clients,
            keys: Keys::new(PREFIX),
        };
        wait_for("the service to connect", || async {
            service.clients.is_connected()
        })
        .await;
        service
    }

    /// Appends an entry with these fields; retried while Redis restarts.
    pub async fn append_fields(&self, fields: Vec<(Key, Value)>) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let added: Result<String, _> = self
                .clients
                .commands
                .xadd(self.keys.ingest(), false, None, "*", fields.clone())
                .await;
            match added {
                Ok(id) => return id,
                Err(e) => {
                    assert!(Instant::now() < deadline, "XADD kept failing: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    pub async fn append(&self, payload: &str) -> String {
        self.append_fields(vec![("payload".into(), payload.into())])
            .await
    }

    /// Entries pending in the group (delivered, not acknowledged).
    pub async fn pending(&self) -> i64 {
        let summary: Value = self
            .clients
            .commands
            .xpending(self.keys.ingest(), GROUP, ())
            .await
            .expect("XPENDING");
        summary.into_array()[0].as_i64().expect("a count")
    }

    /// Delivery count of each pending entry.
    pub async fn deliveries(&self) -> HashMap<String, i64> {
        let rows: Value = self
            .clients
            .commands
            .xpending(self.keys.ingest(), GROUP, ("-", "+", 1000))
            .await
            .expect("XPENDING");
        rows.into_array()
            .into_iter()
            .map(|row| {
                let row = row.into_array();
                let id = row[0].as_string().expect("id");
                (id, row[3].as_i64().expect("count"))
            })
            .collect()
    }

    /// Names of the group's consumers.
    pub async fn consumers(&self) -> Vec<String> {
        let reply: Value = self
            .clients
            .commands
            .xinfo_consumers(self.keys.ingest(), GROUP)
            .await
            .expect("XINFO CONSUMERS");
        reply
            .into_array()
            .into_iter()
            .map(|c| c.into_array()[1].as_string().expect("a name"))
            .collect()
    }

    pub async fn stream_len(&self) -> u64 {
        self.clients
            .commands
            .xlen(self.keys.ingest())
            .await
            .expect("XLEN")
    }

    /// The dead stream's entries, as field to (lossy) text.
    pub async fn dead(&self) -> Vec<HashMap<String, String>> {
        let entries: Vec<(String, HashMap<String, Value>)> = self
            .clients
            .commands
            .xrange_values(self.keys.ingest_dead(), "-", "+", None)
            .await
            .expect("XRANGE");
        entries
            .into_iter()
            .map(|(_, fields)| {
                fields
                    .into_iter()
                    .map(|(k, v)| (k, v.as_str_lossy().unwrap_or_default().into_owned()))
                    .collect()
            })
            .collect()
    }
}

pub async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn payload(n: usize) -> String {
    format!(r#"{{"room":"project:{n}","event":"e","data":{{"n":{n}}}}}"#)
}
