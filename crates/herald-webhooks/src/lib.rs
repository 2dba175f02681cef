//! Herald's webhooks: the dispatcher that takes events from the engine's
//! outbox ([`herald_core::Outbox`]) and POSTs them as signed JSON batches
//! `{"events": [...]}` (see [`herald_core::hooks`] for the events, and
//! docs/protocol.md "Webhooks" for the wire).

#![warn(missing_docs)]

mod backoff;
mod dispatch;
pub mod metrics;
mod settings;
pub mod sign;

pub use backoff::Backoff;
pub use dispatch::{Dispatcher, WebhookError};
pub use settings::{WebhookSettings, MAX_BATCH_SIZE, RESERVED_HEADERS};
