//! Herald's Redis engine: many nodes, one system.
//!
//! - [`RedisBroker`] keeps each room's stream in Redis (offsets, epochs,
//!   history) and fans publications out over pub/sub to the nodes with
//!   members in the room.
//! - [`RedisCluster`] keeps the cluster-wide registry: nodes and their
//!   heartbeats, connections per user, presence, exclusive-session locks,
//!   and the control channel that carries disconnects between nodes.
//! - [`RedisHooks`] is the durable webhook outbox (a stream with a
//!   cluster-wide dispatch lease) and reports the registry's cluster-wide
//!   transitions (`user.online`, `room.vacated`, ...) into it.
//! - [`IngestConsumer`] publishes entries services append to the
//!   `<prefix>:ingest` stream, once each, as one consumer group.
//!
//! - [`RedisEngine`] builds the three for a node (the engine factory), with
//!   [`RedisPresence`].
//!
//! Keys of one room share a hash tag, so everything works on Redis Cluster
//! too, where room channels use sharded pub/sub.

#![warn(missing_docs)]

mod client;
pub mod keys;
pub mod wire;

pub use client::{RedisClients, RedisSettings, RedisSetupError};
/// A Redis connection task's handle (see [`RedisClients::start`]).
pub use fred::types::ConnectHandle;

mod broker;
mod cluster;
mod engine;
pub mod hooks;
mod ingest;

pub use broker::RedisBroker;
pub use cluster::RedisCluster;
pub use engine::{RedisEngine, RedisPresence};
pub use hooks::RedisHooks;
pub use ingest::{IngestConsumer, IngestFailure, IngestOptions, IngestTarget};
