//! The engine's broker command kinds, timed into
//! `herald_broker_command_duration_seconds{engine="nats",command}` and
//! counted into `herald_broker_command_errors_total` (a fixed set,
//! documented in operations.md section 7).

use herald_engine_kit::telemetry::{register_commands, Command};

/// A JetStream publish of a room event (one attempt: send and ack).
pub(crate) static PUBLISH: Command = Command::new("nats", "publish");
/// A direct get of a room's last message (its position).
pub(crate) static POSITION: Command = Command::new("nats", "position");
/// A direct get of a stored room message (history, gap fill, duplicates).
pub(crate) static HISTORY: Command = Command::new("nats", "history");
/// Subscribing to a room's delivery subject, with its round trip.
pub(crate) static SUBSCRIBE: Command = Command::new("nats", "subscribe");
/// A presence change published on a room's delivery subject.
pub(crate) static PRESENCE_PUBLISH: Command = Command::new("nats", "presence_publish");
/// One heartbeat: the node's key renewed, locks checked, sweeps.
pub(crate) static HEARTBEAT: Command = Command::new("nats", "heartbeat");
/// Listing registry keys (nodes, connections, presence) from a bucket.
pub(crate) static REGISTRY_LIST: Command = Command::new("nats", "registry_list");
/// Deleting a registry key.
pub(crate) static REGISTRY_PURGE: Command = Command::new("nats", "registry_purge");
/// Appending webhook events to the outbox stream.
pub(crate) static OUTBOX_APPEND: Command = Command::new("nats", "outbox_append");
/// Moving the outbox cursor and purging delivered events.
pub(crate) static OUTBOX_ACK: Command = Command::new("nats", "outbox_ack");

/// Registers every command's error counter at zero.
pub(crate) fn register() {
    register_commands(&[
        &PUBLISH,
        &POSITION,
        &HISTORY,
        &SUBSCRIBE,
        &PRESENCE_PUBLISH,
        &HEARTBEAT,
        &REGISTRY_LIST,
        &REGISTRY_PURGE,
        &OUTBOX_APPEND,
        &OUTBOX_ACK,
    ]);
}
