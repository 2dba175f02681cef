//! A publication as a JetStream message: the body is the publisher's data
//! verbatim; the position is in `Herald-Offset` and `Herald-Epoch`, the
//! room's cumulative history bytes in `Herald-Bytes`; the rest is one
//! compact JSON header, `Herald-Meta` ([`Meta`]), serialized once per
//! publish (a retry only rewrites the three per-attempt headers).
//! The room is the subject's last token ([`crate::names::room_token`]).

use async_nats::HeaderMap;
use herald_core::{Publication, PublishRequest, RoomKey, RoomName, Tenant, TraceContext};
use herald_protocol::{Sender, StreamPosition};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The room's offset of the message.
pub(super) const OFFSET: &str = "Herald-Offset";
/// The room's epoch.
pub(super) const EPOCH: &str = "Herald-Epoch";
/// The room's history bytes up to and including this event, summed since
/// the room's first event (reads compute byte budgets from it).
pub(super) const BYTES: &str = "Herald-Bytes";
/// Everything else ([`Meta`]).
pub(super) const META: &str = "Herald-Meta";
/// The publishing node's `broker.publish` span, as a W3C `traceparent`
/// (traced publications only; the standard header name, so NATS tooling
/// that propagates trace context recognises it).
pub(super) const TRACEPARENT: &str = "traceparent";
/// Set by the server on stored, republished and directly read messages.
const SEQUENCE: &str = "Nats-Sequence";

/// The publication's fields besides its room, position and data, plus the
/// room's history policy as of this message (reads apply the last one).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Meta {
    /// Event name.
    pub n: String,
    /// Accepted at, ms since the Unix epoch.
    pub ts: u64,
    /// Event id.
    pub id: String,
    /// Sender, for `message` frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f: Option<Sender>,
    /// A connection that must not receive it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// Publishing node.
    pub nd: String,
    /// Accepted at, µs since the Unix epoch (the latency histogram).
    pub tu: u64,
    /// The room's `history.size` when published.
    pub k: usize,
    /// When this event leaves history, ms since the Unix epoch (publish
    /// time + `history.ttl`, by the publishing node's clock).
    pub ex: u64,
    /// The room's `history.max_bytes` when published (0: none).
    pub b: usize,
    /// Critical under backpressure (written only when true; older
    /// messages read as not critical).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cr: bool,
    /// Conflation key (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ck: Option<String>,
}

/// What the node needs of a stored or delivered message.
#[derive(Debug)]
pub(super) struct Stored {
    /// Its stream sequence.
    pub seq: u64,
    /// The publication.
    pub publication: Publication,
    /// Its metadata (policy).
    pub meta: Meta,
    /// The room's cumulative history bytes through it (`Herald-Bytes`).
    pub cb: u64,
    /// Its bytes, as counted against a byte budget.
    pub bytes: u64,
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum MessageError {
    /// A header is missing or malformed.
    #[error("header {0} missing or malformed")]
    Header(&'static str),
    /// `Herald-Meta` is not the JSON expected.
    #[error("Herald-Meta: {0}")]
    Meta(#[from] serde_json::Error),
    /// The data is not JSON.
    #[error("data: {0}")]
    Data(serde_json::Error),
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A fresh random epoch, as the other engines make them.
pub(super) fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The metadata of a new publication.
pub(super) fn meta_of(request: &PublishRequest, node_id: &str) -> Meta {
    let ts = now_ms();
    let ttl = u64::try_from(request.history.ttl.as_millis()).unwrap_or(u64::MAX);
    // No history at all (size or ttl 0) is an event expired at once.
    let keep = if request.history.ttl.is_zero() {
        0
    } else {
        request.history.size
    };
    Meta {
        n: request.event.clone(),
        ts,
        id: format!("{:032x}", rand::random::<u128>()),
        f: request.from.clone(),
        x: request.exclude_connection.clone(),
        nd: node_id.to_owned(),
        tu: now_us(),
        k: keep,
        ex: ts.saturating_add(ttl),
        b: request.history.max_bytes,
        cr: request.critical,
        ck: request.conflation_key.clone(),
    }
}

/// The bytes an event counts against a byte budget: its data and
/// metadata.
pub(super) fn event_bytes(data: &RawValue, meta_json: &str) -> u64 {
    (data.get().len() + meta_json.len()) as u64
}

/// The headers of one publish attempt: its position and the room's
/// cumulative bytes through it, the metadata, and the trace context when
/// the publish is traced.
pub(super) fn headers(
    position: &StreamPosition,
    cb: u64,
    meta_json: &str,
    trace: Option<&TraceContext>,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(OFFSET, position.offset.to_string().as_str());
    headers.insert(EPOCH, position.epoch.as_str());
    headers.insert(BYTES, cb.to_string().as_str());
    headers.insert(META, meta_json);
    if let Some(trace) = trace {
        headers.insert(TRACEPARENT, trace.to_traceparent().as_str());
    }
    headers
}

/// The room a room or delivery subject names (its last token).
pub(super) fn room_of_subject(subject: &str) -> Option<RoomKey> {
    let token = subject.rsplit('.').next()?;
    let (tenant, name) = crate::names::room_of_token(token)?;
    let name = RoomName::parse(&name).ok()?;
    Some(RoomKey::new(Tenant::from_option(Some(&tenant)), name))
}

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, MessageError> {
    headers
        .get(name)
        .map(|v| v.as_str())
        .ok_or(MessageError::Header(name))
}

/// When a publication accepted at `accepted_us` (µs since the Unix epoch)
/// was accepted, on this process's monotonic clock.
fn local_instant(accepted_us: u64) -> Option<std::time::Instant> {
    let age = now_us().saturating_sub(accepted_us);
    std::time::Instant::now().checked_sub(Duration::from_micros(age))
}

/// Decodes a stored or republished message of `room` (`seq` from the
/// message's `Nats-Sequence` header when `None`).
pub(super) fn decode(
    room: RoomKey,
    seq: Option<u64>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Stored, MessageError> {
    let seq = match seq {
        Some(seq) => seq,
        None => header(headers, SEQUENCE)?
            .parse()
            .map_err(|_| MessageError::Header(SEQUENCE))?,
    };
    let offset: u64 = header(headers, OFFSET)?
        .parse()
        .map_err(|_| MessageError::Header(OFFSET))?;
    let epoch = header(headers, EPOCH)?.to_owned();
    let cb: u64 = header(headers, BYTES)?
        .parse()
        .map_err(|_| MessageError::Header(BYTES))?;
    let meta_json = header(headers, META)?;
    let meta: Meta = serde_json::from_str(meta_json)?;
    let text = std::str::from_utf8(body).map_err(|_| MessageError::Header("body (UTF-8)"))?;
    let data = RawValue::from_string(text.to_owned()).map_err(MessageError::Data)?;
    let bytes = event_bytes(&data, meta_json);
    let publication = Publication {
        room,
        position: StreamPosition::new(epoch, offset),
        event: meta.n.clone(),
        data,
        ts: meta.ts,
        event_id: meta.id.clone(),
        from: meta.f.clone(),
        exclude_connection: meta.x.clone(),
        accepted_at: local_instant(meta.tu),
        encoded: Default::default(),
        // Absent on untraced publications and from older nodes; a
        // malformed one only loses the trace.
        trace: headers
            .get(TRACEPARENT)
            .and_then(|v| TraceContext::parse_traceparent(v.as_str())),
        critical: meta.cr,
        conflation_key: meta.ck.clone(),
        policy: Default::default(),
    };
    Ok(Stored {
        seq,
        publication,
        meta,
        cb,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::HistoryPolicy;

    #[test]
    fn a_publication_round_trips_with_its_data_verbatim() {
        let room = RoomKey::new(
            Tenant::from_option(Some("acme")),
            RoomName::parse("project:7").expect("room"),
        );
        let request = PublishRequest {
            room: room.clone(),
            event: "up\r\ndated".into(),
            data: RawValue::from_string(r#"{"x": 1.50, "y":"é"}"#.into()).expect("raw"),
            from: Some(Sender {
                user_id: "u".into(),
                connection_id: "c".into(),
            }),
            exclude_connection: Some("c2".into()),
            idempotency_key: None,
            history: HistoryPolicy {
                size: 5,
                ttl: Duration::from_secs(60),
                max_bytes: 100,
            },
            trace: TraceContext::parse_traceparent(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            critical: true,
            conflation_key: Some("run-1".into()),
        };
        let meta = meta_of(&request, "n1");
        let json = serde_json::to_string(&meta).expect("json");
        let h = headers(
            &StreamPosition::new("00ff", 3),
            42,
            &json,
            request.trace.as_ref(),
        );
        let body = request.data.get().as_bytes();
        let stored = decode(room.clone(), Some(9), &h, body).expect("decodes");
        assert_eq!(stored.seq, 9);
        let p = stored.publication;
        assert_eq!(p.position, StreamPosition::new("00ff", 3));
        assert_eq!(p.data.get(), r#"{"x": 1.50, "y":"é"}"#);
        assert_eq!(
            p.event, "up\r\ndated",
            "escaped in JSON, never in the header"
        );
        assert_eq!(p.exclude_connection.as_deref(), Some("c2"));
        assert_eq!(p.trace, request.trace, "the trace context travels along");
        assert!(p.critical, "critical travels along");
        assert_eq!(p.conflation_key.as_deref(), Some("run-1"));
        assert_eq!(stored.meta.k, 5);
        assert_eq!(stored.cb, 42);
        let subject = crate::names::Names::new("h").room_subject(&room);
        assert_eq!(room_of_subject(&subject), Some(room));
    }
}
