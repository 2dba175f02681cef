//! The test NATS server starts with JetStream, restarts with its store,
//! and restarts empty.

use herald_testkit::NatsServer;

#[test]
fn starts_with_jetstream_and_restarts() {
    let mut nats = NatsServer::start();
    assert!(nats.url().starts_with("nats://127.0.0.1:"));
    let jsz = nats.monitor("/jsz").expect("monitoring answers");
    assert!(jsz.contains("\"config\""), "{jsz}");
    nats.restart();
    assert!(nats.monitor("/varz").is_some());
    nats.restart_empty();
    assert!(nats.monitor("/varz").is_some());
}
