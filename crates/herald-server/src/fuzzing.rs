//! Entry points for the fuzz targets in `fuzz/` (a crate outside the
//! workspace). Thin wrappers over crate-private parsers, so the parsers
//! themselves stay private; each one checks the invariants a fuzzer cannot
//! see from outside and panics when one breaks, which the fuzzer reports
//! as a crash. Not part of the server's API.

use crate::api::{self, BroadcastBody, TokenBody};
use crate::resume::last_event_id;
use crate::ws::frames::{FrameReader, Incoming, ReadError};
use herald_auth::{MintRequest, TokenMinter};
use std::time::{Duration, Instant};

/// Longest masked client frame header: 2 bytes, 8 of length, 4 of mask.
const MAX_CLIENT_HEADER: usize = 14;

/// Reads `bytes` as client WebSocket frames twice, once in one piece and
/// once split at `splits` (offsets, taken modulo the length, as a socket
/// may deliver them), with a size limit of `max_message`. Panics when the
/// two readings differ or when the reader buffers more than one frame's
/// worth of bytes.
pub fn ws_frames(bytes: &[u8], splits: &[usize], max_message: usize) {
    let whole = read_frames(bytes, &[], max_message);
    let split = read_frames(bytes, splits, max_message);
    assert_eq!(whole, split, "split reading differs from whole reading");
}

/// The messages read and the error that ended reading, if any.
type Reading = (Vec<Incoming>, Option<ReadError>);

fn read_frames(bytes: &[u8], splits: &[usize], max_message: usize) -> Reading {
    let mut cuts: Vec<usize> = splits
        .iter()
        .map(|s| s % (bytes.len() + 1))
        .chain([bytes.len()])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut reader = FrameReader::new(max_message);
    let mut out = Vec::new();
    let mut start = 0;
    for cut in cuts {
        if let Err(e) = reader.feed(&bytes[start..cut], &mut out) {
            return (out, Some(e));
        }
        start = cut;
        // An incomplete frame is all a reader keeps: at most its header
        // and `max_message` bytes of payload.
        assert!(
            reader.buffered() <= MAX_CLIENT_HEADER + max_message,
            "reader buffers {} bytes with max_message {max_message}",
            reader.buffered()
        );
    }
    (out, None)
}

/// Parses a `Last-Event-ID`; what parses must encode to an id that parses
/// back to the same positions.
pub fn last_event_id(text: &str) {
    if let Ok(positions) = last_event_id::parse(text) {
        let encoded = last_event_id::encode(&positions);
        assert_eq!(
            last_event_id::parse(&encoded).as_ref(),
            Ok(&positions),
            "`{encoded}` does not parse back"
        );
    }
}

/// Parses a `POST /api/v1/publish` body as the API does.
pub fn publish_body(body: &[u8]) {
    let _ = api::parse_publish(body);
}

/// Parses a `POST /api/v1/broadcast` body as the API does.
pub fn broadcast_body(body: &[u8]) {
    let _ = crate::extract::parse_json::<BroadcastBody>(body);
}

/// Parses a direct-message body (`POST /api/v1/users/{id}/send`) as the
/// API does; one that passes its checks must encode, in Herald JSON, to a
/// frame that reads back with `room: null`, the same `event` and the same
/// `data` text.
pub fn direct_body(body: &[u8]) {
    use herald_protocol::{ClientCodec, DirectFrame, HERALD_JSON};
    let Ok(b) = crate::extract::parse_json::<api::direct::DirectBody>(body) else {
        return;
    };
    if b.check(None).is_err() {
        return;
    }
    let bytes = HERALD_JSON.encode_direct(&DirectFrame::new(&b.event, &b.data, 1, "id"));
    #[derive(serde::Deserialize)]
    struct Back<'a> {
        room: Option<String>,
        event: String,
        #[serde(borrow)]
        data: &'a serde_json::value::RawValue,
    }
    let back: Back<'_> = match serde_json::from_slice(&bytes) {
        Ok(back) => back,
        Err(e) => panic!("a checked direct message encodes to unreadable JSON: {e}"),
    };
    assert!(back.room.is_none(), "room must be null");
    assert_eq!(back.event, b.event, "event changed");
    assert_eq!(back.data.get(), b.data.get(), "data changed");
}

/// Parses a `POST /api/v1/tokens` body as the API does, then reads the
/// body as a token request (`ttl` through the API's duration parser,
/// the rest as JSON) and mints it with a fixed secret.
pub fn token_body(body: &[u8]) {
    let _ = crate::extract::parse_json::<TokenBody>(body);
    #[derive(serde::Deserialize)]
    struct Request {
        sub: String,
        #[serde(default)]
        roles: Vec<String>,
        #[serde(default)]
        tenant: Option<String>,
        #[serde(default)]
        ttl: Option<String>,
        #[serde(default)]
        claims: serde_json::Map<String, serde_json::Value>,
    }
    let Ok(r) = serde_json::from_slice::<Request>(body) else {
        return;
    };
    let ttl = match r.ttl.as_deref().map(crate::config::parse_duration) {
        None => Duration::from_secs(3600),
        Some(Ok(ttl)) => ttl,
        Some(Err(_)) => return,
    };
    let minter = TokenMinter::hs256("fuzzing-secret-fuzzing-secret-32");
    let _ = minter.mint(&MintRequest {
        sub: r.sub,
        roles: r.roles,
        tenant: r.tenant,
        ttl,
        claims: r.claims,
    });
}

/// Loads a config from TOML text; what loads must also render, give its
/// namespace rules, and have durations a node can add to the clock (a
/// deadline or an expiry is `now + duration`, which panics on overflow).
pub fn config(text: &str) {
    let Ok(config) = crate::Config::from_toml(text) else {
        return;
    };
    let _ = config.to_masked_toml();
    let Ok(rules) = config.namespace_rules() else {
        panic!("validated namespace rules fail");
    };
    let l = &config.limits;
    let durations = [
        ("server.shutdown_drain", config.server.shutdown_drain),
        ("auth.leeway", config.auth.leeway),
        ("auth.jwks_refresh", config.auth.jwks_refresh),
        ("limits.auth_timeout", l.auth_timeout),
        ("limits.heartbeat_interval", l.heartbeat_interval),
        ("limits.stale_timeout", l.stale_timeout),
        ("broker.node_heartbeat", config.broker.node_heartbeat),
        ("broker.command_timeout", config.broker.command_timeout),
    ];
    let ttls = rules.iter().map(|(_, ns)| ("history_ttl", ns.history_ttl));
    let now = Instant::now();
    for (key, d) in durations.into_iter().chain(ttls) {
        assert!(now.checked_add(d).is_some(), "{key} = {d:?} overflows");
    }
}

/// Decodes `bytes` as one client WebSocket message in every encoding a
/// connection may negotiate (Herald JSON, `herald.v1.msgpack`): a bad
/// message is an error reply, never a panic.
pub fn client_message(bytes: &[u8]) {
    use herald_protocol::{ClientCodec, HERALD_JSON, HERALD_MSGPACK};
    let _ = HERALD_JSON.decode(bytes);
    let _ = HERALD_MSGPACK.decode(bytes);
}

/// Reads `body` as an `application/msgpack` API body: turned into JSON as
/// the API does, then through every body parser like a JSON body.
pub fn msgpack_body(body: &[u8]) {
    if let Ok(json) = crate::msgpack_body::to_json(body) {
        publish_body(&json);
        broadcast_body(&json);
        token_body(&json);
        direct_body(&json);
    }
}

/// Reads `value` as a `Sec-WebSocket-Extensions` request header with
/// compression on: an accepted offer has a window of 9 to 15 bits and an
/// answer that always names `server_no_context_takeover` (compress-once
/// depends on it).
pub fn deflate_offer(value: &[u8]) {
    use axum::http::{header, HeaderMap, HeaderValue};
    let Ok(value) = HeaderValue::from_bytes(value) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, value);
    let config = crate::config::CompressionConfig {
        enabled: true,
        ..Default::default()
    };
    if let Some((deflate, answer)) = crate::ws::deflate::negotiate(&headers, &config) {
        assert!(
            (9..=15).contains(&deflate.window_bits),
            "window of {} bits accepted",
            deflate.window_bits
        );
        let answer = answer.to_str().unwrap_or_default();
        assert!(
            answer.contains("server_no_context_takeover"),
            "answer `{answer}` lets the server keep its context"
        );
    }
}

/// Inflates `data` as a compressed client message with the limit `max`:
/// what inflates is never longer than `max` (a deflate bomb is cut).
pub fn inflate(data: &[u8], max: usize) {
    if let Ok(out) = crate::ws::deflate::zip::inflate(data, max) {
        assert!(out.len() <= max, "inflated {} bytes past {max}", out.len());
    }
}
