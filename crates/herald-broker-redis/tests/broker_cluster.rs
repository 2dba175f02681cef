//! The Redis broker's core behaviour on a 3-master Redis Cluster, where a
//! room's keys and channel live on its slot's shard.

mod broker_support;

use broker_support::redis_engine;
use herald_testkit::conformance::scenarios;
use herald_testkit::RedisCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_offsets_are_shared_and_delivered_once_in_order() {
    let cluster = RedisCluster::start();
    scenarios::shared_offsets_and_ordered_delivery(&redis_engine(&cluster.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_unsubscribed_rooms_get_nothing() {
    let cluster = RedisCluster::start();
    scenarios::unsubscribed_rooms_get_nothing(&redis_engine(&cluster.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_history_positions_and_epochs() {
    let cluster = RedisCluster::start();
    scenarios::history_and_positions(&redis_engine(&cluster.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_idempotency_and_presence() {
    let cluster = RedisCluster::start();
    scenarios::idempotency(&redis_engine(&cluster.url())).await;
    scenarios::presence_reaches_other_nodes(&redis_engine(&cluster.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_subscribe_races_never_leave_a_room_deaf() {
    let cluster = RedisCluster::start();
    scenarios::subscribe_races(&redis_engine(&cluster.url())).await;
}
