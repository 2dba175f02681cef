//! What the NATS engine relies on in nats-server 2.9.10's JetStream, kept
//! as tests (the probe that checked them before the engine was written).

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use herald_testkit::NatsServer;
use std::time::Duration;

async fn setup(server: &NatsServer) -> (async_nats::Client, jetstream::Context, stream::Stream) {
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let stream = js
        .create_stream(stream::Config {
            name: "p-rooms".into(),
            subjects: vec!["p.room.*".into()],
            storage: stream::StorageType::File,
            allow_direct: true,
            duplicate_window: Duration::from_secs(300),
            republish: Some(stream::Republish {
                source: "p.room.*".into(),
                destination: "p.deliver.{{wildcard(1)}}".into(),
                headers_only: false,
            }),
            ..Default::default()
        })
        .await
        .expect("2.9.10 accepts RePublish with a {{wildcard(1)}} destination");
    (client, js, stream)
}

fn publish(body: &str) -> jetstream::message::PublishMessage {
    jetstream::message::PublishMessage::build().payload(Bytes::from(body.to_owned()))
}

#[tokio::test]
async fn republish_delivers_accepted_messages_with_their_headers() {
    let server = NatsServer::start();
    let (client, js, _stream) = setup(&server).await;
    let mut sub = client.subscribe("p.deliver.abc").await.expect("subscribe");
    client.flush().await.expect("flush");
    let ack = js
        .send_publish("p.room.abc", publish("one").header("Herald-Offset", "1"))
        .await
        .expect("publish")
        .await
        .expect("ack");
    let refused = js
        .send_publish(
            "p.room.abc",
            publish("no").expected_last_subject_sequence(99),
        )
        .await
        .expect("publish")
        .await;
    assert!(refused.is_err(), "a refused message is not stored");
    js.send_publish("p.room.abc", publish("two"))
        .await
        .expect("publish")
        .await
        .expect("ack");
    let got = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("republished")
        .expect("a message");
    assert_eq!(got.payload, "one");
    let headers = got.headers.expect("headers");
    assert_eq!(headers.get("Herald-Offset").map(|v| v.as_str()), Some("1"));
    assert_eq!(
        headers.get("Nats-Stream").map(|v| v.as_str()),
        Some("p-rooms")
    );
    assert_eq!(
        headers.get("Nats-Sequence").map(|v| v.as_str().to_owned()),
        Some(ack.sequence.to_string())
    );
    println!("republished headers: {headers:?}");
    let second = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("republished")
        .expect("a message");
    assert_eq!(second.payload, "two", "the refused message never came");
}

#[tokio::test]
async fn expected_last_subject_sequence_orders_publishers() {
    let server = NatsServer::start();
    let (_client, js, stream) = setup(&server).await;
    let send = |subject: &'static str, m: jetstream::message::PublishMessage| {
        let js = js.clone();
        async move { js.send_publish(subject, m).await.expect("send").await }
    };
    let first = send("p.room.a", publish("1").expected_last_subject_sequence(0))
        .await
        .expect("0 = no message yet");
    send("p.room.b", publish("x")).await.expect("other subject");
    let again = send("p.room.a", publish("2").expected_last_subject_sequence(0)).await;
    let kind = again.map(drop).map_err(|e| e.kind());
    println!("expected 0 on a subject with messages: {kind:?}");
    assert_eq!(kind, Err(PublishErrorKind::WrongLastSequence));
    let second = send(
        "p.room.a",
        publish("2").expected_last_subject_sequence(first.sequence),
    )
    .await
    .expect("the subject's last sequence");
    let stale = send(
        "p.room.a",
        publish("3").expected_last_subject_sequence(first.sequence),
    )
    .await;
    assert_eq!(
        stale.map(drop).map_err(|e| e.kind()),
        Err(PublishErrorKind::WrongLastSequence)
    );
    let last = stream
        .direct_get_last_for_subject("p.room.a")
        .await
        .expect("direct get");
    assert_eq!(last.sequence, second.sequence);
    assert_eq!(last.payload, "2");
    let none = stream.direct_get_last_for_subject("p.room.zzz").await;
    assert!(none.is_err(), "no message: not found");
}

#[tokio::test]
async fn duplicate_message_ids_answer_the_original_before_the_sequence_check() {
    let server = NatsServer::start();
    let (_client, js, _stream) = setup(&server).await;
    let send = |m: jetstream::message::PublishMessage| {
        let js = js.clone();
        async move { js.send_publish("p.room.a", m).await.expect("send").await }
    };
    let first = send(
        publish("1")
            .message_id("t.k")
            .expected_last_subject_sequence(0),
    )
    .await
    .expect("first");
    send(publish("2").expected_last_subject_sequence(first.sequence))
        .await
        .expect("second");
    let dup = send(
        publish("1")
            .message_id("t.k")
            .expected_last_subject_sequence(0),
    )
    .await
    .expect("a duplicate is acknowledged, not refused");
    assert!(dup.duplicate);
    assert_eq!(dup.sequence, first.sequence, "the original's sequence");
    // A refused publish does not record its id: its retry is stored.
    let refused = send(
        publish("r")
            .message_id("t.r")
            .expected_last_subject_sequence(1),
    )
    .await;
    assert_eq!(
        refused.map(drop).map_err(|e| e.kind()),
        Err(PublishErrorKind::WrongLastSequence)
    );
    let retried = send(publish("r").message_id("t.r")).await.expect("retry");
    assert!(!retried.duplicate, "the refused attempt left no id behind");
    let elsewhere = js
        .send_publish("p.room.b", publish("x").message_id("t.k"))
        .await
        .expect("send")
        .await
        .expect("ack");
    assert!(elsewhere.duplicate && elsewhere.sequence == first.sequence);
}

#[tokio::test]
async fn purge_keeps_the_newest_of_one_subject() {
    let server = NatsServer::start();
    let (_client, js, stream) = setup(&server).await;
    let mut seqs = Vec::new();
    for i in 0..10 {
        for subject in ["p.room.a", "p.room.b"] {
            let mut h = HeaderMap::new();
            h.insert("Herald-Offset", (i + 1).to_string().as_str());
            let ack = js
                .send_publish(subject, publish("m").headers(h))
                .await
                .expect("send")
                .await
                .expect("ack");
            if subject == "p.room.a" {
                seqs.push(ack.sequence);
            }
        }
    }
    let purged = stream
        .purge()
        .filter("p.room.a")
        .keep(3)
        .await
        .expect("purge with keep and filter");
    assert_eq!(purged.purged, 7);
    let first = stream
        .direct_get_next_for_subject("p.room.a", None)
        .await
        .expect("first left");
    assert_eq!(first.sequence, seqs[7]);
    let next = stream
        .direct_get_next_for_subject("p.room.a", Some(first.sequence + 1))
        .await
        .expect("next by subject");
    assert_eq!(next.sequence, seqs[8]);
    let purged = stream
        .purge()
        .filter("p.room.b")
        .sequence(seqs[5])
        .await
        .expect("purge below a sequence");
    println!("purged below seq: {}", purged.purged);
    assert!(purged.purged > 0);
    let info = stream.get_info().await.expect("info");
    println!("stream state: {:?}", info.state);
}
