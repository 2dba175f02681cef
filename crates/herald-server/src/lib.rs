//! The Herald server: configuration, the HTTP surface (WebSocket upgrade,
//! HTTP API, health, metrics), and the node's lifecycle from start to a
//! graceful drain. Only this crate knows the HTTP framework.

#![warn(missing_docs)]

mod api;
mod app;
mod auth;
mod cluster;
pub mod config;
mod dashboard;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod ops;
mod serve;
mod sse;
mod ws;

pub use app::AppState;
pub use auth::{build_authenticator, dev_mode};
pub use config::{Config, ConfigError};
pub use serve::{serve, ServeError};
