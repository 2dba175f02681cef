//! The test kit's servers start, and the clients connect to both kinds.

use herald_broker_redis::{RedisClients, RedisSettings};
use herald_testkit::{RedisCluster, RedisServer};
use std::time::Duration;

fn settings(url: String) -> RedisSettings {
    RedisSettings {
        url,
        prefix: "herald-test".into(),
        node_id: "n1".into(),
        node_heartbeat: Duration::from_secs(1),
        command_timeout: Duration::from_secs(2),
    }
}

async fn wait_connected(clients: &RedisClients) {
    for _ in 0..200 {
        if clients.is_connected() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("clients did not connect");
}

#[tokio::test]
async fn clients_connect_to_a_single_server_and_to_a_cluster() {
    let server = RedisServer::start();
    let clients = RedisClients::connect(&settings(server.url())).expect("clients");
    assert!(!clients.clustered);
    clients.start();
    wait_connected(&clients).await;
    clients.quit().await;

    let cluster = RedisCluster::start();
    let clients = RedisClients::connect(&settings(cluster.url())).expect("clients");
    assert!(clients.clustered);
    clients.start();
    wait_connected(&clients).await;
    clients.quit().await;
}
