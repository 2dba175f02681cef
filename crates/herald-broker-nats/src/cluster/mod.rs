//! The NATS cluster registry on key-value buckets (filled in by the cluster
//! work of issue #15).

/// The cluster registry on JetStream key-value buckets.
pub struct NatsCluster;
