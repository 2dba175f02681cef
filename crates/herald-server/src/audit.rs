//! The audit log: one structured line at info on the tracing target
//! `herald::audit` for every call of an admin route (disconnect,
//! connections, presence, history, stats, token minting), refused ones
//! included. Each line names the API key by its name
//! (`auth.api_keys[].name`; `unknown` when no key matched) and never holds
//! the key itself, nor any header or body. Publishes are not audited line
//! by line (their volume would drown the log); they carry the request id
//! and the key's name in their debug lines instead.
//!
//! Routes opt in with [`admin`], which wraps them in [`record`]; the key
//! extractor and the handler add what only they know (the key's name, the
//! minted token's subject) to the call's [`Note`].

use crate::request_id::RequestId;
use crate::AppState;
use axum::extract::{ConnectInfo, FromRequestParts, Query, RawPathParams, Request};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::MethodRouter;
use axum::RequestExt;
use herald_protocol::ErrorCode;
use serde::Deserialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// Longest value (path, room, user id, tenant) written to a line, in
/// characters; longer ones are cut and end with `…`.
const MAX_FIELD_CHARS: usize = 128;
/// Written for a field the call does not have.
const NONE: &str = "-";

/// Audits every call of `route` that reaches one of its methods under
/// `action` (e.g. `stats.read`). A wrong method (405) is not an admin call
/// and is not audited.
pub(crate) fn admin(action: &'static str, route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.route_layer(axum::middleware::from_fn(
        move |request: Request, next: Next| record(action, request, next),
    ))
}

/// What the extractors and the handler of an audited call add to its line.
/// Outside audited routes it is detached: setting it does nothing.
#[derive(Clone, Default)]
pub(crate) struct Note(Arc<NoteFields>);

#[derive(Default)]
struct NoteFields {
    api_key: OnceLock<Arc<str>>,
    resource: OnceLock<String>,
    tenant: OnceLock<String>,
}

impl Note {
    /// The name of the key the request presented (valid, whatever its
    /// scopes).
    pub(crate) fn set_api_key(&self, name: Arc<str>) {
        let _ = self.0.api_key.set(name);
    }

    /// What the call acts on, when the path does not say it (a minted
    /// token's subject): `kind:id`.
    pub(crate) fn set_resource(&self, kind: &str, id: &str) {
        let _ = self.0.resource.set(format!("{kind}:{}", clip(id)));
    }

    /// The tenant the call acts in, when the query does not say it.
    pub(crate) fn set_tenant(&self, tenant: &str) {
        let _ = self.0.tenant.set(clip(tenant));
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Note {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(parts.extensions.get::<Note>().cloned().unwrap_or_default())
    }
}

/// `s`, cut to [`MAX_FIELD_CHARS`].
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(MAX_FIELD_CHARS).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

#[derive(Deserialize)]
struct TenantQuery {
    tenant: Option<String>,
}

/// One audited call, logged once: when its answer is ready, or when it is
/// dropped without one (a panicking handler, a client gone mid-call).
struct Call {
    action: &'static str,
    started: Instant,
    request_id: String,
    method: String,
    path: String,
    resource: String,
    tenant: String,
    remote_addr: String,
    note: Note,
    logged: bool,
}

impl Call {
    fn log(&mut self, status: u16, outcome: &str) {
        self.logged = true;
        let fields = &self.note.0;
        let api_key = fields.api_key.get().map_or("unknown", |name| &**name);
        let resource = fields.resource.get().unwrap_or(&self.resource);
        let tenant = fields.tenant.get().unwrap_or(&self.tenant);
        let duration_ms = self.started.elapsed().as_micros() as f64 / 1000.0;
        // `&str` fields: the text format quotes and escapes them, so a
        // room or user id cannot forge a line.
        tracing::info!(
            target: "herald::audit",
            request_id = self.request_id.as_str(),
            api_key,
            action = self.action,
            method = self.method.as_str(),
            path = self.path.as_str(),
            resource = resource.as_str(),
            tenant = tenant.as_str(),
            status,
            outcome,
            remote_addr = self.remote_addr.as_str(),
            duration_ms,
            "admin API call"
        );
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.logged {
            return;
        }
        // The panic guard outside answers 500 `internal`.
        if std::thread::panicking() {
            self.log(500, ErrorCode::Internal.as_str());
        } else {
            self.log(0, "client_closed");
        }
    }
}

/// The path parameters as `kind:value` (`user:alice`, `room:chat:1`,
/// `connection:…`), or `-` for a route without any.
async fn path_resource(request: &mut Request) -> String {
    let Ok(params) = request.extract_parts::<RawPathParams>().await else {
        return NONE.to_owned();
    };
    let parts: Vec<String> = params
        .iter()
        .map(|(name, value)| {
            let kind = name.strip_suffix("_id").unwrap_or(name);
            format!("{kind}:{}", clip(value))
        })
        .collect();
    if parts.is_empty() {
        NONE.to_owned()
    } else {
        parts.join(" ")
    }
}

/// Logs the call around the rest of the stack (see [`admin`]).
async fn record(action: &'static str, mut request: Request, next: Next) -> Response {
    let note = Note::default();
    request.extensions_mut().insert(note.clone());
    let tenant = Query::<TenantQuery>::try_from_uri(request.uri())
        .ok()
        .and_then(|Query(q)| q.tenant)
        .map_or_else(|| NONE.to_owned(), |t| clip(&t));
    let mut call = Call {
        action,
        started: Instant::now(),
        request_id: request
            .extensions()
            .get::<RequestId>()
            .map_or_else(|| NONE.to_owned(), ToString::to_string),
        method: request.method().to_string(),
        path: clip(request.uri().path()),
        resource: path_resource(&mut request).await,
        tenant,
        remote_addr: request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| NONE.to_owned(), |ConnectInfo(addr)| addr.to_string()),
        note,
        logged: false,
    };
    let response = next.run(request).await;
    let status = response.status();
    let outcome = if status.is_success() {
        "ok"
    } else {
        // The framework's own rejections get their JSON body (and code)
        // further out, from the status.
        response
            .extensions()
            .get::<ErrorCode>()
            .copied()
            .unwrap_or_else(|| crate::ops::status_error_code(status))
            .as_str()
    };
    call.log(status.as_u16(), outcome);
    response
}
