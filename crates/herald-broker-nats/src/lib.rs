//! Herald's NATS engine: many nodes, one system, on NATS with JetStream.
//!
//! - [`NatsBroker`] keeps each room's stream in one JetStream stream per
//!   prefix (a subject per room) and fans accepted publications out to the
//!   nodes listening to the room.
//! - [`NatsCluster`] keeps the cluster-wide registry in JetStream key-value
//!   buckets: nodes and their heartbeats, connections per user, presence,
//!   exclusive-session locks, and carries disconnects between nodes.
//! - [`NatsOutbox`] keeps webhook events durably in a JetStream stream
//!   until the node holding the dispatch lease delivered them.
//! - [`NatsEngine`] builds them for a node (the engine factory), with
//!   [`NatsPresence`].
//!
//! The design, subject and key names are documented on each type and in
//! `docs/architecture.md` ("The NATS engine").

#![warn(missing_docs)]

mod client;
mod commands;
pub mod kv;
pub mod names;
pub mod wire;

pub use client::{
    connect_options, start_client, NatsAuthRef, NatsClients, NatsSettings, NatsSetupError,
};

mod broker;
mod cluster;
mod engine;
mod hooks;

pub use broker::NatsBroker;
pub use cluster::NatsCluster;
pub use engine::{NatsEngine, NatsPresence};
pub use hooks::{NatsOutbox, MAX_EVENTS as HOOKS_MAX_EVENTS};
