//! Turning one bridged message into the JSON body of `POST /api/v1/publish`.

use crate::config::BodyMode;
use crate::plan::Transform;
use crate::template::{Input, Template};
use serde_json::{Map, Value};

/// Why a message cannot become a publish body (it never will: drop it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The message is not JSON (or, as a publish body, not an object).
    #[error("not JSON: {0}")]
    NotJson(String),
    /// A template could not be filled in.
    #[error("template: {0}")]
    Template(String),
}

impl BuildError {
    /// A bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotJson(_) => "not_json",
            Self::Template(_) => "template",
        }
    }
}

/// Builds the publish body for a message on `subject` with `payload`.
pub fn publish_body(t: &Transform, subject: &str, payload: &[u8]) -> Result<Vec<u8>, BuildError> {
    let body: Value =
        serde_json::from_slice(payload).map_err(|e| BuildError::NotJson(format!("{e}")))?;
    let wildcards = t.pattern.captures(subject).unwrap_or_default();
    let input = Input {
        subject,
        wildcards: &wildcards,
        body: Some(&body),
    };
    let fill = |template: &Option<Template>| -> Result<Option<String>, BuildError> {
        template
            .as_ref()
            .map(|t| t.render(&input).map_err(BuildError::Template))
            .transpose()
    };
    let (room, event, tenant) = (fill(&t.room)?, fill(&t.event)?, fill(&t.tenant)?);
    let mut out = match t.mode {
        BodyMode::Publish => match body {
            Value::Object(map) => map,
            _ => {
                return Err(BuildError::NotJson(
                    "a publish body must be a JSON object".into(),
                ))
            }
        },
        BodyMode::Data => {
            let mut map = Map::new();
            map.insert("data".into(), body);
            map
        }
    };
    for (field, value) in [("room", room), ("event", event), ("tenant", tenant)] {
        if let Some(v) = value {
            out.insert(field.into(), Value::String(v));
        }
    }
    serde_json::to_vec(&Value::Object(out)).map_err(|e| BuildError::NotJson(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::Pattern;
    use serde_json::json;

    fn transform(mode: BodyMode, room: Option<&str>, event: Option<&str>) -> Transform {
        Transform {
            mode,
            pattern: Pattern::nats("agents.*.events").unwrap(),
            room: room.map(|r| Template::parse(r).unwrap()),
            event: event.map(|e| Template::parse(e).unwrap()),
            tenant: None,
        }
    }

    fn parse(bytes: Vec<u8>) -> Value {
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn data_mode_wraps_the_message_as_data() {
        let t = transform(BodyMode::Data, Some("agent:{1}"), Some("{body.type}"));
        let out = publish_body(&t, "agents.42.events", br#"{"type":"step","n":1}"#).unwrap();
        assert_eq!(
            parse(out),
            json!({"room": "agent:42", "event": "step", "data": {"type": "step", "n": 1}})
        );
        let t = transform(BodyMode::Data, Some("agent:{1}"), Some("agent.event"));
        let out = publish_body(&t, "agents.7.events", b"[1,2]").unwrap();
        assert_eq!(
            parse(out),
            json!({"room": "agent:7", "event": "agent.event", "data": [1, 2]})
        );
    }

    #[test]
    fn publish_mode_keeps_the_body_and_templates_override() {
        let t = transform(BodyMode::Publish, None, None);
        let body = br#"{"room":"user:a","event":"e","data":1,"idempotency_key":"k"}"#;
        let out = parse(publish_body(&t, "agents.1.events", body).unwrap());
        assert_eq!(out["room"], "user:a");
        assert_eq!(out["idempotency_key"], "k");
        let t = transform(BodyMode::Publish, Some("agent:{1}"), None);
        let out = parse(publish_body(&t, "agents.1.events", body).unwrap());
        assert_eq!(out["room"], "agent:1");
        assert_eq!(out["event"], "e");
    }

    #[test]
    fn bad_messages_say_why() {
        let t = transform(BodyMode::Data, Some("agent:{1}"), Some("{body.type}"));
        let e = publish_body(&t, "agents.1.events", b"not json").unwrap_err();
        assert_eq!(e.reason(), "not_json");
        let e = publish_body(&t, "agents.1.events", b"{}").unwrap_err();
        assert_eq!(e.reason(), "template");
        assert!(e.to_string().contains("no field `type`"), "{e}");
        let t = transform(BodyMode::Publish, None, None);
        let e = publish_body(&t, "agents.1.events", b"[1]").unwrap_err();
        assert_eq!(e.reason(), "not_json");
    }
}
