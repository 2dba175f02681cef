//! The cluster registry across nodes on one nats-server: the registry
//! conformance suite (`herald_testkit::conformance::cluster::registry`).

mod cluster_common;

use cluster_common::NatsBackend;
use herald_testkit::conformance::cluster::registry;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reject_never_admits_more_than_max_across_nodes() {
    registry::reject_never_admits_more_than_max_across_nodes(&mut NatsBackend::start()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_admissions_on_three_nodes_keep_each_policy() {
    registry::concurrent_admissions_on_three_nodes_keep_each_policy(&mut NatsBackend::start())
        .await;
}

#[tokio::test]
async fn evict_oldest_displaces_the_oldest_cluster_wide_and_closes_it_remotely() {
    registry::evict_oldest_displaces_the_oldest_cluster_wide_and_closes_it_remotely(
        &mut NatsBackend::start(),
    )
    .await;
}

#[tokio::test]
async fn exclusive_displaces_every_older_session_on_any_node() {
    registry::exclusive_displaces_every_older_session_on_any_node(&mut NatsBackend::start()).await;
}

#[tokio::test]
async fn a_taken_over_lock_closes_its_session_without_any_message() {
    registry::a_taken_over_lock_closes_its_session_without_any_message(&mut NatsBackend::start())
        .await;
}

#[tokio::test]
async fn disconnect_user_reaches_connections_on_other_nodes() {
    registry::disconnect_user_reaches_connections_on_other_nodes(&mut NatsBackend::start()).await;
}

#[tokio::test]
async fn presence_and_user_connections_list_every_node() {
    registry::presence_and_user_connections_list_every_node(&mut NatsBackend::start()).await;
}

#[tokio::test]
async fn stats_list_every_live_node_with_its_figures() {
    registry::stats_list_every_live_node_with_its_figures(&mut NatsBackend::start()).await;
}

#[tokio::test]
async fn every_call_answers_unavailable_while_nats_is_down() {
    registry::every_call_answers_unavailable_while_the_store_is_down(&mut NatsBackend::start())
        .await;
}

#[tokio::test]
async fn a_node_deciding_from_what_it_last_wrote_still_sees_other_nodes_changes() {
    registry::a_node_deciding_from_what_it_last_wrote_still_sees_other_nodes_changes(
        &mut NatsBackend::start(),
    )
    .await;
}
