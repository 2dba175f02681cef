//! Shared by the `cluster_*` tests: the NATS backend of the registry
//! conformance suite (`herald_testkit::conformance::cluster`) on one
//! nats-server, and a direct view of the registry buckets.

#![allow(dead_code, unused_imports)]

use futures_util::StreamExt;
use herald_broker_nats::{NatsClients, NatsCluster, NatsSettings};
use herald_core::{BrokerError, ClusterNode, MemberRecord, PresenceChange, RoomKey, Tenant};
pub use herald_testkit::conformance::cluster::{
    acme, eventually, now_ms, prefix, room, ClusterBackend,
};
use herald_testkit::NatsServer;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Heartbeat of the nodes under test.
pub const HEARTBEAT: Duration = Duration::from_millis(300);

/// The settings of node `id` on `url` under `prefix` (heartbeat
/// [`HEARTBEAT`], one replica).
pub fn settings(url: &str, prefix: &str, id: &str) -> NatsSettings {
    NatsSettings {
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
    }
}

/// Clients for `settings`, connected.
pub async fn clients(settings: &NatsSettings) -> NatsClients {
    let clients = NatsClients::connect(settings).expect("clients");
    wait_connected(&clients).await;
    clients
}

/// One node of the cluster under test.
pub type TestNode = herald_testkit::conformance::cluster::TestNode<NatsBackend>;

/// The registry on one nats-server with JetStream.
pub struct NatsBackend {
    pub server: NatsServer,
}

impl NatsBackend {
    pub fn start() -> Self {
        Self {
            server: NatsServer::start(),
        }
    }

    async fn store(&self, prefix: &str) -> Store {
        Store::connect(&self.server.url(), prefix).await
    }
}

impl ClusterBackend for NatsBackend {
    type Registry = NatsCluster;
    const HEARTBEAT: Duration = HEARTBEAT;

    async fn registry(&self, prefix: &str, id: &str) -> Arc<NatsCluster> {
        let settings = settings(&self.server.url(), prefix, id);
        NatsCluster::new(clients(&settings).await, &settings)
    }

    fn spawn(
        registry: &Arc<NatsCluster>,
        node: Arc<dyn ClusterNode>,
        cancel: CancellationToken,
        tasks: &TaskTracker,
    ) {
        registry.spawn(node, cancel, tasks);
    }

    async fn presence(
        registry: &NatsCluster,
        room: &RoomKey,
    ) -> Result<Vec<MemberRecord>, BrokerError> {
        registry.presence(room).await
    }

    async fn lock(&self, prefix: &str, user: &str) -> Option<String> {
        self.store(prefix).await.lock(&acme(), user).await
    }

    async fn set_lock(&self, prefix: &str, user: &str, holder: &str) {
        self.store(prefix)
            .await
            .set_lock(&acme(), user, holder)
            .await;
    }

    /// The user's key is gone: nothing is left of the user.
    async fn user_gone(&self, prefix: &str, user: &str) -> bool {
        self.store(prefix).await.user(&acme(), user).await == serde_json::Value::Null
    }

    async fn node_connections(&self, prefix: &str, node: &str) -> usize {
        let keys = self.store(prefix).await.node_keys(node).await;
        keys.iter().filter(|k| k.starts_with("c.")).count()
    }

    async fn node_gone(&self, prefix: &str, node: &str) -> bool {
        let store = self.store(prefix).await;
        store.node_keys(node).await.is_empty()
            && !store
                .keys("nodes")
                .await
                .contains(&herald_broker_nats::names::token(node))
    }

    async fn watch(&self, prefix: &str, room: &RoomKey) -> mpsc::UnboundedReceiver<PresenceChange> {
        let mut messages = self.store(prefix).await.subscribe_room(room).await;
        let (tx, rx) = mpsc::unbounded_channel();
        let room = room.clone();
        tokio::spawn(async move {
            while let Some(m) = messages.next().await {
                let change = herald_broker_nats::wire::decode_presence(
                    &room,
                    m.headers.as_ref(),
                    &m.payload,
                );
                if let Some(change) = change {
                    if tx.send(change).is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }

    fn kill(&mut self) {
        self.server.kill();
    }

    fn revive(&mut self) {
        self.server.restart();
    }

    async fn forget_everything(&mut self) {
        self.server.restart_empty();
    }
}

pub async fn wait_connected(clients: &NatsClients) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !clients.is_connected() {
        assert!(Instant::now() < deadline, "clients did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
