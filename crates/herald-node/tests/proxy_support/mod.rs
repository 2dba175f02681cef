//! What the node's backend-integration tests share (`proxy.rs`,
//! `proxy_rpc.rs`): a token verifier, a scripted access proxy, nodes with
//! `proxy` namespaces, and sessions driven without sockets.
#![allow(dead_code, unused_imports)]

pub use async_trait::async_trait;
pub use herald_broker_memory::MemoryBroker;
pub use herald_core::{
    AccessDecision, AccessProxy, CredentialContext, Identity, NamespaceConfig, Namespaces,
    ProxyFailure, RoomName, Rule, TokenVerifier, Verified, VerifyError,
};
pub use herald_node::{
    Limits, Node, NodeSettings, OpenOptions, Outbound, PreAuth, Session, Step, Transport,
    MAX_RPC_IN_FLIGHT,
};
pub use herald_protocol::CloseCode;
pub use parking_lot::Mutex;
pub use serde_json::value::RawValue;
pub use serde_json::{json, Value};
pub use std::sync::atomic::{AtomicUsize, Ordering};
pub use std::sync::Arc;
pub use std::time::{Duration, SystemTime, UNIX_EPOCH};
pub use tokio::sync::Notify;

/// Tokens are JSON identities `{"sub": ..., "roles": [...]}`; `down`
/// cannot be checked now; `opaque:<user>` names a user and the rooms
/// `extra:1` and `bad room`, and needs the transport `websocket`.
pub struct Verifier;

#[async_trait]
impl TokenVerifier for Verifier {
    async fn verify(&self, token: &str) -> Result<Identity, VerifyError> {
        let claims: serde_json::Map<String, Value> = serde_json::from_str(token)
            .map_err(|e| VerifyError::new("malformed", e.to_string()))?;
        let mut id = Identity::new(claims.get("sub").and_then(Value::as_str).unwrap_or("anon"));
        if let Some(Value::Array(roles)) = claims.get("roles") {
            id.roles = roles
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
        }
        id.claims = claims;
        Ok(id)
    }

    async fn verify_credential(
        &self,
        credential: &str,
        ctx: &CredentialContext,
    ) -> Result<Verified, VerifyError> {
        if credential == "down" {
            return Err(VerifyError::unavailable("the backend is down; retry"));
        }
        let Some(user) = credential.strip_prefix("opaque:") else {
            return self.verify(credential).await.map(Verified::from);
        };
        if ctx.transport != "websocket" {
            return Err(VerifyError::new("refused", "wrong transport"));
        }
        Ok(Verified {
            identity: Identity::new(user),
            rooms: vec!["extra:1".into(), "bad room".into()],
        })
    }
}

/// Answers by room (and `room event` for sends): `allow:*` rooms are
/// allowed, `deny:*` denied, both for 30 s; `nocache:*` allowed each
/// time; `down:*` unavailable; `reject:*` rejected 403. RPC methods:
/// `echo` answers `{"method","data","user_id","connection_id"}`, `wait`
/// waits for `release`, `bad` / `forbid` / `missing` are rejected 400 /
/// 403 / 404, `down` is unavailable.
#[derive(Default)]
pub struct Backend {
    pub calls: Mutex<Vec<String>>,
    pub release: Notify,
    pub waiting: AtomicUsize,
    /// `wait` calls whose future was dropped before it was released.
    pub abandoned: AtomicUsize,
}

impl Backend {
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().clone()
    }

    fn decide(&self, key: String) -> Result<AccessDecision, ProxyFailure> {
        let ttl = Some(Duration::from_secs(30));
        let answer = match key.split('-').next() {
            Some("allow") => Ok(AccessDecision {
                allow: true,
                cache_ttl: ttl,
            }),
            Some("deny") => Ok(AccessDecision {
                allow: false,
                cache_ttl: ttl,
            }),
            Some("nocache") => Ok(AccessDecision {
                allow: true,
                cache_ttl: None,
            }),
            Some("down") => Err(ProxyFailure::Unavailable(
                "connect to 10.9.8.7 refused".into(),
            )),
            _ => Err(ProxyFailure::Rejected {
                status: 403,
                message: "not a member of this chat".into(),
            }),
        };
        self.calls.lock().push(key);
        answer
    }
}

/// Counts a `wait` call dropped before its answer.
pub struct Abandon<'a>(&'a AtomicUsize, bool);

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl AccessProxy for Backend {
    async fn join(&self, _who: &Identity, room: &RoomName) -> Result<AccessDecision, ProxyFailure> {
        self.decide(room.id().to_owned())
    }

    async fn send(
        &self,
        _who: &Identity,
        room: &RoomName,
        event: &str,
    ) -> Result<AccessDecision, ProxyFailure> {
        self.decide(format!("{} {event}", room.id()))
    }

    async fn rpc(
        &self,
        who: &Identity,
        connection_id: &str,
        method: &str,
        data: &RawValue,
    ) -> Result<Box<RawValue>, ProxyFailure> {
        self.calls.lock().push(format!("rpc {method}"));
        let rejected = |status: u16| {
            Err(ProxyFailure::Rejected {
                status,
                message: format!("backend said {status}"),
            })
        };
        match method {
            "bad" => return rejected(400),
            "forbid" => return rejected(403),
            "missing" => return rejected(404),
            "down" => return Err(ProxyFailure::Unavailable("timed out after 2s".into())),
            "wait" => {
                let mut guard = Abandon(&self.abandoned, false);
                let released = self.release.notified();
                self.waiting.fetch_add(1, Ordering::SeqCst);
                released.await;
                guard.1 = true;
            }
            _ => {}
        }
        let data: Value = serde_json::from_str(data.get())
            .map_err(|e| ProxyFailure::Unavailable(e.to_string()))?;
        let answer = json!({"method": method, "data": data, "user_id": who.user_id, "connection_id": connection_id});
        serde_json::value::to_raw_value(&answer)
            .map_err(|e| ProxyFailure::Unavailable(e.to_string()))
    }
}

/// The shipped namespaces, `chat` (join and send `proxy`) and, with an
/// `inbox` template, `inbox` (join `proxy`, auto-joined by that template).
pub fn namespaces(inbox: Option<&str>) -> Namespaces {
    let mut ns = Namespaces::shipped();
    let proxy = NamespaceConfig {
        join: Rule::Proxy,
        send: Rule::Proxy,
        ..Default::default()
    };
    ns.insert("chat", proxy.clone());
    if let Some(template) = inbox {
        let auto_join = Some(template.to_owned());
        ns.insert("inbox", NamespaceConfig { auto_join, ..proxy });
    }
    ns
}

pub fn node_of(backend: Option<Arc<Backend>>, limits: Limits, namespaces: Namespaces) -> Node {
    Node::new(
        NodeSettings {
            node_id: "n1".into(),
            limits,
            namespaces,
            hooks: herald_core::HookSet::empty(),
            access_proxy: backend.map(|b| b as Arc<dyn AccessProxy>),
        },
        Arc::new(Verifier),
        |sink| Arc::new(MemoryBroker::new(sink)),
    )
}

pub fn node_with(backend: Option<Arc<Backend>>, limits: Limits) -> Node {
    node_of(backend, limits, namespaces(None))
}

/// A node whose users auto-join `inbox:allow-<sub>` (the backend allows it).
pub fn node_with_inbox(backend: Option<Arc<Backend>>, limits: Limits) -> Node {
    node_of(backend, limits, namespaces(Some("inbox:allow-{sub}")))
}

/// Opens a session as a transport that verified the credential itself
/// (over SSE, so a token refresh's context says `sse`).
pub async fn open_with(
    node: &Node,
    identity: Identity,
    options: OpenOptions,
) -> (Session, Vec<Value>) {
    let s = node
        .open_session(identity, &Transport::SSE, options)
        .await
        .expect("admitted");
    let f = frames(&s).await;
    (s, f)
}

pub async fn open(node: &Node, sub: &str) -> Session {
    open_with(node, Identity::new(sub), OpenOptions::default())
        .await
        .0
}

/// A session of `root` with role `admin` (passes every rule).
pub async fn open_admin(node: &Node) -> Session {
    let admin = Identity {
        roles: vec!["admin".into()],
        ..Identity::new("root")
    };
    open_with(node, admin, OpenOptions::default()).await.0
}

/// Every JSON frame queued so far (waits up to 5 s for the first).
pub async fn frames(session: &Session) -> Vec<Value> {
    let mut batch = Vec::new();
    let conn = session.connection();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.queue.next_batch(&mut batch)).await;
    batch
        .into_iter()
        .filter_map(|o| match o {
            Outbound::Frame { bytes, .. } => serde_json::from_slice(&bytes).ok(),
            Outbound::Ping | Outbound::Raw(_) => None,
        })
        .collect()
}

/// Sends `frame` and returns its one reply (room events aside).
pub async fn ask(session: &mut Session, frame: Value) -> Value {
    session.handle_text(&frame.to_string()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut replies = Vec::new();
    while replies.is_empty() && tokio::time::Instant::now() < deadline {
        replies.extend(
            frames(session)
                .await
                .into_iter()
                .filter(|f| f["type"] != "message" && f["type"] != "event"),
        );
    }
    assert_eq!(replies.len(), 1, "one reply to {frame}: {replies:?}");
    replies.remove(0)
}

/// Asks to join `room` with request id `id`; the answer.
pub async fn join(session: &mut Session, id: u64, room: &str) -> Value {
    ask(
        session,
        json!({"type": "join_room", "id": id, "room": room}),
    )
    .await
}

/// Asks to leave `room` with request id `id`; the answer.
pub async fn leave(session: &mut Session, id: u64, room: &str) -> Value {
    ask(
        session,
        json!({"type": "leave_room", "id": id, "room": room}),
    )
    .await
}

pub fn rooms_of(authenticated: &Value) -> Vec<String> {
    authenticated["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .map(|r| r["room"].as_str().expect("name").to_owned())
        .collect()
}
