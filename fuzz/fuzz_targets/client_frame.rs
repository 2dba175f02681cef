//! The client frame parsers on arbitrary bytes: Herald JSON
//! (`herald_protocol::parse_client_frame`, as a text message delivers it)
//! and every codec's `decode`, MessagePack's included (a binary message).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald_server::fuzzing::client_message(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = herald_protocol::parse_client_frame(text);
    }
});
