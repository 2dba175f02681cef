//! Test harness shared by the integration tests: a real node (in-process on
//! a port-0 listener by default, or a `herald serve` process), a WebSocket
//! client wrapper with bounded waits, a raw WebSocket socket for misbehaving
//! clients, and token minting.
//!
//! Everything here waits with a deadline; nothing loops forever.
//!
//! One file per part: `node` (a node and its HTTP API), `inproc` (running
//! one inside the test process),
//! `ws` (the WebSocket client), `raw` (the hand-made socket), `tokens`
//! (signing), `sse` (the SSE client, used as `common::sse::...`), `webhooks` (the
//! cluster webhook scenarios) and `cdp`
//! (headless Chromium). The first four are re-exported here, so tests
//! `use common::*`.

// Each test binary uses only part of the harness; this inner attribute
// covers every submodule below.
#![allow(dead_code)]

mod backend;
pub mod cdp;
pub mod cluster;
mod inproc;
mod node;
mod process;
mod raw;
pub mod sse;
mod tokens;
pub mod webhooks;
mod ws;

// A test binary that uses nothing from one of these would report its glob
// re-export as unused.
#[allow(unused_imports)]
pub use backend::Backend;
#[allow(unused_imports)]
pub use node::*;
#[allow(unused_imports)]
pub use process::*;
#[allow(unused_imports)]
pub use raw::*;
#[allow(unused_imports)]
pub use tokens::*;
#[allow(unused_imports)]
pub use ws::*;

use std::fs;
use std::io::Read;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// HS256 secret every test node is configured with (unless overridden).
pub const SECRET: &str = "integration-test-secret-0123456789abcdef";
/// API key with scope `admin` (the server wants keys of 16+ characters).
pub const ADMIN_KEY: &str = "test-admin-key-0000000000";
/// API key with scope `publish` only.
pub const PUBLISH_KEY: &str = "test-publish-key-000000000";

/// Wait for an expected frame.
pub const FRAME_WAIT: Duration = Duration::from_secs(10);
/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}
/// Reads a file fully (for logs).
pub fn read_file(path: &std::path::Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// Percent-encodes a room name for a URL path.
pub fn enc(room: &str) -> String {
    room.replace(':', "%3A")
        .replace('/', "%2F")
        .replace('@', "%40")
}
