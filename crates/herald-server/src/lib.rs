//! The Herald server: configuration, the HTTP surface (WebSocket upgrade,
//! HTTP API, health, metrics), and the node's lifecycle from start to a
//! graceful drain. Only this crate knows the HTTP framework.

#![warn(missing_docs)]

mod api;
mod app;
mod audit;
mod auth;
pub mod config;
mod credential;
mod dashboard;
pub mod engines;
mod error;
mod extract;
#[doc(hidden)]
pub mod fuzzing;
mod guard;
mod http;
mod msgpack_body;
mod ops;
mod origin;
mod publish_target;
mod publish_trace;
mod request_id;
mod resume;
mod serve;
mod socketio;
mod sse;
mod ws;

pub use app::AppState;
pub use auth::{build_authenticator, dev_mode, no_token_key, token_minter};
pub use config::{Config, ConfigError};
pub use request_id::RequestId;
pub use serve::{serve, serve_on, serve_on_with, ServeError};
