//! The core cluster suite against a 3-master Redis Cluster (sharded pub/sub,
//! a room's keys in one slot): cross-node delivery, shared offsets,
//! presence and resume on another node (issue #4).

mod common;

use common::cluster::*;
use herald_testkit::RedisCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_cross_node_delivery() {
    let redis = RedisCluster::start();
    scenario_cross_node_delivery(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_shared_offsets_across_nodes() {
    let redis = RedisCluster::start();
    scenario_shared_offsets(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_presence_is_cluster_wide() {
    let redis = RedisCluster::start();
    scenario_presence(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_resume_on_another_node_is_gap_free() {
    let redis = RedisCluster::start();
    scenario_resume_across_nodes(&redis.url()).await;
}
