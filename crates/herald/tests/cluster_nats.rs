//! The whole-node cluster suite on NATS (issue #15): three nodes on one
//! real nats-server with JetStream, running the same scenarios as the
//! Redis files (`common/cluster/`): cross-node delivery, shared offsets,
//! resume on another node, presence, the hopping resume stress,
//! connections and stats, the disconnect API, per-user `reject` and
//! `exclusive` sessions across nodes.

mod common;

use common::cluster::*;
use herald_testkit::NatsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_cross_node_delivery() {
    let nats = NatsServer::start();
    scenario_cross_node_delivery(&nats.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_shared_offsets_across_nodes() {
    let nats = NatsServer::start();
    scenario_shared_offsets(&nats.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_resume_on_another_node_is_gap_free() {
    let nats = NatsServer::start();
    scenario_resume_across_nodes(&nats.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_presence_is_cluster_wide() {
    let nats = NatsServer::start();
    scenario_presence(&nats.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_resume_stress_hopping_between_nodes() {
    let nats = NatsServer::start();
    scenario_resume_stress_hopping(&nats.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_connections_and_stats_span_the_cluster() {
    let nats = NatsServer::start();
    scenario_connections_and_stats(&nats.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_disconnect_api_reaches_every_node() {
    let nats = NatsServer::start();
    scenario_disconnect_api(&nats.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_per_user_reject_is_cluster_wide() {
    let nats = NatsServer::start();
    scenario_per_user_reject(&nats.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_exclusive_session_is_cluster_wide() {
    let nats = NatsServer::start();
    scenario_exclusive_session(&nats.url()).await;
}
