//! The NATS broker engine: rooms' streams on JetStream (filled in by the
//! broker work of issue #15).

/// Rooms' streams on JetStream.
pub struct NatsBroker;
