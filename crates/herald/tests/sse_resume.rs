//! `Last-Event-ID` on the SSE transport (PROTOCOL.md 6, issue #3): clear
//! 400s for malformed ids, and a gap-free resume across several rooms, by
//! header and by the `last_event_id` query parameter.

mod common;

use common::sse::{
    bearer, id_offsets, open_ok, open_sse, parse_id, read_opening, stream_client, FEED, HOUR,
};
use common::*;
use serde_json::json;
use std::collections::BTreeMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_last_event_id_is_a_clear_400() {
    let node = TestNode::start(FEED).await;
    let token = node.user_token("erin");
    let auth = bearer(&token);
    let cases: [(&str, &str); 9] = [
        ("garbage", "entry 1"),
        ("feed:1~abc", "expected room~epoch~offset"),
        ("feed:1~abc~1~2", "expected room~epoch~offset"),
        ("bad room~abc~1", "entry 1"),
        ("feed:1~~1", "epoch"),
        ("feed:1~ab-c~1", "epoch"),
        ("feed:1~abc~-1", "offset"),
        ("feed:1~abc~x", "offset"),
        ("global~abc~1,oops", "entry 2"),
    ];
    for (bad, needle) in cases {
        for via_query in [false, true] {
            let (q, hs) = if via_query {
                (
                    format!("?rooms=feed:1&last_event_id={}", bad.replace(' ', "%20")),
                    vec![("Authorization", auth.as_str())],
                )
            } else {
                (
                    "?rooms=feed:1".to_owned(),
                    vec![("Authorization", auth.as_str()), ("Last-Event-ID", bad)],
                )
            };
            match open_sse(&node, &q, &hs).await {
                Ok(mut s) => panic!(
                    "Last-Event-ID `{bad}` (query: {via_query}) opened a stream: {:?}",
                    s.next_msg(FRAME_WAIT).await
                ),
                Err((status, body)) => {
                    assert_eq!(status, 400, "`{bad}`: {body}");
                    assert_eq!(body["error"]["code"], "bad_request", "`{bad}`: {body}");
                    let msg = body["error"]["message"].as_str().unwrap_or_default();
                    assert!(msg.contains("Last-Event-ID"), "`{bad}`: {body}");
                    assert!(
                        msg.contains(needle),
                        "`{bad}` should mention `{needle}`: {body}"
                    );
                }
            }
        }
    }
    // Not ASCII (an opaque header value).
    let req = stream_client()
        .get(format!("{}/sse", node.url()))
        .header("Authorization", auth.as_str())
        .header(
            "Last-Event-ID",
            reqwest::header::HeaderValue::from_bytes(b"feed:1~ab\xffc~1").expect("opaque"),
        );
    let resp = tokio::time::timeout(FRAME_WAIT, req.send())
        .await
        .expect("timed out")
        .expect("request");
    assert_eq!(resp.status().as_u16(), 400, "non-ASCII Last-Event-ID");
    // Far too long.
    let huge = format!("feed:1~{}~1", "a".repeat(60)).repeat(2000);
    let huge = huge.replace("~1feed", "~1,feed");
    let r = open_sse(
        &node,
        "",
        &[("Authorization", auth.as_str()), ("Last-Event-ID", &huge)],
    )
    .await;
    match r {
        Ok(_) => panic!("a {} byte Last-Event-ID opened a stream", huge.len()),
        Err((status, body)) => assert!(
            status == 400 || status == 431,
            "oversized Last-Event-ID: {status} {body}"
        ),
    }

    // The node still serves, and an empty Last-Event-ID is a fresh start.
    let (s, _) = node.get("/health").await;
    assert_eq!(s, 200);
    let mut st = open_ok(
        &node,
        "?rooms=feed:1",
        &[("Authorization", auth.as_str()), ("Last-Event-ID", "")],
    )
    .await;
    let (_, joined) = read_opening(&mut st, 3).await;
    assert!(joined["feed:1"].json().get("recovered").is_none());
    node.publish("feed:1", "e", json!(1)).await;
    st.expect_event("event", FRAME_WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_resumes_two_rooms_gap_free() {
    let node = TestNode::start(FEED).await;
    let token = node.token("ivy", &[], None, json!({"projects": [1, 2]}), HOUR);
    let auth = bearer(&token);
    let q = "?rooms=project:1,project:2";
    let mut s = open_ok(&node, q, &[("Authorization", auth.as_str())]).await;
    let (_, joined) = read_opening(&mut s, 4).await;
    assert_eq!(
        joined.keys().cloned().collect::<Vec<_>>(),
        vec!["global", "project:1", "project:2", "user:ivy"]
    );
    for i in 1..=3 {
        node.publish("project:1", "p1", json!({"i": i})).await;
        node.publish("project:2", "p2", json!({"i": i})).await;
    }
    let mut got = Vec::new();
    for _ in 0..6 {
        got.push(s.expect_event("event", FRAME_WAIT).await);
    }
    let last_id = got.last().unwrap().id.clone().expect("id");
    assert_eq!(
        id_offsets(&last_id),
        BTreeMap::from([
            ("global".to_owned(), 0),
            ("project:1".to_owned(), 3),
            ("project:2".to_owned(), 3),
            ("user:ivy".to_owned(), 0),
        ]),
        "id `{last_id}`"
    );
    drop(s);

    // Missed while away: two per project room and one in the user room.
    for i in 4..=5 {
        node.publish("project:1", "p1", json!({"i": i})).await;
        node.publish("project:2", "p2", json!({"i": i})).await;
    }
    node.publish("user:ivy", "note", json!({"n": 1})).await;

    let mut s = open_ok(
        &node,
        q,
        &[
            ("Authorization", auth.as_str()),
            ("Last-Event-ID", &last_id),
        ],
    )
    .await;
    let (_, joined) = read_opening(&mut s, 4).await;
    for (room, replayed) in [
        ("project:1", 2),
        ("project:2", 2),
        ("user:ivy", 1),
        ("global", 0),
    ] {
        let j = joined[room].json();
        assert_eq!(j["recovered"], true, "{room}: {j}");
        assert_eq!(j["replayed"], replayed, "{room}: {j}");
    }
    // The replayed events (2 + 2 + 1, as the opening said); the live event
    // below is the sentinel that no duplicate came after them.
    let mut after = std::mem::take(&mut s.early);
    let early = after.iter().filter(|m| m.event == "event").count();
    after.extend(s.collect_events(5 - early, FRAME_WAIT).await);
    let mut evs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for m in after.iter().filter(|m| m.event == "event") {
        let j = m.json();
        evs.entry(j["room"].as_str().unwrap().to_owned())
            .or_default()
            .push(j["offset"].as_u64().unwrap());
    }
    assert_eq!(
        evs,
        BTreeMap::from([
            ("project:1".to_owned(), vec![4, 5]),
            ("project:2".to_owned(), vec![4, 5]),
            ("user:ivy".to_owned(), vec![1]),
        ]),
        "exactly the missed events: {after:?}"
    );
    let last_id = s
        .seen
        .iter()
        .rev()
        .find_map(|m| m.id.clone())
        .expect("an id");
    assert_eq!(
        id_offsets(&last_id),
        BTreeMap::from([
            ("global".to_owned(), 0),
            ("project:1".to_owned(), 5),
            ("project:2".to_owned(), 5),
            ("user:ivy".to_owned(), 1),
        ]),
        "id after replay `{last_id}`"
    );
    // Live events continue after the replay.
    node.publish("project:2", "p2", json!({"i": 6})).await;
    let m = s.expect_event("event", FRAME_WAIT).await;
    assert_eq!(m.json()["offset"], 6, "{m:?}");
    drop(s);

    // The query-parameter form resumes the same way (nothing missed).
    let lid = s_last_id_of_offsets(&last_id, "project:2", 6);
    let mut s = open_ok(
        &node,
        &format!("{q}&last_event_id={lid}"),
        &[("Authorization", auth.as_str())],
    )
    .await;
    let (_, joined) = read_opening(&mut s, 4).await;
    for (room, j) in &joined {
        assert_eq!(j.json()["recovered"], true, "{room}: {:?}", j.data);
        assert_eq!(j.json()["replayed"], 0, "{room}: {:?}", j.data);
    }
    // Nothing before a live sentinel.
    node.publish("project:1", "sentinel", json!({})).await;
    let mut after = std::mem::take(&mut s.early);
    after.extend(s.collect_until_event("sentinel", FRAME_WAIT).await);
    assert!(
        after.iter().all(|m| m.event != "event"),
        "nothing was missed: {after:?}"
    );
}

/// `id` with `room`'s offset replaced by `offset`.
fn s_last_id_of_offsets(id: &str, room: &str, offset: u64) -> String {
    parse_id(id)
        .into_iter()
        .map(|(r, e, o)| format!("{r}~{e}~{}", if r == room { offset } else { o }))
        .collect::<Vec<_>>()
        .join(",")
}
