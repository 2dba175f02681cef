//! Herald's domain rules, independent of transports and engines: room names
//! and tenants, namespace rules, the verified identity of a connection, and
//! the [`Broker`] contract every engine (memory, Redis, NATS) implements.

#![warn(missing_docs)]

pub mod broker;
pub mod cluster;
pub mod duration;
mod identity;
pub mod namespace;
mod room;
mod verify;

pub use broker::{
    Broker, BrokerError, BrokerStats, EncodedFrames, HistoryPage, HistoryPolicy, HistoryTrims,
    PresenceChange, Publication, PublicationSink, PublishOutcome, PublishRequest,
};
pub use cluster::{
    Cluster, ClusterAdmission, ClusterNode, ConnectionRecord, ConnectionRef, MemberRecord,
    NodeFigures, PerUserPolicy,
};
pub use identity::Identity;
pub use namespace::{NamespaceConfig, Namespaces, Rule, RuleError};
pub use room::{
    RoomError, RoomKey, RoomName, Tenant, TenantError, MAX_ROOM_NAME_BYTES, MAX_TENANT_BYTES,
};
pub use verify::{TokenVerifier, VerifyError};
