//! SSE `Last-Event-ID` parsing on arbitrary header text; what parses must
//! round-trip through the encoder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        herald_server::fuzzing::last_event_id(text);
    }
});
