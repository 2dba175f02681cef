//! The node's side of the backend integration, continued (see `proxy.rs`):
//! `rpc` frames, and credentials verified with a context.

mod proxy_support;

use proxy_support::*;

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
