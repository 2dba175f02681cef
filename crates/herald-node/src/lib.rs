//! A Herald node: its local connections, their sessions, room membership and
//! fan-out, and the limits that protect it. Transports (WebSocket, SSE) live
//! in the server crate and talk to a [`Session`] and a [`Connection`]'s send
//! queue, never the other way around.

#![warn(missing_docs)]

mod access;
mod admission;
mod cluster;
mod conn;
mod direct;
mod engine;
mod error;
mod filter;
mod flush;
mod hooks;
mod housekeeping;
mod limits;
mod members;
pub mod metrics;
mod node;
mod preauth;
mod queue;
mod rate;
mod replay;
mod rooms;
mod rpc;
mod session;
mod session_auth;
mod session_presence;
mod slots;
mod trace;
mod transport;

pub use admission::Admission;
pub use conn::{disconnect_frame, Connection, ConnectionInfo};
pub use engine::WeakNode;
pub use error::{NodeError, BROKER_INTERNAL_MESSAGE, BROKER_UNAVAILABLE_MESSAGE};
pub use filter::EventFilter;
pub use limits::{Limits, PerUserPolicy};
pub use node::{
    BrokerSummary, Node, NodeSettings, NodeStats, NodeSummary, OpenOptions, PublishInput,
};
pub use preauth::{PreAuth, Refusal, Step, MAX_FRAMES_BEFORE_AUTH};
pub use queue::{Drain, Duty, Outbound, PositionChange, PushResult, SendQueue, SocketWriter};
pub use rate::TokenBucket;
pub use replay::{ReplayPage, ReplayRead};
pub use rpc::MAX_RPC_IN_FLIGHT;
pub use session::Session;
pub use slots::{PendingSlot, SlotRefusal, SocketSlot};
pub use transport::{Delivery, Transport};
