//! Webhooks on a three-node NATS cluster (`herald serve` processes on one
//! nats-server, the test backend as the receiver): users come and go
//! across nodes while one node is SIGKILLed, and the receiver still sees
//! every connection closed, exactly one `user.online` and one
//! `user.offline` per user, each room's `room.occupied`/`room.vacated` once
//! per transition and each member's `member.joined` before its
//! `member.left`; and when the node sending webhooks is SIGKILLed with a
//! backlog, another takes the lease and delivers the rest. The scenarios
//! are in `common/webhooks.rs`, shared with the Redis tests.

mod common;

use common::cluster::TestCluster;
use common::webhooks::*;
use common::Backend;
use herald_testkit::NatsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_node_loses_no_event_and_transitions_fire_once_on_nats() {
    let nats = NatsServer::start();
    sigkilled_node_loses_no_event(EngineServer::Nats(&nats)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_sigkilled_with_a_backlog_loses_nothing_on_nats() {
    let nats = NatsServer::start();
    let engine = EngineServer::Nats(&nats);
    let backend = &Backend::start().await;
    let config = webhooks_config(backend, "batch_size = 5");
    let c = TestCluster::start_process(3, &engine.url(), &config).await;
    sender_sigkilled_mid_backlog_loses_nothing(engine, backend, &c).await;
}
