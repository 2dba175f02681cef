//! Socket.IO 5 packets, CONNECT payloads and the Socket.IO codec's decode
//! from arbitrary bytes: nothing panics, and a packet that parses prints
//! back to text that parses to the same packet.
#![no_main]

use herald_protocol::ClientCodec;
use herald_socketio::codec::SOCKET_IO;
use herald_socketio::connect::ConnectAuth;
use herald_socketio::packet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = SOCKET_IO.decode(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = packet::parse(text) {
        let printed = p.to_string();
        assert_eq!(packet::parse(&printed).as_ref(), Ok(&p), "{printed}");
        let _ = ConnectAuth::parse(p.data);
    }
});
