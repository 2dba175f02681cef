//! A publication's frame is encoded once per codec and shared.

use bytes::Bytes;
use herald_core::{Publication, RoomKey, RoomName, Tenant};
use herald_protocol::{
    ClientCodec, ClientFrame, DirectFrame, FrameError, PublicationFrame, ServerFrame,
    StreamPosition, HERALD_JSON,
};
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A codec in another slot that counts its encodings.
#[derive(Debug)]
struct Counting {
    slot: usize,
    calls: AtomicUsize,
}

impl ClientCodec for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }
    fn slot(&self) -> usize {
        self.slot
    }
    fn binary(&self) -> bool {
        true
    }
    fn decode(&self, message: &[u8]) -> Result<ClientFrame, FrameError> {
        HERALD_JSON.decode(message)
    }
    fn encode(&self, frame: &ServerFrame) -> Bytes {
        HERALD_JSON.encode(frame)
    }
    fn encode_publication(&self, frame: &PublicationFrame<'_>) -> Bytes {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Bytes::from(format!("counted:{}", frame.offset))
    }
    fn encode_direct(&self, frame: &DirectFrame<'_>) -> Bytes {
        HERALD_JSON.encode_direct(frame)
    }
}

fn publication() -> Publication {
    Publication::new(
        RoomKey::new(Tenant::default(), RoomName::parse("r").expect("room")),
        StreamPosition::new("e", 3),
        "x",
        RawValue::from_string("1".into()).expect("raw"),
        1,
        "id",
    )
}

#[test]
fn each_codec_encodes_a_publication_once_and_recipients_share_the_bytes() {
    let p = publication();
    let a = p.encoded(&HERALD_JSON);
    let b = p.encode();
    // The same buffer, not an equal copy.
    assert_eq!(a.as_ptr(), b.as_ptr());
    let v: serde_json::Value = serde_json::from_slice(&a).expect("json");
    assert_eq!(v["offset"], 3);

    let other = Counting {
        slot: 1,
        calls: AtomicUsize::new(0),
    };
    for _ in 0..3 {
        assert_eq!(&p.encoded(&other)[..], b"counted:3");
    }
    assert_eq!(other.calls.load(Ordering::Relaxed), 1);
    // The JSON frame was not replaced by the other codec's.
    assert_eq!(p.encoded(&HERALD_JSON).as_ptr(), a.as_ptr());

    // A codec past the cache still works, encoding every time.
    let uncached = Counting {
        slot: herald_protocol::CODEC_SLOTS,
        calls: AtomicUsize::new(0),
    };
    p.encoded(&uncached);
    p.encoded(&uncached);
    assert_eq!(uncached.calls.load(Ordering::Relaxed), 2);
}
