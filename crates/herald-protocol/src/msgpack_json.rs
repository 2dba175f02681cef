//! MessagePack read into JSON: client messages of `herald.v1.msgpack` and
//! MessagePack HTTP API bodies become the same JSON values the JSON path
//! reads, so one set of rules checks both. Values JSON cannot carry are
//! refused, naming where they are: bin and ext, NaN and infinities,
//! non-string map keys, strings that are not UTF-8.

use serde_json::{Map, Number, Value};

/// Deepest nesting of arrays and maps read, as serde_json's own limit:
/// what is read here is later written and read back as JSON.
pub const MAX_MSGPACK_DEPTH: usize = 128;

/// Why MessagePack could not be read as JSON; its message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct MsgpackError {
    /// Where the bad value sits (`data.items[2]`), empty for the message
    /// itself.
    pub path: String,
    /// Human-readable detail, naming the field when there is one.
    pub message: String,
}

/// One step into a nested value, kept while an error unwinds.
enum Step {
    Key(String),
    Index(usize),
}

/// A refusal inside a value, with the steps to it (innermost first).
struct Refused {
    steps: Vec<Step>,
    reason: String,
}

impl Refused {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            steps: Vec::new(),
            reason: reason.into(),
        }
    }

    fn into_error(self) -> MsgpackError {
        let mut path = String::new();
        for step in self.steps.iter().rev() {
            match step {
                Step::Key(k) if path.is_empty() => path.push_str(k),
                Step::Key(k) => {
                    path.push('.');
                    path.push_str(k);
                }
                Step::Index(i) => path.push_str(&format!("[{i}]")),
            }
        }
        let message = if path.is_empty() {
            self.reason
        } else {
            format!("field `{path}`: {}", self.reason)
        };
        MsgpackError { path, message }
    }
}

/// Reads one whole MessagePack value (nothing may follow it) as JSON.
pub fn msgpack_to_json(bytes: &[u8]) -> Result<Value, MsgpackError> {
    to_json(read_one(bytes)?).map_err(Refused::into_error)
}

/// Reads one whole MessagePack map as a JSON object, field by field: a
/// field that cannot be read is reported after the ones before it, so a
/// frame's `id` (read first) still names the request that failed.
pub(crate) fn msgpack_to_object(
    bytes: &[u8],
) -> Result<Map<String, Value>, (Map<String, Value>, MsgpackError)> {
    let value = read_one(bytes).map_err(|e| (Map::new(), e))?;
    let rmpv::Value::Map(entries) = value else {
        let e = Refused::new("a frame must be a MessagePack map").into_error();
        return Err((Map::new(), e));
    };
    // The id first, whatever its place, so a later bad field keeps it.
    let (ids, rest): (Vec<_>, Vec<_>) = entries
        .into_iter()
        .partition(|(k, _)| k.as_str() == Some("id"));
    let mut map = Map::new();
    for (key, value) in ids.into_iter().chain(rest) {
        match entry(key, value) {
            Ok((k, v)) => {
                map.insert(k, v);
            }
            Err(refused) => return Err((map, refused.into_error())),
        }
    }
    Ok(map)
}

fn read_one(bytes: &[u8]) -> Result<rmpv::Value, MsgpackError> {
    let mut rest = bytes;
    // rmpv spends two units of its depth budget per array or map level
    // (the value, then its elements), so the budget is twice the levels.
    let value =
        rmpv::decode::read_value_with_max_depth(&mut rest, 2 * MAX_MSGPACK_DEPTH).map_err(|e| {
            MsgpackError {
                path: String::new(),
                message: format!("invalid MessagePack: {e}"),
            }
        })?;
    if !rest.is_empty() {
        return Err(MsgpackError {
            path: String::new(),
            message: format!(
                "invalid MessagePack: {} bytes follow the value; send one value per message",
                rest.len()
            ),
        });
    }
    Ok(value)
}

fn entry(key: rmpv::Value, value: rmpv::Value) -> Result<(String, Value), Refused> {
    let key = match key {
        rmpv::Value::String(s) => s
            .into_str()
            .ok_or_else(|| Refused::new("a map key is not valid UTF-8"))?,
        other => {
            return Err(Refused::new(format!(
                "map keys must be strings to be carried as JSON, found {}",
                kind(&other)
            )))
        }
    };
    match to_json(value) {
        Ok(v) => Ok((key, v)),
        Err(mut refused) => {
            refused.steps.push(Step::Key(key));
            Err(refused)
        }
    }
}

fn to_json(value: rmpv::Value) -> Result<Value, Refused> {
    Ok(match value {
        rmpv::Value::Nil => Value::Null,
        rmpv::Value::Boolean(b) => Value::Bool(b),
        rmpv::Value::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => Value::Number(u.into()),
            (None, Some(n)) => Value::Number(n.into()),
            (None, None) => return Err(Refused::new("integer out of range")),
        },
        rmpv::Value::F32(f) => float(f64::from(f))?,
        rmpv::Value::F64(f) => float(f)?,
        rmpv::Value::String(s) => Value::String(
            s.into_str()
                .ok_or_else(|| Refused::new("string is not valid UTF-8"))?,
        ),
        rmpv::Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                match to_json(item) {
                    Ok(v) => out.push(v),
                    Err(mut refused) => {
                        refused.steps.push(Step::Index(i));
                        return Err(refused);
                    }
                }
            }
            Value::Array(out)
        }
        rmpv::Value::Map(entries) => {
            let mut out = Map::new();
            for (k, v) in entries {
                let (k, v) = entry(k, v)?;
                out.insert(k, v);
            }
            Value::Object(out)
        }
        other @ (rmpv::Value::Binary(_) | rmpv::Value::Ext(..)) => {
            return Err(Refused::new(format!(
                "{} has no JSON form; send it as a string (e.g. base64)",
                kind(&other)
            )))
        }
    })
}

fn float(f: f64) -> Result<Value, Refused> {
    Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| Refused::new("NaN and infinities have no JSON form"))
}

/// A MessagePack value's kind, for messages.
fn kind(value: &rmpv::Value) -> String {
    match value {
        rmpv::Value::Nil => "nil".into(),
        rmpv::Value::Boolean(_) => "a boolean".into(),
        rmpv::Value::Integer(_) => "an integer".into(),
        rmpv::Value::F32(_) | rmpv::Value::F64(_) => "a float".into(),
        rmpv::Value::String(_) => "a string".into(),
        rmpv::Value::Binary(_) => "MessagePack bin (binary data)".into(),
        rmpv::Value::Array(_) => "an array".into(),
        rmpv::Value::Map(_) => "a map".into(),
        rmpv::Value::Ext(t, _) => format!("MessagePack ext (type {t})"),
    }
}
