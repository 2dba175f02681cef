//! The engine conformance suite (herald-testkit's `conformance`) against
//! the memory engine. Scenarios needing several nodes on one backend say
//! they are skipped, and why.

use herald_broker_memory::MemoryEngine;
use herald_testkit::conformance::{scenarios, Harness};
use std::sync::Arc;

fn memory() -> Harness {
    Harness::new(Arc::new(MemoryEngine), Default::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_offsets_and_ordered_delivery() {
    scenarios::shared_offsets_and_ordered_delivery(&memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_counted() {
    scenarios::subscriptions_are_counted(&memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribed_rooms_get_nothing() {
    scenarios::unsubscribed_rooms_get_nothing(&memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_positions() {
    scenarios::history_and_positions(&memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_byte_budget_trims_oldest() {
    scenarios::room_byte_budget_trims_oldest(&memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_unknown_rooms_create_nothing() {
    scenarios::reads_of_unknown_rooms_create_nothing(&memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency() {
    scenarios::idempotency(&memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_announce() {
    scenarios::presence_announce(&memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reaches_other_nodes() {
    scenarios::presence_reaches_other_nodes(&memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_races() {
    scenarios::subscribe_races(&memory()).await;
}
