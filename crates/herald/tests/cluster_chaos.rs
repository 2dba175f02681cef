//! Failures under load (issue #4) on Redis: a node SIGKILLed while events
//! flow (its clients resume on a survivor with nothing lost; survivors reap
//! its connections and presence), and Redis restarted empty under load
//! (readiness, 503s, and every publish answered 200 delivered). The
//! scenarios live in `common/cluster/` and run on NATS too
//! (`cluster_nats_chaos.rs`).

mod common;

use common::cluster::*;
use herald_testkit::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_node_loses_nothing_and_is_reaped() {
    let redis = RedisServer::start();
    scenario_sigkill_under_load(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_under_load_delivers_every_accepted_publish() {
    let mut redis = RedisServer::start();
    scenario_broker_restart_under_load(&mut redis).await;
}
