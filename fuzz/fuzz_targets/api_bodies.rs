//! The HTTP API's body parsers (publish, broadcast, tokens, direct
//! messages) on the same arbitrary bytes, as JSON and as an
//! `application/msgpack` body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    herald_server::fuzzing::publish_body(data);
    herald_server::fuzzing::broadcast_body(data);
    herald_server::fuzzing::token_body(data);
    herald_server::fuzzing::direct_body(data);
    herald_server::fuzzing::msgpack_body(data);
});
