//! Liveness on one redis-server: the registry conformance suite's
//! scenarios (`herald_testkit::conformance::cluster::liveness`).

mod cluster_common;

use cluster_common::RedisBackend;
use herald_testkit::conformance::cluster::liveness;

#[tokio::test]
async fn a_silent_node_is_reaped_within_two_heartbeats_with_member_left() {
    liveness::a_silent_node_is_reaped_within_two_heartbeats_with_member_left(
        &mut RedisBackend::start(),
    )
    .await;
}

#[tokio::test]
async fn a_restarted_redis_gets_every_entry_back_within_a_few_heartbeats() {
    liveness::a_store_restarted_empty_gets_every_entry_back(&mut RedisBackend::start()).await;
}

#[tokio::test]
async fn leave_removes_the_node_and_announces_its_members() {
    liveness::leave_removes_the_node_and_announces_its_members(&mut RedisBackend::start()).await;
}

#[tokio::test]
async fn a_node_restarted_under_the_same_id_drops_what_its_predecessor_left() {
    liveness::a_node_restarted_under_the_same_id_drops_what_its_predecessor_left(
        &mut RedisBackend::start(),
    )
    .await;
}
