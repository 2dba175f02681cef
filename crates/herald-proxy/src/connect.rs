//! The connect proxy: a [`TokenVerifier`] that asks the backend who a
//! connection is, for credentials the JWT verifier cannot (or, in mode
//! `always`, for every credential).

use crate::client::{CallError, ProxyClient};
use crate::jwt_shape::looks_like_jwt;
use async_trait::async_trait;
use herald_core::{
    CredentialContext, Identity, RoomName, Tenant, TokenVerifier, Verified, VerifyError,
};
use serde::Serialize;
use serde_json::{Map, Value};
use std::sync::Arc;

/// Which credentials go to the backend (`proxy.connect_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectMode {
    /// Credentials shaped like a JWT are verified as JWTs; the rest go to
    /// the backend.
    #[default]
    Fallback,
    /// Every credential goes to the backend.
    Always,
}

/// Verifies credentials through `proxy.connect_url`, and JWTs (in mode
/// `fallback`) with the wrapped verifier.
pub struct ConnectVerifier {
    jwt: Option<Arc<dyn TokenVerifier>>,
    client: ProxyClient,
    mode: ConnectMode,
}

/// The request body (docs/protocol.md, "Backend proxies").
#[derive(Serialize)]
struct ConnectRequest<'a> {
    credential: &'a str,
    transport: &'a str,
    remote_addr: Option<String>,
    headers: Map<String, Value>,
}

impl ConnectVerifier {
    /// Asks `client` about credentials; `jwt` verifies JWT-shaped ones in
    /// mode `fallback` (`None`: no JWT key is configured, so every
    /// credential goes to the backend whatever the mode).
    pub fn new(
        jwt: Option<Arc<dyn TokenVerifier>>,
        client: ProxyClient,
        mode: ConnectMode,
    ) -> Self {
        Self { jwt, client, mode }
    }

    async fn ask_backend(
        &self,
        credential: &str,
        ctx: &CredentialContext,
    ) -> Result<Verified, VerifyError> {
        let request = ConnectRequest {
            credential,
            transport: ctx.transport,
            remote_addr: ctx.remote_addr.map(|a| a.to_string()),
            // Repeated headers keep their last value: a forwarded header
            // is one value the backend reads (a cookie, an origin).
            headers: ctx
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        };
        match self.client.call::<Map<String, Value>>(&request).await {
            Ok(answer) => verified(answer, unix_now()).map_err(|message| {
                tracing::warn!(%message, "the connect backend's answer is invalid; connection refused");
                VerifyError {
                    reason: "proxy_invalid_answer",
                    message: format!("the authentication backend's answer is invalid: {message}"),
                }
            }),
            Err(CallError::Refused {
                status: 401 | 403,
                message,
            }) => Err(VerifyError {
                reason: "proxy_refused",
                message,
            }),
            Err(CallError::Refused { status, .. }) => Err(VerifyError::unavailable(format!(
                "the authentication backend answered HTTP {status}; retry later"
            ))),
            Err(CallError::Timeout(_)) => Err(VerifyError::unavailable(
                "the authentication backend did not answer in time; retry later",
            )),
            Err(CallError::Unavailable(_) | CallError::Failed(_)) => Err(VerifyError::unavailable(
                "the authentication backend is unavailable; retry later",
            )),
        }
    }
}

#[async_trait]
impl TokenVerifier for ConnectVerifier {
    async fn verify(&self, token: &str) -> Result<Identity, VerifyError> {
        self.verify_credential(token, &CredentialContext::default())
            .await
            .map(|v| v.identity)
    }

    async fn verify_credential(
        &self,
        credential: &str,
        ctx: &CredentialContext,
    ) -> Result<Verified, VerifyError> {
        match &self.jwt {
            Some(jwt) if self.mode == ConnectMode::Fallback && looks_like_jwt(credential) => {
                jwt.verify_credential(credential, ctx).await
            }
            _ => self.ask_backend(credential, ctx).await,
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks a 200 answer and builds the identity from it; the error names
/// the field.
fn verified(mut answer: Map<String, Value>, now: u64) -> Result<Verified, String> {
    let user_id = match answer.remove("user_id") {
        Some(Value::String(id)) if !id.is_empty() => id,
        _ => return Err("`user_id` must be a non-empty string".into()),
    };
    let tenant = match answer.remove("tenant") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t.is_empty() => None,
        Some(Value::String(t)) => match Tenant::parse(Some(&t)) {
            Ok(_) => Some(t),
            Err(e) => return Err(format!("`tenant`: {e}")),
        },
        Some(_) => return Err("`tenant` must be a string".into()),
    };
    let roles = strings(answer.remove("roles"), "roles")?;
    let rooms = strings(answer.remove("rooms"), "rooms")?;
    for room in &rooms {
        RoomName::parse(room).map_err(|e| format!("`rooms`: `{room}`: {e}"))?;
    }
    let expires_at = match answer.remove("expires_at") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(at) if at > now => Some(at),
            Some(_) => return Err("`expires_at` is not in the future".into()),
            None => return Err("`expires_at` must be Unix seconds".into()),
        },
    };
    let claims = match answer.remove("claims") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(claims)) => claims,
        Some(_) => return Err("`claims` must be an object".into()),
    };
    Ok(Verified {
        identity: Identity {
            user_id,
            tenant,
            roles,
            expires_at,
            claims,
        },
        rooms,
    })
}

fn strings(value: Option<Value>, field: &str) -> Result<Vec<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s),
                _ => Err(format!("`{field}` must be an array of strings")),
            })
            .collect(),
        Some(_) => Err(format!("`{field}` must be an array of strings")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer(v: Value) -> Result<Verified, String> {
        match v {
            Value::Object(map) => verified(map, 1_000),
            _ => unreachable!("tests pass objects"),
        }
    }

    #[test]
    fn a_full_answer_becomes_the_identity_and_rooms() {
        let v = answer(json!({
            "user_id": "7", "tenant": "acme", "roles": ["staff"],
            "claims": {"projects": [3]}, "rooms": ["chat:9"], "expires_at": 2_000
        }))
        .expect("valid");
        assert_eq!(v.identity.user_id, "7");
        assert_eq!(v.identity.tenant.as_deref(), Some("acme"));
        assert_eq!(v.identity.roles, ["staff"]);
        assert_eq!(v.identity.expires_at, Some(2_000));
        assert!(v.identity.claim_lists("projects", "3"));
        assert_eq!(v.rooms, ["chat:9"]);
    }

    #[test]
    fn only_user_id_is_required() {
        let v = answer(json!({"user_id": "u"})).expect("valid");
        assert_eq!(v.identity, Identity::new("u"));
        assert!(v.rooms.is_empty());
        let empty_tenant = answer(json!({"user_id": "u", "tenant": ""})).expect("valid");
        assert_eq!(empty_tenant.identity.tenant, None);
    }

    #[test]
    fn bad_answers_name_the_field() {
        for (body, field) in [
            (json!({}), "user_id"),
            (json!({"user_id": ""}), "user_id"),
            (json!({"user_id": 7}), "user_id"),
            (json!({"user_id": "u", "tenant": "a b"}), "tenant"),
            (json!({"user_id": "u", "tenant": 3}), "tenant"),
            (json!({"user_id": "u", "roles": "admin"}), "roles"),
            (json!({"user_id": "u", "rooms": ["bad room"]}), "rooms"),
            (json!({"user_id": "u", "expires_at": 999}), "expires_at"),
            (json!({"user_id": "u", "expires_at": "soon"}), "expires_at"),
            (json!({"user_id": "u", "claims": [1]}), "claims"),
        ] {
            let e = answer(body.clone()).expect_err(&body.to_string());
            assert!(e.contains(field), "{body}: {e}");
        }
    }
}
