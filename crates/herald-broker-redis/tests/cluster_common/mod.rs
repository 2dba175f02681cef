//! Shared by the `cluster_*` tests: the Redis backend of the registry
//! conformance suite (`herald_testkit::conformance::cluster`), on one
//! redis-server or on a Redis Cluster's URL.

#![allow(dead_code, unused_imports)]

use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::config::Config;
use fred::types::Builder;
use herald_broker_redis::keys::Keys;
use herald_broker_redis::wire::{decode_room_message, RoomMessage};
use herald_broker_redis::{RedisClients, RedisCluster, RedisSettings};
use herald_core::{BrokerError, ClusterNode, MemberRecord, PresenceChange, RoomKey};
pub use herald_testkit::conformance::cluster::{
    acme, eventually, now_ms, prefix, room, ClusterBackend,
};
use herald_testkit::RedisServer;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Heartbeat of the nodes under test.
pub const HEARTBEAT: Duration = Duration::from_millis(400);

/// The settings of node `id` on `url` under `prefix` (heartbeat
/// [`HEARTBEAT`]) and its clients, connected.
pub async fn connect(url: &str, prefix: &str, id: &str) -> (RedisSettings, RedisClients) {
    let settings = RedisSettings {
        url: url.into(),
        prefix: prefix.into(),
        node_id: id.into(),
        node_heartbeat: HEARTBEAT,
        command_timeout: Duration::from_secs(2),
    };
    let clients = RedisClients::connect(&settings).expect("clients");
    clients.start();
    wait_connected(&clients).await;
    (settings, clients)
}

/// One node of the cluster under test.
pub type TestNode = herald_testkit::conformance::cluster::TestNode<RedisBackend>;

/// The registry on one redis-server (or only a URL, for a Redis Cluster:
/// then the store views and server controls are not available).
pub struct RedisBackend {
    url: String,
    server: Option<RedisServer>,
}

impl RedisBackend {
    /// A fresh redis-server.
    pub fn start() -> Self {
        let server = RedisServer::start();
        Self {
            url: server.url(),
            server: Some(server),
        }
    }

    /// Nodes on `url` (a server this backend does not control).
    pub fn on(url: &str) -> Self {
        Self {
            url: url.into(),
            server: None,
        }
    }

    fn server(&self) -> &RedisServer {
        self.server
            .as_ref()
            .expect("a redis-server this test started")
    }

    fn cli(&self, args: &[&str]) -> String {
        self.server().cli(args).trim().to_owned()
    }
}

impl ClusterBackend for RedisBackend {
    type Registry = RedisCluster;
    const HEARTBEAT: Duration = HEARTBEAT;

    async fn registry(&self, prefix: &str, id: &str) -> Arc<RedisCluster> {
        let (settings, clients) = connect(&self.url, prefix, id).await;
        RedisCluster::new(clients, &settings)
    }

    fn spawn(
        registry: &Arc<RedisCluster>,
        node: Arc<dyn ClusterNode>,
        cancel: CancellationToken,
        tasks: &TaskTracker,
    ) {
        registry.spawn(node, cancel, tasks);
    }

    async fn presence(
        registry: &RedisCluster,
        room: &RoomKey,
    ) -> Result<Vec<MemberRecord>, BrokerError> {
        registry.presence(room).await
    }

    async fn lock(&self, prefix: &str, user: &str) -> Option<String> {
        let holder = self.cli(&["GET", &Keys::new(prefix).user_lock(&acme(), user)]);
        (!holder.is_empty()).then_some(holder)
    }

    async fn set_lock(&self, prefix: &str, user: &str, holder: &str) {
        let lock = Keys::new(prefix).user_lock(&acme(), user);
        self.cli(&["SET", &lock, holder, "PX", "60000"]);
    }

    /// The user's connections hash is empty (gone).
    async fn user_gone(&self, prefix: &str, user: &str) -> bool {
        self.cli(&["HLEN", &Keys::new(prefix).user_connections(&acme(), user)]) == "0"
    }

    async fn node_connections(&self, prefix: &str, node: &str) -> usize {
        let len = self.cli(&["HLEN", &Keys::new(prefix).node_connections(node)]);
        len.parse().expect("hlen")
    }

    async fn node_gone(&self, prefix: &str, node: &str) -> bool {
        let keys = Keys::new(prefix);
        self.cli(&["ZSCORE", &keys.nodes(), node]).is_empty()
            && self.cli(&["EXISTS", &keys.node_connections(node)]) == "0"
    }

    async fn watch(&self, prefix: &str, room: &RoomKey) -> mpsc::UnboundedReceiver<PresenceChange> {
        let channel = Keys::new(prefix).room_channel(room);
        let sub = subscriber(&self.url, &channel).await;
        let mut messages = sub.message_rx();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(m) = messages.recv().await {
                let Some(bytes) = m.value.as_bytes() else {
                    continue;
                };
                if let Ok(RoomMessage::Presence(change)) = decode_room_message(bytes) {
                    if tx.send(change).is_err() {
                        break;
                    }
                }
            }
            let _ = sub.quit().await;
        });
        rx
    }

    fn kill(&mut self) {
        self.server.as_mut().expect("a redis-server").kill();
    }

    /// A redis-server without persistence comes back empty.
    fn revive(&mut self) {
        self.server.as_mut().expect("a redis-server").restart();
    }

    async fn forget_everything(&mut self) {
        self.server.as_mut().expect("a redis-server").restart();
        assert_eq!(self.cli(&["DBSIZE"]), "0");
    }
}

/// Room channels are sharded channels, on a single server too.
pub async fn subscriber(url: &str, channel: &str) -> SubscriberClient {
    let config = Config::from_url(url).expect("url");
    let sub = Builder::from_config(config)
        .build_subscriber_client()
        .expect("subscriber");
    sub.init().await.expect("connect");
    sub.ssubscribe(channel).await.expect("ssubscribe");
    sub
}

pub async fn wait_connected(clients: &RedisClients) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !clients.is_connected() {
        assert!(Instant::now() < deadline, "clients did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
