//! What every remote engine (Redis, NATS) shares, so one copy serves both:
//! counted room subscriptions with in-order delivery, gap fill and
//! catch-up ([`rooms`], [`ordered`]), the page a history read returns
//! ([`history`]), and the cluster registry's metric names ([`telemetry`])
//! and commands between nodes ([`control`]), and the backoff between
//! failed attempts of a reconnecting loop ([`backoff`]).
//!
//! It knows no backend: an engine supplies reading history and renewing a
//! subscription through [`ordered::Backend`]. Dependencies point one way:
//! engines -> this kit -> herald-core.

pub mod backoff;
pub mod control;
pub mod history;
pub mod ordered;
pub mod rooms;
pub mod telemetry;
