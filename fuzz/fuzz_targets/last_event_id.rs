//! Request header parsers on arbitrary header text: SSE `Last-Event-ID`
//! (what parses must round-trip through the encoder) and a WebSocket
//! upgrade's `Sec-WebSocket-Extensions` (permessage-deflate offers).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald_server::fuzzing::deflate_offer(data);
    if let Ok(text) = std::str::from_utf8(data) {
        herald_server::fuzzing::last_event_id(text);
    }
});
