//! Herald's domain rules, independent of transports and engines: room names
//! and tenants, namespace rules, the verified identity of a connection, and
//! the [`Broker`] and [`Presence`] contracts every engine (memory, Redis,
//! NATS) implements, and the seam an engine plugs in by ([`engine`]).

#![warn(missing_docs)]

pub mod access;
pub mod broker;
pub mod cluster;
pub mod duration;
pub mod engine;
pub mod hooks;
mod identity;
pub mod namespace;
pub mod presence;
pub mod priority;
mod room;
pub mod trace;
mod verify;

pub use access::{AccessDecision, AccessProxy, ProxyFailure};
pub use broker::{
    Broker, BrokerError, BrokerStats, EncodedFrames, HistoryPage, HistoryPolicy, HistoryTrims,
    Publication, PublicationSink, PublishOutcome, PublishRequest,
};
pub use cluster::{
    Cluster, ClusterAdmission, ClusterNode, ConnectionRecord, ConnectionRef, DirectMessage,
    DirectTarget, MemberRecord, NodeFigures, PerUserPolicy,
};
pub use engine::{
    Engine, EngineCapabilities, EngineContext, EngineError, EngineFactory, EngineSettings,
    EngineShutdown, Engines, NoPublishTarget, PublishRefusal, PublishTarget, SettingError,
};
pub use hooks::{HookEvent, HookKind, HookSet, Outbox, OutboxEntry, SentMessage, UnknownHookKind};
pub use identity::Identity;
pub use namespace::{NamespaceConfig, Namespaces, Rule, RuleError};
pub use presence::{LocalPresence, Presence, PresenceChange, PresenceSink};
pub use priority::{EventPolicy, Overflow, PolicyCell};
pub use room::{
    RoomError, RoomKey, RoomName, Tenant, TenantError, MAX_ROOM_NAME_BYTES, MAX_TENANT_BYTES,
};
pub use trace::TraceContext;
pub use verify::{CredentialContext, TokenVerifier, Verified, VerifyError};
