//! Direct messages (an extension): `POST /api/v1/connections/{id}/send`
//! and `POST /api/v1/users/{user_id}/send` deliver one event to a
//! connection or to every connection of a user, on whatever node holds
//! it, as an `event` frame with `room: null`. The body is checked like a
//! publish's (`event`, `data`, the body size limit).

use super::{check_data, check_event, tenant, TenantQuery};
use crate::error::ApiError;
use crate::extract::{ApiKey, JsonBody, Publish};
use crate::request_id::RequestId;
use crate::AppState;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_core::{DirectTarget, Tenant};
use herald_protocol::ErrorCode;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DirectBody {
    pub(crate) event: String,
    pub(crate) data: Box<RawValue>,
    #[serde(default)]
    tenant: Option<String>,
}

impl DirectBody {
    /// Checks the body; returns the tenant it names, from the body or the
    /// `?tenant=` query the other user APIs take (both must agree).
    pub(crate) fn check(&self, query: Option<&str>) -> Result<Option<Tenant>, ApiError> {
        check_event(&self.event)?;
        check_data(&self.data)?;
        let named = match (self.tenant.as_deref(), query) {
            (Some(a), Some(b)) if a != b => {
                return Err(ApiError::bad_request(
                    "`tenant` in the body and in the query differ",
                ))
            }
            (Some(t), _) | (None, Some(t)) => Some(t),
            (None, None) => None,
        };
        named.map(|t| tenant(Some(t))).transpose()
    }
}

/// `POST /api/v1/connections/{connection_id}/send`
pub(crate) async fn to_connection(
    key: ApiKey<Publish>,
    request_id: RequestId,
    State(app): State<AppState>,
    Path(connection_id): Path<String>,
    Query(q): Query<TenantQuery>,
    JsonBody(b): JsonBody<DirectBody>,
) -> Result<Response, ApiError> {
    let tenant = b.check(q.tenant.as_deref())?;
    let target = DirectTarget::Connection {
        connection_id: connection_id.clone(),
        tenant,
    };
    let delivered = app.node.send_direct(&target, b.event, b.data).await?;
    tracing::debug!(
        request_id = request_id.as_str(),
        api_key = key.name(),
        connection_id = connection_id.as_str(),
        ?delivered,
        "direct message sent"
    );
    match delivered {
        Some(n) => {
            Ok(Json(json!({"connection_id": connection_id, "delivered": n})).into_response())
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            format!(
                "no connection `{}` is registered",
                super::shorten(&connection_id)
            ),
        )),
    }
}

/// `POST /api/v1/users/{user_id}/send`
pub(crate) async fn to_user(
    key: ApiKey<Publish>,
    request_id: RequestId,
    State(app): State<AppState>,
    Path(user_id): Path<String>,
    Query(q): Query<TenantQuery>,
    JsonBody(b): JsonBody<DirectBody>,
) -> Result<Response, ApiError> {
    let tenant = b.check(q.tenant.as_deref())?.unwrap_or_default();
    let target = DirectTarget::User {
        tenant,
        user_id: user_id.clone(),
    };
    let n = app
        .node
        .send_direct(&target, b.event, b.data)
        .await?
        .unwrap_or(0);
    tracing::debug!(
        request_id = request_id.as_str(),
        api_key = key.name(),
        user_id = user_id.as_str(),
        delivered = n,
        "direct message sent"
    );
    Ok(Json(json!({"user_id": user_id, "delivered": n})).into_response())
}
