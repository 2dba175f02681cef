//! Authentication to NATS: user and password, or a token. The right
//! credentials work; wrong ones leave the engine not ready, and the
//! connection's events (which the client logs) say why.

mod broker_support;

use async_nats::{Event, ServerError};
use broker_support::{prefix, request, room, settings, wait_until, Node, MINUTE};
use herald_broker_nats::NatsSettings;
use herald_core::Broker;
use herald_testkit::NatsServer;
use std::time::Duration;

/// Starts a node with `settings` and waits for the server's refusal.
async fn refused(settings: NatsSettings) {
    let node = Node::start_with(settings);
    let mut events = node.clients.events();
    let refusal = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(Event::ServerError(ServerError::AuthorizationViolation)) => return true,
                Ok(Event::ClientError(e)) if e.to_string().contains("authorization") => {
                    return true
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    assert_eq!(refusal, Ok(true), "the refusal is reported");
    assert!(!node.broker.is_ready());
    assert!(node.broker.position(&room("a:1")).await.is_err());
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_and_password() {
    let server = NatsServer::start_with(&["--user", "herald", "--pass", "s3cret"]);
    let prefix = prefix("userpass");
    let mut good = settings(&server.url(), &prefix, "a");
    good.user_password = Some(("herald".into(), "s3cret".into()));
    let node = Node::start_with(good);
    let broker = node.broker.clone();
    wait_until("ready with the right password", || broker.is_ready()).await;
    node.broker
        .publish(request(&room("a:1"), 10, MINUTE))
        .await
        .expect("publish");
    node.stop().await;
    let mut bad = settings(&server.url(), &prefix, "b");
    bad.user_password = Some(("herald".into(), "wrong".into()));
    refused(bad).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token() {
    let server = NatsServer::start_with(&["--auth", "t0ken"]);
    let prefix = prefix("token");
    let mut good = settings(&server.url(), &prefix, "a");
    good.token = Some("t0ken".into());
    let node = Node::start_with(good);
    let broker = node.broker.clone();
    wait_until("ready with the right token", || broker.is_ready()).await;
    node.stop().await;
    let mut bad = settings(&server.url(), &prefix, "b");
    bad.token = Some("nope".into());
    refused(bad).await;
}
