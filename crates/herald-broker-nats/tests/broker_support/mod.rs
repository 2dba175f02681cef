//! Shared by the broker tests: nodes (a `NatsBroker` with its own client
//! and a collecting sink) on a real nats-server, and a TCP proxy that can
//! cut one node's connection.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use herald_broker_nats::{NatsBroker, NatsClients, NatsSettings};
use herald_core::Broker;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[allow(unused_imports)]
pub use herald_testkit::conformance::{
    prefix, request, request_with, room, wait_until, Collect, MINUTE,
};

pub fn settings(url: &str, prefix: &str, id: &str) -> NatsSettings {
    NatsSettings {
        url: url.into(),
        prefix: prefix.into(),
        node_id: id.into(),
        node_heartbeat: Duration::from_secs(1),
        command_timeout: Duration::from_secs(2),
        credentials_file: None,
        user_password: None,
        token: None,
        tls_ca_file: None,
        tls_client_cert: None,
        replicas: 1,
    }
}

/// One node's broker.
pub struct Node {
    pub broker: Arc<NatsBroker>,
    pub sink: Arc<Collect>,
    pub clients: NatsClients,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Node {
    /// A node on `url`, ready (connected, stream ensured).
    pub async fn start(url: &str, prefix: &str, id: &str) -> Self {
        let node = Self::start_with(settings(url, prefix, id));
        let broker = node.broker.clone();
        wait_until("the broker is ready", || broker.is_ready()).await;
        node
    }

    /// A node with `settings`, not waited for.
    pub fn start_with(settings: NatsSettings) -> Self {
        let clients = NatsClients::connect(&settings).expect("client");
        let sink = Arc::new(Collect::default());
        let broker = NatsBroker::new(
            clients.clone(),
            &settings,
            Duration::from_secs(86_400),
            sink.clone(),
            sink.clone(),
        );
        let (cancel, tasks) = (CancellationToken::new(), TaskTracker::new());
        broker.spawn(cancel.clone(), &tasks);
        Self {
            broker,
            sink,
            clients,
            cancel,
            tasks,
        }
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        self.tasks.close();
        tokio::time::timeout(Duration::from_secs(5), self.tasks.wait())
            .await
            .expect("the broker's tasks stop on cancel");
        self.clients.close().await;
    }
}

/// A TCP proxy to a server: `cut` drops every connection and refuses new
/// ones until `heal`.
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Proxy {
    pub async fn start(target: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let generation = Arc::new(generation);
        let (c, g) = (cut.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let mut cut_rx = g.subscribe();
                tokio::spawn(async move {
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            cut,
            generation,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}
