//! Reading the replies of the stream commands the consumer sends. They are
//! parsed by hand from fred's `Value` because fred's typed helpers drop
//! what the consumer needs: entries deleted from the stream while pending
//! (nil fields), and the raw bytes of fields for the dead-letter copy.

use fred::types::{Key, Value};
use std::collections::HashMap;

/// A reply that does not have the shape Redis documents.
#[derive(Debug, thiserror::Error)]
#[error("unexpected reply to {command}: {detail}")]
pub(super) struct ReplyError {
    command: &'static str,
    detail: String,
}

fn bad(command: &'static str, detail: impl Into<String>) -> ReplyError {
    ReplyError {
        command,
        detail: detail.into(),
    }
}

/// One stream entry as delivered to this consumer.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// Its stream id, `<ms>-<seq>`.
    pub id: String,
    /// Its fields in order; `None` when the entry was deleted from the
    /// stream while it was pending.
    pub fields: Option<Vec<(Key, Value)>>,
}

/// What the `payload` field of an entry holds.
pub(super) enum Payload<'a> {
    /// The JSON text to publish.
    Text(std::borrow::Cow<'a, str>),
    /// No such field.
    Missing,
    /// A field that is not UTF-8 text.
    NotText,
    /// The entry is gone from the stream.
    Deleted,
}

impl Entry {
    /// The `payload` field.
    pub fn payload(&self) -> Payload<'_> {
        let Some(fields) = &self.fields else {
            return Payload::Deleted;
        };
        match fields.iter().find(|(k, _)| k.as_bytes() == b"payload") {
            None => Payload::Missing,
            Some((_, v)) => match v.as_str() {
                Some(text) => Payload::Text(text),
                None => Payload::NotText,
            },
        }
    }

    /// The `traceparent` field (a W3C trace context), when present and
    /// valid; a malformed one is ignored, as the W3C spec asks.
    pub fn traceparent(&self) -> Option<herald_core::TraceContext> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(k, _)| k.as_bytes() == b"traceparent")
            .and_then(|(_, v)| v.as_str())
            .and_then(|text| herald_core::TraceContext::parse_traceparent(&text))
    }

    /// The `payload` field's raw value, if any.
    pub fn payload_value(&self) -> Option<&Value> {
        self.fields
            .as_ref()?
            .iter()
            .find(|(k, _)| k.as_bytes() == b"payload")
            .map(|(_, v)| v)
    }
}

fn text(command: &'static str, v: Value) -> Result<String, ReplyError> {
    v.as_str()
        .map(|s| s.into_owned())
        .ok_or_else(|| bad(command, "expected a string"))
}

fn array(command: &'static str, v: Value) -> Result<Vec<Value>, ReplyError> {
    match v {
        Value::Array(items) => Ok(items),
        Value::Null => Ok(Vec::new()),
        other => Err(bad(
            command,
            format!("expected an array, got {:?}", other.kind()),
        )),
    }
}

/// One `[id, [field, value, ...]]` element.
fn entry(command: &'static str, v: Value) -> Result<Entry, ReplyError> {
    let mut parts = array(command, v)?.into_iter();
    let (Some(id), Some(body)) = (parts.next(), parts.next()) else {
        return Err(bad(command, "an entry without id and fields"));
    };
    let id = text(command, id)?;
    let fields = match body {
        Value::Null => None,
        Value::Array(items) => {
            let mut fields = Vec::with_capacity(items.len() / 2);
            let mut items = items.into_iter();
            while let (Some(k), Some(v)) = (items.next(), items.next()) {
                let k = Key::try_from(k).map_err(|e| bad(command, e.to_string()))?;
                fields.push((k, v));
            }
            Some(fields)
        }
        Value::Map(map) => Some(map.inner().into_iter().collect()),
        other => {
            return Err(bad(
                command,
                format!("entry fields of type {:?}", other.kind()),
            ))
        }
    };
    Ok(Entry { id, fields })
}

fn entries(command: &'static str, v: Value) -> Result<Vec<Entry>, ReplyError> {
    array(command, v)?
        .into_iter()
        .map(|e| entry(command, e))
        .collect()
}

/// `XREADGROUP` on one stream: nil on timeout, else `[[key, [entry...]]]`
/// (RESP2) or `{key: [entry...]}` (RESP3).
pub(super) fn read_group(v: Value) -> Result<Vec<Entry>, ReplyError> {
    const CMD: &str = "XREADGROUP";
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Map(map) => {
            let mut out = Vec::new();
            for (_, list) in map.inner() {
                out.extend(entries(CMD, list)?);
            }
            Ok(out)
        }
        v => {
            let mut out = Vec::new();
            for stream in array(CMD, v)? {
                let mut parts = array(CMD, stream)?.into_iter();
                let (Some(_key), Some(list)) = (parts.next(), parts.next()) else {
                    return Err(bad(CMD, "a stream without key and entries"));
                };
                out.extend(entries(CMD, list)?);
            }
            Ok(out)
        }
    }
}

/// `XAUTOCLAIM`: `[next cursor, [entry...], [deleted id...]]` (the last
/// element since Redis 7; it lists pending entries that no longer exist,
/// which Redis has already dropped from the pending list).
pub(super) fn autoclaim(v: Value) -> Result<(String, Vec<Entry>), ReplyError> {
    const CMD: &str = "XAUTOCLAIM";
    let mut parts = array(CMD, v)?.into_iter();
    let (Some(cursor), Some(list)) = (parts.next(), parts.next()) else {
        return Err(bad(CMD, "expected a cursor and entries"));
    };
    Ok((text(CMD, cursor)?, entries(CMD, list)?))
}

/// The extended form of `XPENDING`: `[[id, consumer, idle ms, deliveries]...]`,
/// as entry id to delivery count.
pub(super) fn delivery_counts(v: Value) -> Result<HashMap<String, u64>, ReplyError> {
    const CMD: &str = "XPENDING";
    let mut out = HashMap::new();
    for row in array(CMD, v)? {
        let row = array(CMD, row)?;
        let (Some(id), Some(count)) = (row.first(), row.get(3)) else {
            return Err(bad(CMD, "a row without id and delivery count"));
        };
        let id = text(CMD, id.clone())?;
        let count = count
            .as_u64()
            .ok_or_else(|| bad(CMD, "a delivery count that is not a number"))?;
        out.insert(id, count);
    }
    Ok(out)
}

/// `XCLAIM ... JUSTID`: the ids claimed.
pub(super) fn ids(v: Value) -> Result<Vec<String>, ReplyError> {
    const CMD: &str = "XCLAIM";
    array(CMD, v)?.into_iter().map(|id| text(CMD, id)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::String(x.into())
    }

    #[test]
    fn reads_entries_and_deleted_ones() {
        let reply = Value::Array(vec![Value::Array(vec![
            s("herald:ingest"),
            Value::Array(vec![
                Value::Array(vec![s("1-0"), Value::Array(vec![s("payload"), s("{}")])]),
                Value::Array(vec![s("2-0"), Value::Null]),
                Value::Array(vec![s("3-0"), Value::Array(vec![s("data"), s("x")])]),
            ]),
        ])]);
        let got = read_group(reply).expect("parse");
        assert_eq!(got.len(), 3);
        assert!(matches!(got[0].payload(), Payload::Text(t) if t == "{}"));
        assert!(matches!(got[1].payload(), Payload::Deleted));
        assert!(matches!(got[2].payload(), Payload::Missing));
        assert!(read_group(Value::Null).expect("nil").is_empty());
    }

    #[test]
    fn reads_autoclaim_and_pending_rows() {
        let reply = Value::Array(vec![
            s("0-0"),
            Value::Array(vec![Value::Array(vec![
                s("5-1"),
                Value::Array(vec![s("payload"), s("{}")]),
            ])]),
            Value::Array(vec![]),
        ]);
        let (cursor, got) = autoclaim(reply).expect("parse");
        assert_eq!(cursor, "0-0");
        assert_eq!(got[0].id, "5-1");

        let rows = Value::Array(vec![Value::Array(vec![
            s("5-1"),
            s("n1"),
            Value::Integer(40),
            Value::Integer(3),
        ])]);
        assert_eq!(delivery_counts(rows).expect("parse")["5-1"], 3);
    }

    #[test]
    fn a_malformed_reply_is_an_error() {
        assert!(autoclaim(s("nope")).is_err());
        assert!(read_group(Value::Array(vec![s("k")])).is_err());
    }
}
