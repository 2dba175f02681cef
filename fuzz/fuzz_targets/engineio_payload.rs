//! Engine.IO 4 polling payloads (POST bodies) and WebSocket text packets
//! from arbitrary bytes; what parses must round-trip through the encoder.
#![no_main]

use herald_socketio::engineio::{decode_packet, decode_payload, encode_payload};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = bytes::Bytes::copy_from_slice(data);
    if let Ok(packets) = decode_payload(bytes.clone()) {
        let again = decode_payload(encode_payload(&packets)).expect("an encoded payload parses");
        assert_eq!(again, packets);
    }
    let _ = decode_packet(bytes);
});
