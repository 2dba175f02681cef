//! HTTP long polling: a GET with the session's `sid` waits for packets and
//! takes them, several joined by `\x1e`; a POST delivers the client's
//! packets. At most one GET and one POST per session at a time, as in
//! Engine.IO: an overlapping one is a 400 and ends the session.

use super::table::{PollShared, PollState, Table};
use super::{error_response, EioRequestError};
use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use herald_socketio::engineio::{self, SEPARATOR};
use std::time::Duration;
use tokio::time::Instant;

/// A response body of Engine.IO packets.
pub(super) fn packets_response(body: Bytes) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=UTF-8"),
        )],
        body,
    )
        .into_response()
}

/// The two requests a polling session has at most one of at a time.
#[derive(Clone, Copy)]
enum Side {
    Get,
    Post,
}

impl Side {
    /// The session's "pending" mark for this side.
    fn pending(self, s: &mut PollState) -> &mut bool {
        match self {
            Side::Get => &mut s.polling,
            Side::Post => &mut s.posting,
        }
    }

    /// Why the session ends when a second one overlaps the first.
    fn overlap(self) -> &'static str {
        match self {
            Side::Get => "poll_overlap",
            Side::Post => "post_overlap",
        }
    }
}

/// A GET or POST in progress: clears the session's mark when the request
/// ends, however it ends (answered, or dropped by a client that went away).
struct Pending<'a> {
    shared: &'a PollShared,
    side: Side,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let side = self.side;
        self.shared.update(|s| {
            *side.pending(s) = false;
            match side {
                // The poll timeout counts from the end of the last GET.
                Side::Get => {
                    s.last_poll = Instant::now();
                    ((), true)
                }
                Side::Post => ((), false),
            }
        });
    }
}

/// Marks a GET or POST of the session as in progress. Refused with the
/// Engine.IO error to answer when the session is gone or upgraded (code 1),
/// or when one is already in progress (code 3): two at once means a
/// confused client, and Engine.IO servers end the session.
fn begin(shared: &PollShared, side: Side) -> Result<Pending<'_>, EioRequestError> {
    let refusal = shared.update(|s| {
        if s.ended.is_some() || s.upgraded {
            return (Some(EioRequestError::UnknownSid), false);
        }
        let pending = side.pending(s);
        if *pending {
            return (Some(EioRequestError::BadRequest), false);
        }
        *pending = true;
        (None, false)
    });
    match refusal {
        None => Ok(Pending { shared, side }),
        Some(refusal) => {
            if refusal == EioRequestError::BadRequest {
                shared.end(side.overlap());
            }
            Err(refusal)
        }
    }
}

/// `GET ?EIO=4&transport=polling&sid=...`: the packets waiting, or the
/// next ones; `6` (noop) when nothing came for pingInterval + pingTimeout
/// or an upgrade needs the GET released; `1` once the session ended.
pub(super) async fn get(table: &Table, sid: &str) -> Response {
    let Some(shared) = table.get(sid) else {
        return error_response(EioRequestError::UnknownSid);
    };
    let _pending = match begin(&shared, Side::Get) {
        Ok(pending) => pending,
        Err(refusal) => return error_response(refusal),
    };
    let config = shared.config;
    let hold = Instant::now() + config.ping_interval + config.ping_timeout;
    let body = shared
        .wait_for(|s| {
            if !s.out.is_empty() {
                // Whole packets up to about maxPayload; at least one.
                let mut body = BytesMut::new();
                while let Some(packet) = s.out.front() {
                    let len = packet.len();
                    if !body.is_empty() && body.len() + 1 + len > config.max_payload {
                        break;
                    }
                    if !body.is_empty() {
                        body.put_u8(SEPARATOR);
                    }
                    body.put_slice(&packet.head);
                    if let Some(tail) = &packet.tail {
                        body.put_slice(tail);
                    }
                    s.out_bytes -= len;
                    s.out.pop_front();
                }
                return Ok(body.freeze());
            }
            if s.ended.is_some() {
                return Ok(Bytes::from_static(b"1"));
            }
            if s.upgraded || s.release || Instant::now() >= hold {
                return Ok(Bytes::from_static(b"6"));
            }
            Err(Some(hold))
        })
        .await;
    // Room in the queue for a waiting `send`.
    shared.wake();
    packets_response(body)
}

/// `POST ?EIO=4&transport=polling&sid=...`: the client's packets. Answered
/// `ok` once handed to the session; a body over maxPayload is 413 and ends
/// the session.
pub(super) async fn post(table: &Table, sid: &str, body: Body, body_timeout: Duration) -> Response {
    let Some(shared) = table.get(sid) else {
        return error_response(EioRequestError::UnknownSid);
    };
    let _pending = match begin(&shared, Side::Post) {
        Ok(pending) => pending,
        Err(refusal) => return error_response(refusal),
    };
    let config = shared.config;
    let bytes = match tokio::time::timeout(body_timeout, read_body(body, config.max_payload)).await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(BodyError::TooLarge)) => {
            shared.end("payload_too_large");
            return crate::error::ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                herald_protocol::ErrorCode::TooLarge,
                format!(
                    "payload over maxPayload ({} bytes); the session is closed",
                    config.max_payload
                ),
            )
            .into_response();
        }
        Ok(Err(BodyError::Failed)) | Err(_) => {
            shared.end("transport_error");
            return error_response(EioRequestError::BadRequest);
        }
    };
    let packets = match engineio::decode_payload(bytes) {
        Ok(packets) => packets,
        Err(e) => {
            tracing::debug!(sid, error = %e, "bad Engine.IO payload");
            shared.end("parse_error");
            return error_response(EioRequestError::BadRequest);
        }
    };
    // One payload waits for the session at a time: the next POST waits
    // until the last was taken, which bounds what a client can pile up.
    let deadline = Instant::now() + config.ping_interval + config.ping_timeout;
    let mut packets = Some(packets);
    let delivered = shared
        .wait_for(|s| {
            if s.ended.is_some() || s.upgraded {
                return Ok(Some(false));
            }
            if s.inbox.is_empty() {
                s.inbox.extend(packets.take().into_iter().flatten());
                return Ok(Some(true));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            Err(Some(deadline))
        })
        .await;
    match delivered {
        Some(true) => {}
        // The session ended meanwhile.
        Some(false) => return error_response(EioRequestError::UnknownSid),
        None => return error_response(EioRequestError::BadRequest),
    }
    shared.wake();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=UTF-8"),
        )],
        "ok",
    )
        .into_response()
}

/// Why a POST body could not be read.
enum BodyError {
    /// Over maxPayload.
    TooLarge,
    /// The client went away or sent a broken body.
    Failed,
}

/// Reads a body of at most `max` bytes.
async fn read_body(body: Body, max: usize) -> Result<Bytes, BodyError> {
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| BodyError::Failed)?;
        if buf.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
