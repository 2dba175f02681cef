//! The CONNECT packet's auth payload and the server's answers to it.
//!
//! socket.io-client sends `io(url, { auth })` as the CONNECT payload; with
//! connection state recovery it adds the `pid` it was given and the
//! `offset` (the last string argument of the last event it received).
//! Herald reads `token`, `pid` and `offset` and ignores any other key.

use crate::packet::{write_head, PacketType};
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

/// Longest `pid` accepted, in bytes.
pub const MAX_PID_BYTES: usize = 64;

/// What Herald reads from a CONNECT payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectAuth {
    /// The JWT (`auth.token`).
    pub token: Option<String>,
    /// The session id of a connection being recovered.
    pub pid: Option<String>,
    /// Where the client stands: the recovery token of its last event.
    pub offset: Option<String>,
}

/// Why a CONNECT payload could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConnectError {
    /// The payload is not a JSON object.
    #[error("the CONNECT payload must be a JSON object")]
    NotAnObject,
    /// A known key has the wrong type.
    #[error("CONNECT payload: `{0}` must be a string")]
    NotAString(&'static str),
    /// `pid` is too long.
    #[error("CONNECT payload: `pid` is longer than {MAX_PID_BYTES} bytes")]
    PidTooLong,
}

impl ConnectAuth {
    /// Reads the CONNECT packet's payload (`None` when it had none).
    pub fn parse(data: Option<&str>) -> Result<Self, ConnectError> {
        let Some(text) = data else {
            return Ok(Self::default());
        };
        let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(text) else {
            return Err(ConnectError::NotAnObject);
        };
        let mut take = |key: &'static str| match map.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ConnectError::NotAString(key)),
        };
        let auth = Self {
            token: take("token")?,
            pid: take("pid")?,
            offset: take("offset")?,
        };
        if auth.pid.as_ref().is_some_and(|p| p.len() > MAX_PID_BYTES) {
            return Err(ConnectError::PidTooLong);
        }
        Ok(auth)
    }

    /// Whether the client asks to recover a previous connection.
    pub fn recovering(&self) -> bool {
        self.pid.is_some() && self.offset.is_some()
    }
}

#[derive(Serialize)]
struct Accepted<'a> {
    sid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<&'a str>,
}

/// The server's CONNECT answer, `40{"sid":..,"pid":..}`, as an Engine.IO
/// message packet.
pub fn accepted(sid: &str, pid: Option<&str>) -> Bytes {
    let mut out = Vec::with_capacity(64);
    write_head(&mut out, PacketType::Connect, "/", None);
    json_into(&mut out, &Accepted { sid, pid });
    Bytes::from(out)
}

#[derive(Serialize)]
struct Refused<'a> {
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<RefusalData<'a>>,
}

#[derive(Serialize)]
struct RefusalData<'a> {
    code: &'a str,
    message: &'a str,
}

/// A refused CONNECT on `/`: `44{"message":<code>,"data":{"code","message"}}`
/// (socket.io-client raises `connect_error` with `err.message` = the
/// Herald error code and `err.data` = both).
pub fn refused(code: &str, message: &str) -> Bytes {
    let mut out = Vec::with_capacity(64 + message.len());
    write_head(&mut out, PacketType::ConnectError, "/", None);
    let data = Some(RefusalData { code, message });
    json_into(
        &mut out,
        &Refused {
            message: code,
            data,
        },
    );
    Bytes::from(out)
}

/// The answer to a CONNECT on a namespace Herald does not serve:
/// `44/ns,{"message":"invalid namespace"}`, as Socket.IO servers answer.
pub fn invalid_namespace(namespace: &str) -> Bytes {
    let mut out = Vec::with_capacity(48 + namespace.len());
    write_head(&mut out, PacketType::ConnectError, namespace, None);
    json_into(
        &mut out,
        &Refused {
            message: "invalid namespace",
            data: None,
        },
    );
    Bytes::from(out)
}

/// The Socket.IO DISCONNECT packet for `/` (`41`).
pub fn disconnect() -> Bytes {
    Bytes::from_static(b"41")
}

/// Serializes a value whose serialization cannot fail (strings and
/// numbers only); a failure would be a bug, reported as `null`.
fn json_into<T: Serialize>(out: &mut Vec<u8>, value: &T) {
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_token_pid_and_offset_and_ignores_the_rest() {
        let auth = ConnectAuth::parse(Some(
            r#"{"token":"jwt","pid":"p1","offset":"a~E~3","extra":{"x":1}}"#,
        ))
        .expect("valid");
        assert_eq!(auth.token.as_deref(), Some("jwt"));
        assert!(auth.recovering());
        assert_eq!(ConnectAuth::parse(None), Ok(ConnectAuth::default()));
        assert_eq!(ConnectAuth::parse(Some("{}")), Ok(ConnectAuth::default()));
        let auth = ConnectAuth::parse(Some(r#"{"pid":null}"#)).expect("null is absent");
        assert!(!auth.recovering());
    }

    #[test]
    fn bad_payloads_name_the_problem() {
        assert_eq!(
            ConnectAuth::parse(Some("[1]")),
            Err(ConnectError::NotAnObject)
        );
        assert_eq!(
            ConnectAuth::parse(Some("{")),
            Err(ConnectError::NotAnObject)
        );
        assert_eq!(
            ConnectAuth::parse(Some(r#"{"token":5}"#)),
            Err(ConnectError::NotAString("token"))
        );
        let long = format!(r#"{{"pid":"{}"}}"#, "p".repeat(65));
        assert_eq!(
            ConnectAuth::parse(Some(&long)),
            Err(ConnectError::PidTooLong)
        );
    }

    #[test]
    fn answers_are_engine_io_messages() {
        assert_eq!(
            &accepted("s1", Some("p"))[..],
            br#"40{"sid":"s1","pid":"p"}"#
        );
        assert_eq!(&accepted("s1", None)[..], br#"40{"sid":"s1"}"#);
        assert_eq!(
            &refused("unauthorized", "bad \"sig\"")[..],
            br#"44{"message":"unauthorized","data":{"code":"unauthorized","message":"bad \"sig\""}}"#
        );
        assert_eq!(
            &invalid_namespace("/admin")[..],
            br#"44/admin,{"message":"invalid namespace"}"#
        );
        assert_eq!(&disconnect()[..], b"41");
    }
}
