//! The NATS engine's factory (`broker.kind = "nats"`), filled in by the
//! broker work of issue #15.

/// Builds the NATS engine.
#[derive(Debug, Clone, Copy, Default)]
pub struct NatsEngine;

/// Presence on NATS.
pub struct NatsPresence;
