//! The cluster registry's metrics, the same names for every engine (no
//! labels: node ids are not bounded).

use metrics::{counter, describe_counter, describe_gauge, gauge};
use std::sync::Once;

const NODES_ALIVE: &str = "herald_cluster_nodes_alive";
const NODES_REAPED: &str = "herald_cluster_nodes_reaped_total";
const LOCKS_LOST: &str = "herald_cluster_locks_lost_total";

/// Describes the metrics once per process, registered at zero.
pub fn describe() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        describe_gauge!(NODES_ALIVE, "Nodes whose heartbeat is current");
        describe_counter!(
            NODES_REAPED,
            "Dead nodes whose registry entries this node cleaned up"
        );
        describe_counter!(
            LOCKS_LOST,
            "Exclusive sessions closed because another connection took the lock"
        );
        counter!(NODES_REAPED).increment(0);
        counter!(LOCKS_LOST).increment(0);
    });
}

/// Sets how many nodes have a current heartbeat.
pub fn nodes_alive(n: usize) {
    gauge!(NODES_ALIVE).set(n as f64);
}

/// Counts a dead node whose entries this node cleaned up.
pub fn node_reaped() {
    counter!(NODES_REAPED).increment(1);
}

/// Counts an exclusive session closed because its lock was taken.
pub fn lock_lost() {
    counter!(LOCKS_LOST).increment(1);
}
