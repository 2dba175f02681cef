//! The engine-agnostic scenarios of the conformance suite (herald-testkit's
//! `conformance`) through the NATS engine's factory, two nodes sharing one
//! real nats-server with JetStream.

use herald_testkit::conformance::{scenarios, Harness};
use herald_testkit::NatsServer;
use std::sync::Arc;

fn nats_engine(url: &str) -> Harness {
    let mut settings = herald_core::EngineSettings::new();
    settings.insert("nats_url".into(), url.into());
    settings.insert("node_heartbeat".into(), "1s".into());
    settings.insert("command_timeout".into(), "2s".into());
    Harness::new(Arc::new(herald_broker_nats::NatsEngine), settings).streams_are_listened_rooms()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offsets_are_shared_and_each_node_gets_every_publication_once_in_order() {
    let server = NatsServer::start();
    scenarios::shared_offsets_and_ordered_delivery(&nats_engine(&server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unsubscribed_rooms_get_nothing() {
    let server = NatsServer::start();
    scenarios::unsubscribed_rooms_get_nothing(&nats_engine(&server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_positions_and_epochs() {
    let server = NatsServer::start();
    scenarios::history_and_positions(&nats_engine(&server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_keys() {
    let server = NatsServer::start();
    scenarios::idempotency(&nats_engine(&server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_reaches_other_nodes_only() {
    let server = NatsServer::start();
    scenarios::presence_reaches_other_nodes(&nats_engine(&server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribe_races_never_leave_a_room_deaf() {
    let server = NatsServer::start();
    scenarios::subscribe_races(&nats_engine(&server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriptions_are_counted() {
    let server = NatsServer::start();
    scenarios::subscriptions_are_counted(&nats_engine(&server.url())).await;
}

/// Lists the members of a room through the cluster registry
/// (`NatsCluster::presence`): fails until the cluster work replaces the
/// placeholder registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn presence_announce_is_not_echoed() {
    let server = NatsServer::start();
    scenarios::presence_announce(&nats_engine(&server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_of_unknown_rooms_answer_offset_zero() {
    let server = NatsServer::start();
    scenarios::reads_of_unknown_rooms_create_nothing(&nats_engine(&server.url())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn room_byte_budget_through_the_engine() {
    let server = NatsServer::start();
    scenarios::room_byte_budget_trims_oldest(&nats_engine(&server.url())).await;
}
