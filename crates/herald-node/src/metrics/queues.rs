//! Send-queue figures, sampled by walking the node's connections (every
//! few seconds, from the server's metrics upkeep) rather than per write:
//! `herald_send_queue_bytes`, `herald_send_queue_max_depth` and
//! `herald_send_queue_depth_connections{depth}`. Connections per transport
//! are not set here: `connection_opened` / `connection_closed` keep that
//! gauge exact as they happen, and a second writer would race them (a
//! walk that read before an open would overwrite its increment).

use crate::node::Node;
use metrics::{describe_gauge, gauge};

const BYTES: &str = "herald_send_queue_bytes";
const MAX_DEPTH: &str = "herald_send_queue_max_depth";
const DEPTH: &str = "herald_send_queue_depth_connections";

/// The `depth` label values: connections by frames queued, in decades.
pub const DEPTH_BUCKETS: [&str; 5] = ["0", "1-9", "10-99", "100-999", "1000+"];

/// The bucket of a queue holding `items` frames.
fn bucket(items: usize) -> usize {
    match items {
        0 => 0,
        1..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        _ => 4,
    }
}

/// What one walk found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QueueSample {
    /// Bytes queued on all connections.
    pub bytes: usize,
    /// Most frames queued on one connection.
    pub max_depth: usize,
    /// Connections per [`DEPTH_BUCKETS`] bucket.
    pub connections: [usize; 5],
}

impl QueueSample {
    fn add(&mut self, items: usize, bytes: usize) {
        self.bytes += bytes;
        self.max_depth = self.max_depth.max(items);
        self.connections[bucket(items)] += 1;
    }
}

pub(crate) fn describe() {
    describe_gauge!(BYTES, "Bytes queued to clients on this node (sampled)");
    describe_gauge!(
        MAX_DEPTH,
        "Most frames queued on one connection of this node (sampled)"
    );
    describe_gauge!(
        DEPTH,
        "Connections by frames queued, in buckets 0, 1-9, 10-99, 100-999, 1000+ (sampled)"
    );
    publish(&QueueSample::default());
}

fn publish(sample: &QueueSample) {
    gauge!(BYTES).set(sample.bytes as f64);
    gauge!(MAX_DEPTH).set(sample.max_depth as f64);
    for (label, n) in DEPTH_BUCKETS.iter().zip(sample.connections) {
        gauge!(DEPTH, "depth" => *label).set(n as f64);
    }
}

/// Walks `node`'s connections (one shard at a time, each queue's lock
/// taken briefly) and sets the send-queue gauges. Returns what it found.
pub fn sample_send_queues(node: &Node) -> QueueSample {
    let mut sample = QueueSample::default();
    node.inner.registry.for_each_shard(|conns| {
        for conn in conns {
            let (items, bytes) = conn.queue.depth();
            sample.add(items, bytes);
        }
    });
    publish(&sample);
    sample
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depths_fall_in_decade_buckets() {
        let mut s = QueueSample::default();
        for (items, bytes) in [
            (0, 0),
            (1, 10),
            (9, 5),
            (10, 1),
            (999, 1),
            (1000, 7),
            (5000, 0),
        ] {
            s.add(items, bytes);
        }
        assert_eq!(s.connections, [1, 2, 1, 1, 2]);
        assert_eq!(s.max_depth, 5000);
        assert_eq!(s.bytes, 24);
    }
}
