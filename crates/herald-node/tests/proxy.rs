//! The node's side of the backend integration, driven without sockets and
//! with a scripted access proxy (the whole server against the real test
//! backend is tested in crates/herald/tests): `proxy` rules, their
//! per-connection cache, and the backend's extra rooms at open. RPC and
//! credentials verified with a context are in `proxy_rpc.rs`.

mod proxy_support;

use proxy_support::*;

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
