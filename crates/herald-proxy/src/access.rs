//! The join, send and RPC proxies: [`AccessProxy`] over the backend's
//! `proxy.join_url`, `proxy.send_url` and `proxy.rpc_url`.

use crate::client::{CallError, ProxyClient};
use crate::{ProxyError, ProxySettings};
use async_trait::async_trait;
use herald_core::access::{AccessDecision, AccessProxy, ProxyFailure};
use herald_core::{Identity, RoomName};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::time::Duration;

/// The backend URLs of the access proxies; a `None` kind is not proxied.
#[derive(Debug, Clone, Default)]
pub struct AccessUrls {
    /// `proxy.join_url`
    pub join: Option<String>,
    /// `proxy.send_url`
    pub send: Option<String>,
    /// `proxy.rpc_url`
    pub rpc: Option<String>,
}

/// Asks the backend whether a user may join a room or send an event, and
/// forwards client RPCs.
#[derive(Debug, Clone)]
pub struct HttpAccessProxy {
    join: Option<ProxyClient>,
    send: Option<ProxyClient>,
    rpc: Option<ProxyClient>,
}

/// Who is asking: the identity part of every request body.
#[derive(Serialize)]
struct Caller<'a> {
    user_id: &'a str,
    tenant: Option<&'a str>,
    roles: &'a [String],
    claims: &'a Map<String, Value>,
}

impl<'a> From<&'a Identity> for Caller<'a> {
    fn from(who: &'a Identity) -> Self {
        Self {
            user_id: &who.user_id,
            tenant: who.tenant.as_deref(),
            roles: &who.roles,
            claims: &who.claims,
        }
    }
}

#[derive(Serialize)]
struct RoomRequest<'a> {
    #[serde(flatten)]
    caller: Caller<'a>,
    room: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a str>,
}

#[derive(Serialize)]
struct RpcRequest<'a> {
    #[serde(flatten)]
    caller: Caller<'a>,
    connection_id: &'a str,
    method: &'a str,
    data: &'a RawValue,
}

/// A join or send answer: `{"allow": bool, "cache_ttl"?: "30s" | 30}`.
#[derive(Deserialize)]
struct AccessAnswer {
    allow: bool,
    #[serde(default, deserialize_with = "cache_ttl")]
    cache_ttl: Option<Duration>,
}

fn cache_ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let value = Option::<Value>::deserialize(d)?;
    value
        .map(|v| parse_cache_ttl(&v))
        .transpose()
        .map_err(serde::de::Error::custom)
}

/// Reads a `cache_ttl`: a duration string (`"30s"`, `"5m"`) or a
/// non-negative number of seconds; `null` means no caching.
pub fn parse_cache_ttl(value: &Value) -> Result<Duration, String> {
    let ttl = match value {
        Value::String(text) => herald_core::duration::parse(text)?,
        Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .ok_or_else(|| format!("cache_ttl `{n}` is not a number of seconds"))?,
        other => return Err(format!("cache_ttl `{other}` is not a duration")),
    };
    // Longer than any sensible cache, and keeps `now + ttl` from
    // overflowing.
    Ok(ttl.min(herald_core::duration::MAX))
}

impl HttpAccessProxy {
    /// The proxies of `urls` (each kind with a URL), sharing `http`.
    pub fn new(
        urls: &AccessUrls,
        settings: &ProxySettings,
        http: &reqwest::Client,
    ) -> Result<Self, ProxyError> {
        let client = |kind: &'static str, url: &Option<String>| {
            url.as_deref()
                .map(|u| ProxyClient::new(kind, u, settings, http.clone()))
                .transpose()
        };
        Ok(Self {
            join: client("join", &urls.join)?,
            send: client("send", &urls.send)?,
            rpc: client("rpc", &urls.rpc)?,
        })
    }

    async fn decide(
        client: &Option<ProxyClient>,
        key: &str,
        body: RoomRequest<'_>,
    ) -> Result<AccessDecision, ProxyFailure> {
        let Some(client) = client else {
            return Err(ProxyFailure::Unavailable(format!(
                "{key} is not configured"
            )));
        };
        let answer: AccessAnswer = client.call(&body).await.map_err(failure)?;
        Ok(AccessDecision {
            allow: answer.allow,
            cache_ttl: answer.cache_ttl.filter(|ttl| !ttl.is_zero()),
        })
    }
}

/// What the client is told: a refusal keeps the backend's status and
/// message; anything else is `unavailable`, without the backend's
/// internals (logged at debug by the client).
fn failure(e: CallError) -> ProxyFailure {
    match e {
        CallError::Refused { status, message } => ProxyFailure::Rejected { status, message },
        CallError::Timeout(_) => {
            ProxyFailure::Unavailable("the backend did not answer in time; retry later".into())
        }
        CallError::Unavailable(_) | CallError::Failed(_) => {
            ProxyFailure::Unavailable("the backend is unavailable; retry later".into())
        }
    }
}

#[async_trait]
impl AccessProxy for HttpAccessProxy {
    async fn join(&self, who: &Identity, room: &RoomName) -> Result<AccessDecision, ProxyFailure> {
        let body = RoomRequest {
            caller: who.into(),
            room: room.as_str(),
            event: None,
        };
        Self::decide(&self.join, "proxy.join_url", body).await
    }

    async fn send(
        &self,
        who: &Identity,
        room: &RoomName,
        event: &str,
    ) -> Result<AccessDecision, ProxyFailure> {
        let body = RoomRequest {
            caller: who.into(),
            room: room.as_str(),
            event: Some(event),
        };
        Self::decide(&self.send, "proxy.send_url", body).await
    }

    async fn rpc(
        &self,
        who: &Identity,
        connection_id: &str,
        method: &str,
        data: &RawValue,
    ) -> Result<Box<RawValue>, ProxyFailure> {
        let Some(client) = &self.rpc else {
            return Err(ProxyFailure::Rejected {
                status: 404,
                message: "rpc is not enabled (proxy.rpc_url)".into(),
            });
        };
        let body = RpcRequest {
            caller: who.into(),
            connection_id,
            method,
            data,
        };
        client.call(&body).await.map_err(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cache_ttl_is_a_duration_string_or_seconds() {
        assert_eq!(parse_cache_ttl(&json!("30s")), Ok(Duration::from_secs(30)));
        assert_eq!(
            parse_cache_ttl(&json!("250ms")),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(parse_cache_ttl(&json!(30)), Ok(Duration::from_secs(30)));
        assert_eq!(
            parse_cache_ttl(&json!(1.5)),
            Ok(Duration::from_millis(1500))
        );
        assert!(parse_cache_ttl(&json!(-1)).is_err());
        assert!(parse_cache_ttl(&json!("soon")).is_err());
        assert!(parse_cache_ttl(&json!(true)).is_err());
    }

    #[test]
    fn answers_parse_strictly() {
        let a: AccessAnswer = serde_json::from_value(json!({"allow": true})).expect("valid");
        assert!(a.allow && a.cache_ttl.is_none());
        let a: AccessAnswer =
            serde_json::from_value(json!({"allow": false, "cache_ttl": null})).expect("valid");
        assert!(!a.allow && a.cache_ttl.is_none());
        let a: AccessAnswer =
            serde_json::from_value(json!({"allow": true, "cache_ttl": "1m"})).expect("valid");
        assert_eq!(a.cache_ttl, Some(Duration::from_secs(60)));
        assert!(serde_json::from_value::<AccessAnswer>(json!({})).is_err());
        assert!(serde_json::from_value::<AccessAnswer>(json!({"allow": "yes"})).is_err());
        assert!(
            serde_json::from_value::<AccessAnswer>(json!({"allow": true, "cache_ttl": "x"}))
                .is_err()
        );
    }

    #[test]
    fn request_bodies_match_the_protocol() {
        let mut who = Identity::new("42");
        who.tenant = Some("acme".into());
        who.roles = vec!["staff".into()];
        let body = RoomRequest {
            caller: (&who).into(),
            room: "chat:9",
            event: Some("typing"),
        };
        assert_eq!(
            serde_json::to_value(&body).expect("serializes"),
            json!({"user_id": "42", "tenant": "acme", "roles": ["staff"], "claims": {},
                   "room": "chat:9", "event": "typing"})
        );
        let data = RawValue::from_string(r#"{"x":1}"#.into()).expect("raw");
        let seven = Identity::new("7");
        let rpc = RpcRequest {
            caller: (&seven).into(),
            connection_id: "c1",
            method: "select",
            data: &data,
        };
        assert_eq!(
            serde_json::to_value(&rpc).expect("serializes"),
            json!({"user_id": "7", "tenant": null, "roles": [], "claims": {},
                   "connection_id": "c1", "method": "select", "data": {"x": 1}})
        );
    }
}
