//! Shared by the `cluster_*` tests: a fake node that records closes and
//! serves a snapshot, and nodes of a cluster started on one nats-server.

#![allow(dead_code)]

use herald_broker_nats::{NatsClients, NatsCluster, NatsSettings};
use herald_core::{
    BrokerError, Cluster, ClusterAdmission, ClusterNode, ConnectionRecord, NodeFigures,
    PerUserPolicy, RoomKey, RoomName, Tenant,
};
use parking_lot::Mutex;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Heartbeat of the nodes under test.
pub const HEARTBEAT: Duration = Duration::from_millis(300);

/// A unique key prefix per test.
pub fn prefix(test: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "ht_{test}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A connection as the node's snapshot gives it: record, rooms (presence).
pub type Held = (ConnectionRecord, Vec<(String, bool)>);

/// The node side, faked: holds connections (record + rooms with their
/// presence flag) and records every close it is asked for.
#[derive(Default)]
pub struct FakeNode {
    pub id: String,
    pub conns: Mutex<Vec<Held>>,
    pub closed: Mutex<Vec<(String, u16)>>,
}

impl FakeNode {
    pub fn new(id: &str) -> Arc<Self> {
        Arc::new(Self {
            id: id.into(),
            ..Self::default()
        })
    }

    /// Holds a connection locally (as the node's registry would).
    pub fn hold(&self, record: &ConnectionRecord, rooms: &[(&str, bool)]) {
        let mut conns = self.conns.lock();
        conns.retain(|(r, _)| r.connection_id != record.connection_id);
        conns.push((
            record.clone(),
            rooms.iter().map(|(r, p)| ((*r).to_owned(), *p)).collect(),
        ));
    }

    pub fn closed(&self) -> Vec<(String, u16)> {
        self.closed.lock().clone()
    }

    pub fn was_closed(&self, id: &str, code: u16) -> bool {
        self.closed
            .lock()
            .iter()
            .any(|(c, k)| c == id && *k == code)
    }
}

impl ClusterNode for FakeNode {
    fn close_connection(&self, connection_id: &str, code: u16) -> bool {
        let mut conns = self.conns.lock();
        let before = conns.len();
        conns.retain(|(r, _)| r.connection_id != connection_id);
        let here = conns.len() < before;
        if here {
            self.closed.lock().push((connection_id.to_owned(), code));
        }
        here
    }

    fn close_user(&self, tenant: &Tenant, user_id: &str, code: u16) -> usize {
        let mut conns = self.conns.lock();
        let mut closed = self.closed.lock();
        let before = conns.len();
        conns.retain(|(r, _)| {
            let theirs = r.tenant == *tenant && r.user_id == user_id;
            if theirs {
                closed.push((r.connection_id.clone(), code));
            }
            !theirs
        });
        before - conns.len()
    }

    fn snapshot(&self) -> Vec<Held> {
        self.conns.lock().clone()
    }

    fn figures(&self) -> NodeFigures {
        let conns = self.conns.lock();
        let mut users: Vec<&str> = conns.iter().map(|(r, _)| r.user_id.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        NodeFigures {
            node_id: self.id.clone(),
            connections: conns.len(),
            users: users.len(),
            rooms: 0,
        }
    }
}

/// One node of the cluster under test.
pub struct TestNode {
    pub id: String,
    pub cluster: Arc<NatsCluster>,
    pub fake: Arc<FakeNode>,
    pub clients: NatsClients,
    pub cancel: CancellationToken,
    pub tasks: TaskTracker,
}

impl TestNode {
    /// Connects, builds the registry and spawns its tasks.
    pub async fn start(url: &str, prefix: &str, id: &str) -> Self {
        let node = Self::unspawned(url, prefix, id).await;
        node.cluster
            .spawn(node.fake.clone(), node.cancel.clone(), &node.tasks);
        node
    }

    /// Connects and builds the registry without spawning its tasks.
    pub async fn unspawned(url: &str, prefix: &str, id: &str) -> Self {
        let settings = NatsSettings {
            url: url.into(),
            prefix: prefix.into(),
            node_id: id.into(),
            node_heartbeat: HEARTBEAT,
            command_timeout: Duration::from_secs(2),
            credentials_file: None,
            user_password: None,
            token: None,
            tls_ca_file: None,
            tls_client_cert: None,
            replicas: 1,
        };
        let clients = NatsClients::connect(&settings).expect("clients");
        wait_connected(&clients).await;
        Self {
            id: id.into(),
            cluster: NatsCluster::new(clients.clone(), &settings),
            fake: FakeNode::new(id),
            clients,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Stops the tasks (as a crash would: no `leave`).
    pub async fn stop(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Admits a connection as the node does: it holds the connection
    /// locally while the registry decides, and lets go when refused.
    pub async fn connect(
        &self,
        record: &ConnectionRecord,
        policy: PerUserPolicy,
        max: usize,
    ) -> Result<ClusterAdmission, BrokerError> {
        self.fake.hold(record, &[]);
        let result = self.cluster.admit(record, policy, max).await;
        if !matches!(result, Ok(ClusterAdmission::Admitted(_))) {
            self.fake
                .conns
                .lock()
                .retain(|(r, _)| r.connection_id != record.connection_id);
        }
        result
    }

    /// A record of a connection on this node.
    pub fn record(&self, conn: &str, user: &str, connected_at: u64) -> ConnectionRecord {
        record(&self.id, conn, user, connected_at)
    }
}

pub fn record(node: &str, conn: &str, user: &str, connected_at: u64) -> ConnectionRecord {
    ConnectionRecord {
        connection_id: conn.into(),
        tenant: Tenant::from_option(Some("acme")),
        user_id: user.into(),
        node_id: node.into(),
        transport: "websocket".into(),
        rooms: Vec::new(),
        connected_at,
    }
}

pub fn room(name: &str) -> RoomKey {
    RoomKey::new(
        Tenant::from_option(Some("acme")),
        RoomName::parse(name).expect("room name"),
    )
}

pub fn acme() -> Tenant {
    Tenant::from_option(Some("acme"))
}

pub async fn wait_connected(clients: &NatsClients) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !clients.is_connected() {
        assert!(Instant::now() < deadline, "clients did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` until it holds or `within` passes; returns whether it held.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A direct view of the registry buckets, to check what the store holds
/// (not only what the API shows).
pub struct Store {
    pub names: herald_broker_nats::names::Names,
    pub js: async_nats::jetstream::Context,
    pub client: async_nats::Client,
}

impl Store {
    pub async fn connect(url: &str, prefix: &str) -> Self {
        let client = async_nats::connect(url).await.expect("connect");
        Self {
            names: herald_broker_nats::names::Names::new(prefix),
            js: async_nats::jetstream::new(client.clone()),
            client,
        }
    }

    async fn bucket(&self, what: &str) -> Option<async_nats::jetstream::kv::Store> {
        self.js.get_key_value(self.names.bucket(what)).await.ok()
    }

    /// Every key of a bucket that holds a value (deleted ones left out).
    pub async fn keys(&self, what: &str) -> Vec<String> {
        use futures_util::StreamExt;
        let Some(kv) = self.bucket(what).await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let Ok(mut keys) = kv.keys().await else {
            return out;
        };
        while let Some(Ok(k)) = keys.next().await {
            if kv.get(k.as_str()).await.ok().flatten().is_some() {
                out.push(k);
            }
        }
        out.sort();
        out
    }

    /// The user's key, as JSON (`Null` when absent).
    pub async fn user(&self, tenant: &Tenant, user: &str) -> serde_json::Value {
        let Some(kv) = self.bucket("registry").await else {
            return serde_json::Value::Null;
        };
        let key = format!("u.{}", self.names.user_key(tenant, user));
        match kv.get(key).await.ok().flatten() {
            Some(v) => serde_json::from_slice(&v).expect("user json"),
            None => serde_json::Value::Null,
        }
    }

    /// Who holds the user's exclusive lock.
    pub async fn lock(&self, tenant: &Tenant, user: &str) -> Option<String> {
        self.user(tenant, user).await["lock"]
            .as_str()
            .map(str::to_owned)
    }

    /// Sets the user's lock holder, as another node would.
    pub async fn set_lock(&self, tenant: &Tenant, user: &str, holder: &str) {
        let kv = self.bucket("registry").await.expect("bucket");
        let key = format!("u.{}", self.names.user_key(tenant, user));
        let entry = kv.entry(key.as_str()).await.expect("read").expect("exists");
        let mut doc: serde_json::Value = serde_json::from_slice(&entry.value).expect("json");
        doc["lock"] = serde_json::Value::String(holder.into());
        kv.update(
            key,
            serde_json::to_vec(&doc).expect("json").into(),
            entry.revision,
        )
        .await
        .expect("update");
    }

    /// Keys of a node: its connections (`c.`), presence (`p.`), marker.
    pub async fn node_keys(&self, node: &str) -> Vec<String> {
        let t = herald_broker_nats::names::token(node);
        self.keys("registry")
            .await
            .into_iter()
            .filter(|k| {
                let parts: Vec<&str> = k.split('.').collect();
                match parts.as_slice() {
                    ["c", n, _] | ["m", n] | ["p", _, n, _] => *n == t,
                    _ => false,
                }
            })
            .collect()
    }

    /// Subscribes to a room's delivery subject.
    pub async fn subscribe_room(&self, room: &RoomKey) -> async_nats::Subscriber {
        let sub = self
            .client
            .subscribe(self.names.delivery_subject(room))
            .await
            .expect("subscribe");
        self.client.flush().await.expect("flush");
        sub
    }
}

impl Store {
    /// Empties a bucket (it stays), as if the store forgot its contents.
    pub async fn wipe(&self, what: &str) {
        let stream = self
            .js
            .get_stream(format!("KV_{}", self.names.bucket(what)))
            .await
            .expect("bucket stream");
        stream.purge().await.expect("purge");
    }
}
