//! The shedding path on a queue alone: what it removes, keeps and notes.

use super::super::{Outbound, PushResult, SendQueue};
use herald_core::{EventPolicy, Overflow, Publication, RoomKey, RoomName, Tenant};
use herald_protocol::{StreamPosition, HERALD_JSON};
use serde_json::value::RawValue;
use std::sync::Arc;

fn event(
    room: &str,
    offset: u64,
    overflow: Overflow,
    critical: bool,
    key: Option<&str>,
) -> Outbound {
    let p = Publication {
        critical,
        conflation_key: key.map(str::to_owned),
        ..Publication::new(
            RoomKey::new(
                Tenant::default_tenant(),
                RoomName::parse(room).expect("room"),
            ),
            StreamPosition::new("e", offset),
            "tick",
            RawValue::from_string(format!("{offset}")).expect("raw"),
            0,
            format!("id{offset}"),
        )
    };
    p.policy.set(EventPolicy { overflow, critical });
    let p = Arc::new(p);
    Outbound::Frame {
        bytes: p.encode(),
        publication: Some(p),
        change: None,
    }
}

fn drop_ev(room: &str, offset: u64) -> Outbound {
    event(room, offset, Overflow::Drop, false, None)
}

fn critical(room: &str, offset: u64) -> Outbound {
    event(room, offset, Overflow::Drop, true, None)
}

/// What is queued, as `room@offset` for events and `notice room@offset`.
fn contents(q: &SendQueue) -> Vec<String> {
    q.state
        .lock()
        .items
        .iter()
        .map(|item| match item {
            Outbound::Frame {
                publication: Some(p),
                ..
            } => format!("{}@{}", p.room.name.as_str(), p.position.offset),
            Outbound::Frame { bytes, .. } => {
                let v: serde_json::Value = serde_json::from_slice(bytes).expect("json");
                if v["type"] != "events_dropped" {
                    return v["type"].as_str().unwrap_or("?").to_owned();
                }
                let r = &v["rooms"][0];
                format!(
                    "notice {}@{}",
                    r["room"].as_str().unwrap_or("?"),
                    r["offset"]
                )
            }
            other => format!("{other:?}"),
        })
        .collect()
}

fn full(q: &SendQueue, items: impl IntoIterator<Item = Outbound>) {
    for item in items {
        assert_eq!(q.enqueue(item), PushResult::Queued);
    }
}

fn bytes_match(q: &SendQueue) {
    let s = q.state.lock();
    let sum: usize = s.items.iter().map(Outbound::len).sum();
    assert_eq!(s.bytes, sum, "byte count follows the items");
}

#[test]
fn drop_removes_oldest_non_critical_and_notes_the_gap_once() {
    let q = SendQueue::new(4, 1 << 20);
    full(&q, (1..=4).map(|o| drop_ev("r", o)));
    assert_eq!(q.enqueue(drop_ev("r", 5)), PushResult::Overflow);
    assert_eq!(
        q.enqueue_shedding(drop_ev("r", 5), &HERALD_JSON),
        PushResult::Queued
    );
    // The notice takes 1's place (notices pass the frame bound, queued
    // ones included: each later push drops one event, not two).
    assert_eq!(contents(&q), ["notice r@0", "r@2", "r@3", "r@4", "r@5"]);
    bytes_match(&q);
    // Later drops of the same room are covered by the queued notice.
    assert_eq!(
        q.enqueue_shedding(drop_ev("r", 6), &HERALD_JSON),
        PushResult::Queued
    );
    assert_eq!(contents(&q), ["notice r@0", "r@3", "r@4", "r@5", "r@6"]);
    bytes_match(&q);
}

#[test]
fn critical_events_and_control_frames_stay() {
    let q = SendQueue::new(5, 1 << 20);
    full(
        &q,
        [
            critical("r", 1),
            Outbound::control(bytes::Bytes::from_static(br#"{"type":"pong"}"#)),
            drop_ev("r", 2),
            critical("r", 3),
            drop_ev("s", 7),
        ],
    );
    assert_eq!(
        q.enqueue_shedding(critical("r", 4), &HERALD_JSON),
        PushResult::Queued
    );
    assert_eq!(
        contents(&q),
        ["r@1", "pong", "notice r@1", "r@3", "s@7", "r@4"]
    );
    bytes_match(&q);
    // Only critical and control frames left: a cut, as with disconnect.
    let q = SendQueue::new(2, 1 << 20);
    full(&q, [critical("r", 1), critical("r", 2)]);
    assert_eq!(
        q.enqueue_shedding(drop_ev("r", 3), &HERALD_JSON),
        PushResult::Overflow
    );
    assert_eq!(contents(&q), ["r@1", "r@2"], "nothing changed");
}

#[test]
fn disconnect_namespace_events_are_never_shed() {
    let q = SendQueue::new(2, 1 << 20);
    full(
        &q,
        [
            event("a", 1, Overflow::Disconnect, false, None),
            event("a", 2, Overflow::Disconnect, false, Some("k")),
        ],
    );
    assert_eq!(
        q.enqueue_shedding(drop_ev("r", 1), &HERALD_JSON),
        PushResult::Overflow
    );
}

#[test]
fn a_partly_written_head_stays() {
    let q = SendQueue::new(2, 1 << 20);
    full(&q, [drop_ev("r", 1), critical("r", 2)]);
    q.state.lock().offset = 3;
    assert_eq!(
        q.enqueue_shedding(drop_ev("r", 3), &HERALD_JSON),
        PushResult::Overflow
    );
    let q = SendQueue::new(3, 1 << 20);
    full(&q, [drop_ev("r", 1), drop_ev("r", 2), drop_ev("r", 3)]);
    q.state.lock().offset = 3;
    assert_eq!(
        q.enqueue_shedding(drop_ev("r", 4), &HERALD_JSON),
        PushResult::Queued
    );
    assert_eq!(contents(&q), ["r@1", "notice r@1", "r@3", "r@4"]);
}

#[test]
fn conflate_keeps_the_newest_per_room_and_key_without_notice() {
    let tick = |room: &str, o: u64, key: &str| event(room, o, Overflow::Conflate, false, Some(key));
    let q = SendQueue::new(5, 1 << 20);
    full(
        &q,
        [
            tick("r", 1, "a"),
            tick("r", 2, "b"),
            tick("r", 3, "a"),
            tick("s", 4, "a"),
            event("r", 5, Overflow::Conflate, true, Some("b")),
        ],
    );
    assert_eq!(
        q.enqueue_shedding(tick("r", 6, "a"), &HERALD_JSON),
        PushResult::Queued
    );
    // r/a 1 and 3 superseded by 6, r/b 2 by the critical 5; s/a is another room.
    assert_eq!(contents(&q), ["s@4", "r@5", "r@6"]);
    bytes_match(&q);
}

#[test]
fn conflate_falls_back_to_dropping() {
    let q = SendQueue::new(3, 1 << 20);
    full(
        &q,
        [
            event("r", 1, Overflow::Conflate, false, None),
            event("r", 2, Overflow::Conflate, false, Some("a")),
            event("r", 3, Overflow::Conflate, false, Some("b")),
        ],
    );
    let next = event("r", 4, Overflow::Conflate, false, Some("c"));
    assert_eq!(q.enqueue_shedding(next, &HERALD_JSON), PushResult::Queued);
    assert_eq!(contents(&q), ["notice r@0", "r@2", "r@3", "r@4"]);
}

#[test]
fn byte_bound_counts_the_notices() {
    // Room for two events by bytes; notices take bytes too.
    let one = drop_ev("r", 1).len();
    let q = SendQueue::new(100, 2 * one + 10);
    full(&q, [drop_ev("r", 1), drop_ev("r", 2)]);
    assert_eq!(
        q.enqueue_shedding(drop_ev("r", 3), &HERALD_JSON),
        PushResult::Queued
    );
    bytes_match(&q);
    let s = q.state.lock();
    assert!(s.bytes <= 2 * one + 10, "{} bytes queued", s.bytes);
}

#[test]
fn a_pong_makes_room_like_a_reply() {
    // A client's ping answered while its queue is full of droppable
    // events: the pong (a whole WebSocket frame) sheds, it does not cut.
    let q = SendQueue::new(2, 1 << 20);
    full(&q, [drop_ev("r", 1), drop_ev("r", 2)]);
    let pong = || Outbound::Raw(bytes::Bytes::from_static(&[0x8a, 0x00]));
    assert_eq!(q.enqueue(pong()), PushResult::Overflow);
    assert_eq!(q.enqueue_shedding(pong(), &HERALD_JSON), PushResult::Queued);
    let items = contents(&q);
    assert_eq!(items[..2], ["notice r@0", "r@2"]);
    assert!(items[2].starts_with("Raw"), "{items:?}");
    bytes_match(&q);
}

#[test]
fn queued_notices_do_not_count_against_the_frame_bound() {
    // Seven rooms through a bound of 3: each push drops one event and
    // queues one notice; the notices never add up to a cut.
    let q = SendQueue::new(3, 1 << 20);
    full(&q, [drop_ev("a", 1), drop_ev("b", 1), drop_ev("c", 1)]);
    for room in ["d", "e", "f", "g"] {
        let r = q.enqueue_shedding(drop_ev(room, 1), &HERALD_JSON);
        assert_eq!(r, PushResult::Queued, "push {room}: {:?}", contents(&q));
    }
    assert_eq!(
        contents(&q),
        [
            "notice a@0",
            "notice b@0",
            "notice c@0",
            "notice d@0",
            "e@1",
            "f@1",
            "g@1"
        ]
    );
    bytes_match(&q);
    // An event of a `disconnect` namespace still fits beside the notices
    // while the events themselves are under the bound...
    let q = SendQueue::new(2, 1 << 20);
    full(&q, [drop_ev("a", 1), drop_ev("a", 2)]);
    assert_eq!(
        q.enqueue_shedding(drop_ev("a", 3), &HERALD_JSON),
        PushResult::Queued
    );
    assert_eq!(contents(&q), ["notice a@0", "a@2", "a@3"]);
    let disconnect = || event("z", 1, Overflow::Disconnect, false, None);
    assert_eq!(
        q.enqueue_shedding(disconnect(), &HERALD_JSON),
        PushResult::Overflow,
        "2 events queued: full"
    );
    // ...and sheds nothing for itself once they are at it.
    assert_eq!(contents(&q), ["notice a@0", "a@2", "a@3"]);
}

#[test]
fn a_room_joined_ends_what_an_earlier_notice_covers() {
    // The client re-joins after a first notice; a later shedding drops an
    // event before that rejoin's `room_joined` (the earlier notice covers
    // it) and one after it, which needs a notice of its own: the client
    // takes notices before the reply as part of the stream it is leaving.
    let joined = Outbound::changing(
        bytes::Bytes::from_static(br#"{"type":"room_joined","room":"r"}"#),
        super::super::PositionChange::Joined {
            room: RoomName::parse("r").expect("room"),
            position: StreamPosition::new("e", 10),
            recovered: Some(true),
        },
    );
    let q = SendQueue::new(3, 1 << 20);
    full(&q, [drop_ev("r", 8), joined, drop_ev("r", 11)]);
    assert_eq!(
        q.enqueue_shedding(drop_ev("r", 12), &HERALD_JSON),
        PushResult::Queued
    );
    assert_eq!(contents(&q), ["notice r@7", "room_joined", "r@11", "r@12"]);
    assert_eq!(
        q.enqueue_shedding(drop_ev("r", 13), &HERALD_JSON),
        PushResult::Queued
    );
    assert_eq!(
        contents(&q),
        ["notice r@7", "room_joined", "notice r@10", "r@12", "r@13"]
    );
    // Later drops after the same `room_joined` are covered by its notice.
    assert_eq!(
        q.enqueue_shedding(drop_ev("r", 14), &HERALD_JSON),
        PushResult::Queued
    );
    assert_eq!(
        contents(&q),
        ["notice r@7", "room_joined", "notice r@10", "r@13", "r@14"]
    );
    bytes_match(&q);
}
