//! Webhooks on a three-node Redis cluster (`herald serve` processes, the
//! test backend as the receiver): users come and go across nodes while one
//! node is SIGKILLed, and the receiver still sees every connection closed,
//! exactly one `user.online` and one `user.offline` per user, each room's
//! `room.occupied`/`room.vacated` once per transition and each member's
//! `member.joined` before its `member.left`; a receiver down for a while
//! gets everything afterwards; and when the node sending webhooks is
//! SIGKILLed mid-backlog, another takes the lease and delivers the rest.
//! The scenarios are in `common/webhooks.rs`, shared with the NATS tests.

mod common;

use common::cluster::TestCluster;
use common::webhooks::*;
use common::Backend;
use herald_testkit::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_node_loses_no_event_and_transitions_fire_once_cluster_wide() {
    let redis = RedisServer::start();
    sigkilled_node_loses_no_event(EngineServer::Redis(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_away_then_the_sender_sigkilled_mid_backlog_loses_nothing() {
    let redis = RedisServer::start();
    let engine = EngineServer::Redis(&redis);
    let backend = &Backend::start().await;
    let config = webhooks_config(backend, "batch_size = 5");
    let c = TestCluster::start_process(3, &engine.url(), &config).await;
    receiver_away_gets_everything_after(engine, backend, &c).await;
    sender_sigkilled_mid_backlog_loses_nothing(engine, backend, &c).await;
}
