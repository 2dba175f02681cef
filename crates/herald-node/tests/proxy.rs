//! The node's side of the backend integration, driven without sockets and
//! with a scripted access proxy (the whole server against the real test
//! backend is tested in crates/herald/tests): `proxy` rules and their
//! per-connection cache, `rpc` frames, the backend's extra rooms at open,
//! and credentials verified with a context.

use async_trait::async_trait;
use herald_broker_memory::MemoryBroker;
use herald_core::{
    AccessDecision, AccessProxy, CredentialContext, Identity, NamespaceConfig, Namespaces,
    ProxyFailure, RoomName, Rule, TokenVerifier, Verified, VerifyError,
};
use herald_node::{
    Limits, Node, NodeSettings, OpenOptions, Outbound, PreAuth, Session, Step, Transport,
    MAX_RPC_IN_FLIGHT,
};
use herald_protocol::CloseCode;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// Tokens are JSON identities `{"sub": ..., "roles": [...]}`; `down`
/// cannot be checked now; `opaque:<user>` names a user and the rooms
/// `extra:1` and `bad room`, and needs the transport `websocket`.
struct Verifier;

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
struct Backend {
    calls: Mutex<Vec<String>>,
    release: Notify,
    waiting: AtomicUsize,
    /// `wait` calls whose future was dropped before it was released.
    abandoned: AtomicUsize,
}

impl Backend {
    fn calls(&self) -> Vec<String> {
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
struct Abandon<'a>(&'a AtomicUsize, bool);

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
fn namespaces(inbox: Option<&str>) -> Namespaces {
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

fn node_of(backend: Option<Arc<Backend>>, limits: Limits, namespaces: Namespaces) -> Node {
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

fn node_with(backend: Option<Arc<Backend>>, limits: Limits) -> Node {
    node_of(backend, limits, namespaces(None))
}

/// A node whose users auto-join `inbox:allow-<sub>` (the backend allows it).
fn node_with_inbox(backend: Option<Arc<Backend>>, limits: Limits) -> Node {
    node_of(backend, limits, namespaces(Some("inbox:allow-{sub}")))
}

/// Opens a session as a transport that verified the credential itself
/// (over SSE, so a token refresh's context says `sse`).
async fn open_with(node: &Node, identity: Identity, options: OpenOptions) -> (Session, Vec<Value>) {
    let s = node
        .open_session(identity, &Transport::SSE, options)
        .await
        .expect("admitted");
    let f = frames(&s).await;
    (s, f)
}

async fn open(node: &Node, sub: &str) -> Session {
    open_with(node, Identity::new(sub), OpenOptions::default())
        .await
        .0
}

/// A session of `root` with role `admin` (passes every rule).
async fn open_admin(node: &Node) -> Session {
    let admin = Identity {
        roles: vec!["admin".into()],
        ..Identity::new("root")
    };
    open_with(node, admin, OpenOptions::default()).await.0
}

/// Every JSON frame queued so far (waits up to 5 s for the first).
async fn frames(session: &Session) -> Vec<Value> {
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
async fn ask(session: &mut Session, frame: Value) -> Value {
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
async fn join(session: &mut Session, id: u64, room: &str) -> Value {
    ask(
        session,
        json!({"type": "join_room", "id": id, "room": room}),
    )
    .await
}

/// Asks to leave `room` with request id `id`; the answer.
async fn leave(session: &mut Session, id: u64, room: &str) -> Value {
    ask(
        session,
        json!({"type": "leave_room", "id": id, "room": room}),
    )
    .await
}

fn rooms_of(authenticated: &Value) -> Vec<String> {
    authenticated["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .map(|r| r["room"].as_str().expect("name").to_owned())
        .collect()
}

#[tokio::test]
async fn proxy_joins_are_asked_once_per_ttl_allow_and_deny_alike() {
    let backend = Arc::new(Backend::default());
    let node = node_with(Some(backend.clone()), Limits::default());
    let mut s = open(&node, "42").await;
    for _ in 0..2 {
        let joined = join(&mut s, 1, "chat:allow-9").await;
        assert_eq!(joined["type"], "room_joined", "{joined}");
        let left = leave(&mut s, 2, "chat:allow-9").await;
        assert_eq!(left["type"], "room_left");
        let denied = join(&mut s, 3, "chat:deny-8").await;
        assert_eq!(
            (denied["code"].as_str(), denied["id"].as_u64()),
            (Some("forbidden"), Some(3))
        );
        let joined = join(&mut s, 4, "chat:nocache-7").await;
        assert_eq!(joined["type"], "room_joined");
        leave(&mut s, 5, "chat:nocache-7").await;
    }
    assert_eq!(
        backend.calls(),
        ["allow-9", "deny-8", "nocache-7", "nocache-7"],
        "cached answers are reused, uncached ones asked again"
    );
    // A refresh forgets the answers: they were for the old claims.
    let refreshed = ask(
        &mut s,
        json!({"type":"authenticate","id":6,"token":"{\"sub\":\"42\"}"}),
    )
    .await;
    assert_eq!(refreshed["type"], "authenticated", "{refreshed}");
    join(&mut s, 7, "chat:deny-8").await;
    assert_eq!(backend.calls().len(), 5);
    // Another connection has its own cache.
    let mut other = open(&node, "43").await;
    join(&mut other, 1, "chat:allow-9").await;
    assert_eq!(backend.calls().len(), 6);
    // Admins pass without asking.
    let mut admin = open_admin(&node).await;
    let joined = join(&mut admin, 1, "chat:deny-8").await;
    assert_eq!(joined["type"], "room_joined");
    assert_eq!(backend.calls().len(), 6);
}

#[tokio::test]
async fn a_backend_that_cannot_answer_or_refuses_is_a_clear_error() {
    let backend = Arc::new(Backend::default());
    let node = node_with(Some(backend.clone()), Limits::default());
    let mut s = open(&node, "42").await;
    for _ in 0..2 {
        let down = join(&mut s, 1, "chat:down-1").await;
        assert_eq!(down["code"], "unavailable", "{down}");
        let message = down["message"].as_str().expect("message");
        assert!(message.contains("retry"), "{message}");
        assert!(
            !message.contains("10.9.8.7"),
            "the backend's detail stays in the log"
        );
    }
    let refused = join(&mut s, 2, "chat:other-1").await;
    assert_eq!(refused["code"], "forbidden");
    assert_eq!(refused["message"], "not a member of this chat");
    assert_eq!(backend.calls().len(), 3, "failures are not cached");
    assert!(!s
        .connection()
        .in_room(&RoomName::parse("chat:down-1").expect("room")));
}

#[tokio::test]
async fn without_an_access_proxy_proxy_rules_deny() {
    let node = node_with(None, Limits::default());
    let mut s = open(&node, "42").await;
    let denied = join(&mut s, 1, "chat:allow-9").await;
    assert_eq!(denied["code"], "forbidden");
    let off = ask(&mut s, json!({"type":"rpc","id":2,"method":"echo"})).await;
    assert_eq!(off["code"], "not_found");
    assert_eq!(off["message"], "rpc is not enabled (proxy.rpc_url)");
}

#[tokio::test]
async fn proxy_sends_are_asked_per_event() {
    let backend = Arc::new(Backend::default());
    let node = node_with(Some(backend.clone()), Limits::default());
    let mut s = open(&node, "42").await;
    join(&mut s, 1, "chat:allow-9").await;
    for _ in 0..2 {
        let sent = ask(
            &mut s,
            json!({"type":"send_message","id":2,"room":"chat:allow-9","data":1}),
        )
        .await;
        assert_eq!(sent["type"], "ack", "{sent}");
    }
    let mut other = open(&node, "43").await;
    join(&mut other, 1, "chat:deny-1").await;
    let mut admin = open_admin(&node).await;
    join(&mut admin, 1, "chat:deny-1").await;
    let denied = ask(
        &mut admin,
        json!({"type":"send_message","id":2,"room":"chat:deny-1","event":"typing","data":1}),
    )
    .await;
    assert_eq!(denied["type"], "ack", "admins send without asking");
    assert_eq!(backend.calls(), ["allow-9", "allow-9 message", "deny-1"]);
}

#[tokio::test]
async fn send_answers_are_cached_by_event() {
    let backend = Arc::new(Backend::default());
    let node = node_with(Some(backend.clone()), Limits::default());
    let mut s = open_with(
        &node,
        Identity::new("42"),
        OpenOptions {
            rooms: vec!["chat:deny-5".into()],
            ..OpenOptions::default()
        },
    )
    .await
    .0;
    for event in ["typing", "typing", "message"] {
        let denied = ask(
            &mut s,
            json!({"type":"send_message","id":1,"room":"chat:deny-5","event":event,"data":1}),
        )
        .await;
        assert_eq!(denied["code"], "forbidden", "{denied}");
    }
    assert_eq!(backend.calls(), ["deny-5 typing", "deny-5 message"]);
}

#[tokio::test]
async fn auto_join_rooms_with_a_proxy_rule_ask_the_backend() {
    let backend = Arc::new(Backend::default());
    let node = node_with_inbox(Some(backend.clone()), Limits::default());
    let (_s, f) = open_with(&node, Identity::new("42"), OpenOptions::default()).await;
    assert_eq!(rooms_of(&f[0]), ["global", "inbox:allow-42", "user:42"]);
    assert_eq!(backend.calls(), ["allow-42"]);
    for template in ["inbox:deny-{sub}", "inbox:down-{sub}"] {
        let node = node_of(
            Some(backend.clone()),
            Limits::default(),
            namespaces(Some(template)),
        );
        let (_s, f) = open_with(&node, Identity::new("42"), OpenOptions::default()).await;
        assert_eq!(
            rooms_of(&f[0]),
            ["global", "user:42"],
            "{template} is skipped"
        );
    }
    assert_eq!(backend.calls(), ["allow-42", "deny-42", "down-42"]);
}

#[tokio::test]
async fn the_backends_rooms_join_at_open_without_rules_within_the_room_cap() {
    let backend = Arc::new(Backend::default());
    let node = node_with_inbox(Some(backend.clone()), Limits::default());
    let options = OpenOptions {
        rooms: vec![
            "secret:1".into(),
            "bad room".into(),
            "user:42".into(),
            "chat:deny-3".into(),
        ],
        announce_rooms: true,
        ..OpenOptions::default()
    };
    let (s, f) = open_with(&node, Identity::new("42"), options).await;
    let listed = rooms_of(&f[0]);
    assert_eq!(
        listed,
        [
            "global",
            "inbox:allow-42",
            "user:42",
            "secret:1",
            "chat:deny-3"
        ]
    );
    let announced: Vec<&str> = f[1..]
        .iter()
        .filter(|f| f["type"] == "room_joined")
        .map(|f| f["room"].as_str().expect("room"))
        .collect();
    assert_eq!(announced, listed, "an SSE-style open announces every room");
    assert_eq!(
        backend.calls(),
        ["allow-42"],
        "the backend's rooms are not asked about"
    );
    assert!(s
        .connection()
        .in_room(&RoomName::parse("secret:1").expect("room")));

    let capped = node_with_inbox(
        Some(backend.clone()),
        Limits {
            max_rooms_per_connection: 4,
            ..Limits::default()
        },
    );
    let options = OpenOptions {
        rooms: vec!["secret:1".into(), "secret:2".into()],
        ..OpenOptions::default()
    };
    let (_s, f) = open_with(&capped, Identity::new("42"), options).await;
    assert_eq!(
        rooms_of(&f[0]),
        ["global", "inbox:allow-42", "user:42", "secret:1"]
    );
}

#[tokio::test]
async fn rpc_round_trips_and_maps_the_backends_errors() {
    let backend = Arc::new(Backend::default());
    let node = node_with(Some(backend.clone()), Limits::default());
    let mut s = open(&node, "42").await;
    let result = ask(
        &mut s,
        json!({"type":"rpc","id":"r1","method":"echo","data":{"chat":9}}),
    )
    .await;
    assert_eq!(result["type"], "rpc_result", "{result}");
    assert_eq!(result["id"], "r1");
    assert_eq!(result["data"]["data"], json!({"chat": 9}));
    assert_eq!(result["data"]["user_id"], "42");
    assert_eq!(result["data"]["connection_id"], s.connection().id.as_ref());
    for (method, code) in [
        ("bad", "bad_request"),
        ("forbid", "forbidden"),
        ("missing", "not_found"),
        ("down", "unavailable"),
    ] {
        let e = ask(&mut s, json!({"type":"rpc","id":7,"method":method})).await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str(), e["id"].as_u64()),
            (Some("error"), Some(code), Some(7)),
            "{e}"
        );
    }
    let no_id = ask(&mut s, json!({"type":"rpc","method":"echo"})).await;
    assert_eq!(no_id["code"], "bad_request");
}

/// Waits until `cond` holds, for at most 5 s.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn rpc_calls_run_beside_other_frames_bounded_and_end_with_the_session() {
    let backend = Arc::new(Backend::default());
    let node = node_with(Some(backend.clone()), Limits::default());
    let mut s = open(&node, "42").await;
    for i in 0..MAX_RPC_IN_FLIGHT {
        s.handle_text(&json!({"type":"rpc","id":i,"method":"wait"}).to_string())
            .await;
    }
    until("every call to reach the backend", || {
        backend.waiting.load(Ordering::SeqCst) == MAX_RPC_IN_FLIGHT
    })
    .await;
    // The read loop is free: a ping is answered while the calls wait.
    let pong = ask(&mut s, json!({"type":"ping","id":"p"})).await;
    assert_eq!(pong["type"], "pong");
    let refused = ask(&mut s, json!({"type":"rpc","id":99,"method":"echo"})).await;
    assert_eq!(
        (refused["code"].as_str(), refused["id"].as_u64()),
        (Some("limit_exceeded"), Some(99))
    );
    backend.release.notify_waiters();
    let mut answered = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while answered.len() < MAX_RPC_IN_FLIGHT && tokio::time::Instant::now() < deadline {
        answered.extend(
            frames(&s)
                .await
                .into_iter()
                .filter(|f| f["type"] == "rpc_result"),
        );
    }
    assert_eq!(answered.len(), MAX_RPC_IN_FLIGHT);
    // The places are given back: another call goes through.
    let again = ask(&mut s, json!({"type":"rpc","id":100,"method":"echo"})).await;
    assert_eq!(again["type"], "rpc_result");

    // A call still waiting when the session ends is dropped.
    s.handle_text(&json!({"type":"rpc","id":1,"method":"wait"}).to_string())
        .await;
    until("the call to reach the backend", || {
        backend.waiting.load(Ordering::SeqCst) == MAX_RPC_IN_FLIGHT + 1
    })
    .await;
    s.end("client_closed").await;
    until("the call to be dropped", || {
        backend.abandoned.load(Ordering::SeqCst) == 1
    })
    .await;
}

#[tokio::test]
async fn an_authenticate_frame_is_verified_with_the_context_and_joins_the_backends_rooms() {
    let node = node_with_inbox(Some(Arc::new(Backend::default())), Limits::default());
    let mut pre = PreAuth::new(&node);
    pre.set_context(CredentialContext::for_transport("websocket"));
    let frame = json!({"type":"authenticate","id":1,"token":"opaque:7"}).to_string();
    let Step::Authenticated {
        identity,
        reply_to,
        rooms,
    } = pre.handle_message(frame.as_bytes()).await
    else {
        panic!("the credential verifies");
    };
    assert_eq!(rooms, ["extra:1", "bad room"]);
    let s = pre
        .open(
            identity,
            reply_to,
            &Transport::WEBSOCKET,
            OpenOptions::default(),
        )
        .await
        .expect("opens");
    let f = frames(&s).await;
    assert_eq!(f[0]["id"], 1);
    assert_eq!(
        rooms_of(&f[0]),
        ["global", "inbox:allow-7", "user:7", "extra:1"]
    );
    // A refresh is verified with the context the connection opened with,
    // and joins no new rooms.
    let mut s = s;
    let refreshed = ask(
        &mut s,
        json!({"type":"authenticate","id":3,"token":"opaque:7"}),
    )
    .await;
    assert_eq!(
        (
            refreshed["type"].as_str(),
            refreshed["rooms"].as_array().map(Vec::len)
        ),
        (Some("authenticated"), Some(0))
    );
    let (mut sse, _) = open_with(&node, Identity::new("7"), OpenOptions::default()).await;
    let refused = ask(
        &mut sse,
        json!({"type":"authenticate","id":4,"token":"opaque:7"}),
    )
    .await;
    assert_eq!(refused["code"], "unauthorized", "{refused}");
    let down = ask(
        &mut sse,
        json!({"type":"authenticate","id":5,"token":"down"}),
    )
    .await;
    assert_eq!(down["code"], "unavailable", "{down}");

    // Another transport: the verifier sees it and refuses.
    let mut pre = PreAuth::new(&node);
    pre.set_context(CredentialContext::for_transport("sse"));
    let Step::Close(refusal) = pre.handle_message(frame.as_bytes()).await else {
        panic!("refused");
    };
    assert_eq!(refusal.code, CloseCode::Unauthorized);

    // A backend that cannot answer: `unavailable`, then 1013.
    let mut pre = PreAuth::new(&node);
    let frame = json!({"type":"authenticate","id":2,"token":"down"}).to_string();
    let Step::Close(refusal) = pre.handle_message(frame.as_bytes()).await else {
        panic!("refused");
    };
    assert_eq!(refusal.code, CloseCode::TryAgainLater);
    let reply: Value = serde_json::from_slice(&refusal.reply.expect("a reply")).expect("json");
    assert_eq!(
        (reply["code"].as_str(), reply["id"].as_u64()),
        (Some("unavailable"), Some(2))
    );
}

#[tokio::test]
async fn a_verified_expiry_closes_the_connection_4012() {
    let node = node_with(None, Limits::default());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let identity = Identity {
        expires_at: Some(now + 1),
        ..Identity::new("42")
    };
    let (s, _) = open_with(&node, identity, OpenOptions::default()).await;
    let conn = s.connection().clone();
    until("the expiry", || {
        conn.queue.closing() == Some(CloseCode::TokenExpired)
    })
    .await;
}

#[tokio::test]
async fn with_an_access_proxy_every_claim_is_kept_for_the_backend() {
    let node = node_with(Some(Arc::new(Backend::default())), Limits::default());
    let mut identity = Identity::new("42");
    identity.claims.insert("org".into(), json!("acme"));
    let (s, _) = open_with(&node, identity.clone(), OpenOptions::default()).await;
    assert_eq!(
        s.connection().identity().claims.get("org"),
        Some(&json!("acme"))
    );
    let node = node_with(None, Limits::default());
    let (s, _) = open_with(&node, identity, OpenOptions::default()).await;
    assert_eq!(s.connection().identity().claims.get("org"), None);
}
