//! The client frame parser (`herald_protocol::parse_client_frame`) on
//! arbitrary text, as a WebSocket text message delivers it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = herald_protocol::parse_client_frame(text);
    }
});
