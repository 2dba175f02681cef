//! Failures under load on NATS (issue #15): a node SIGKILLed while events
//! flow, and nats-server killed and started again under load, once with
//! its JetStream store kept (same epoch, no gap) and once empty (a new
//! epoch). The scenarios are the Redis ones (`common/cluster/`).

mod common;

use common::cluster::*;
use herald_testkit::NatsServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_sigkill_of_a_node_loses_nothing_and_is_reaped() {
    let nats = NatsServer::start();
    scenario_sigkill_under_load(&nats.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_keeping_the_store_continues_the_epoch() {
    let mut nats = NatsServer::start();
    let mut server = NatsRestart {
        server: &mut nats,
        keep: true,
    };
    scenario_broker_restart_under_load(&mut server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_empty_starts_a_new_epoch() {
    let mut nats = NatsServer::start();
    let mut server = NatsRestart {
        server: &mut nats,
        keep: false,
    };
    scenario_broker_restart_under_load(&mut server).await;
}
