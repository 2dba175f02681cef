use super::*;
use crate::plan::*;

fn defaults(kind: &str) -> BridgeDefaults {
    BridgeDefaults {
        prefix: "hx".into(),
        broker_kind: kind.into(),
        nats_url: Some("nats://127.0.0.1:4222".into()),
        redis_url: None,
        nats_auth: NatsAuth::default(),
    }
}

fn mapping(subject: &str, room: &str, event: &str) -> MappingConfig {
    MappingConfig {
        nats_subject: Some(subject.into()),
        room: Some(room.into()),
        event: Some(event.into()),
        ..Default::default()
    }
}

fn keys(errors: &[BridgeSettingError]) -> Vec<String> {
    errors.iter().map(|e| e.key.clone()).collect()
}

#[test]
fn nothing_is_bridged_by_default_except_nats_publish_on_a_nats_broker() {
    let c = BridgeConfig::default();
    assert!(c.plan(&defaults("redis")).unwrap().routes.is_empty());
    let plan = c.plan(&defaults("nats")).unwrap();
    assert_eq!(plan.routes.len(), 1);
    let r = &plan.routes[0];
    assert_eq!(r.label, "nats_publish");
    match &r.source {
        Source::NatsCore {
            subject,
            queue_group,
        } => {
            assert_eq!(subject, "hx.publish");
            assert_eq!(queue_group, "hx-bridge");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn jetstream_nats_publish_gets_its_stream_durable_and_dead_letter_subject() {
    let mut c = BridgeConfig::default();
    c.nats_publish.enabled = Some(true);
    c.nats_publish.jetstream = true;
    let plan = c.plan(&defaults("memory")).unwrap();
    match &plan.routes[0].source {
        Source::JetStream {
            stream,
            create_subjects,
            durable,
            dead_letter,
            ..
        } => {
            assert_eq!(stream, "hx-publish");
            assert_eq!(
                create_subjects.as_deref(),
                Some(&["hx.publish".to_owned()][..])
            );
            assert_eq!(durable, "hx-bridge");
            assert_eq!(dead_letter, "hx.publish.dead");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_template_naming_a_missing_wildcard_names_its_key() {
    let mut c = BridgeConfig::default();
    c.mappings
        .push(mapping("agents.*.events", "agent:{1}", "e"));
    c.mappings.push(mapping("a.*.*", "r:{3}", "e"));
    let errors = c.validate(&defaults("memory"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(
        errors[0].to_string(),
        "bridge.mappings[1].room: {3} but the pattern has 2 wildcards"
    );
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let mut c = BridgeConfig {
        redis_leader_ttl: Duration::from_millis(10),
        ..Default::default()
    };
    c.mappings.push(MappingConfig {
        nats_subject: Some("a".into()),
        redis_channel: Some("b".into()),
        ..Default::default()
    });
    c.mappings.push(MappingConfig {
        redis_channel: Some("events:*".into()),
        jetstream_stream: Some("S".into()),
        ..Default::default()
    });
    c.mappings.push(MappingConfig {
        nats_subject: Some("a..b".into()),
        ..Default::default()
    });
    c.mappings.push(MappingConfig {
        name: Some("bad name".into()),
        nats_subject: Some("x.*".into()),
        room: Some("{nope}".into()),
        event: Some("e".into()),
        ..Default::default()
    });
    let mut d = defaults("memory");
    d.nats_url = None;
    let errors = c.validate(&d);
    let keys = keys(&errors);
    for expected in [
        "bridge.redis_leader_ttl",
        "bridge.mappings[0]",
        "bridge.mappings[1].jetstream_stream",
        "bridge.mappings[1].room",
        "bridge.mappings[1].event",
        "bridge.mappings[2].nats_subject",
        "bridge.mappings[3].name",
        "bridge.mappings[3].room",
        "bridge.redis_url",
        "bridge.nats_url",
    ] {
        assert!(
            keys.contains(&expected.to_owned()),
            "{expected} missing in {errors:?}"
        );
    }
}

#[test]
fn publish_mode_needs_no_templates_and_names_must_be_unique() {
    let mut c = BridgeConfig::default();
    c.mappings.push(MappingConfig {
        name: Some("agents".into()),
        nats_subject: Some("agents.>".into()),
        body: BodyMode::Publish,
        ..Default::default()
    });
    c.mappings.push(MappingConfig {
        name: Some("agents".into()),
        redis_channel: Some("events:project:*".into()),
        room: Some("project:{1}".into()),
        event: Some("{body.type}".into()),
        ..Default::default()
    });
    let errors = c.validate(&defaults("memory"));
    assert_eq!(
        keys(&errors),
        vec!["bridge.mappings[1].name", "bridge.redis_url"]
    );
    c.mappings[1].name = None;
    c.redis_url = Some("redis://127.0.0.1:6379".into());
    let plan = c.plan(&defaults("memory")).unwrap();
    assert_eq!(plan.routes[1].label, "mapping1");
    match &plan.routes[0].source {
        Source::NatsCore { queue_group, .. } => assert_eq!(queue_group, "hx-bridge-agents"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_table_parses_from_toml_and_refuses_unknown_keys() {
    let c: BridgeConfig = toml_like(
        r#"{"redis_leader_ttl": "2s", "mappings": [{"redis_channel": "c:*", "room": "r:{1}", "event": "e", "body": "data"}]}"#,
    )
    .unwrap();
    assert_eq!(c.redis_leader_ttl, Duration::from_secs(2));
    assert_eq!(c.mappings[0].body, BodyMode::Data);
    let e = toml_like(r#"{"mappings": [{"chanel": "x"}]}"#).unwrap_err();
    assert!(e.contains("chanel"), "{e}");
}

fn toml_like(json: &str) -> Result<BridgeConfig, String> {
    serde_json::from_str(json).map_err(|e| e.to_string())
}

#[test]
fn the_broker_credentials_go_with_the_broker_url_unless_the_bridge_names_its_own() {
    let mut d = defaults("nats");
    d.nats_auth.token = Some("broker-token".into());
    let c = BridgeConfig::default();
    let plan = c.plan(&d).unwrap();
    let nats = plan.nats.unwrap();
    assert_eq!(nats.url, "nats://127.0.0.1:4222");
    assert_eq!(nats.auth.token.as_deref(), Some("broker-token"));
    let c = BridgeConfig {
        nats_user: Some("bridge".into()),
        nats_password: Some("pw".into()),
        ..Default::default()
    };
    let auth = c.plan(&d).unwrap().nats.unwrap().auth;
    assert_eq!(auth.token, None);
    assert_eq!(auth.user_password, Some(("bridge".into(), "pw".into())));
    let c = BridgeConfig {
        nats_url: Some("nats://elsewhere:4222".into()),
        ..Default::default()
    };
    let nats = c.plan(&d).unwrap().nats.unwrap();
    assert!(
        nats.auth.is_empty(),
        "another server: not the broker's token"
    );
    let c = BridgeConfig {
        nats_tls_cert_file: Some("c.pem".into()),
        ..Default::default()
    };
    assert_eq!(keys(&c.validate(&d)), vec!["bridge.nats_tls_key_file"]);
}

#[test]
fn bridges_are_ordered_by_default_and_redis_channels_only_ordered() {
    let mut c = BridgeConfig::default();
    c.nats_publish.enabled = Some(true);
    c.mappings
        .push(mapping("agents.*.events", "agent:{1}", "e"));
    c.mappings.push(MappingConfig {
        ordered: Some(false),
        ..mapping("jobs.*", "job:{1}", "e")
    });
    let plan = c.plan(&defaults("memory")).unwrap();
    let ordered: Vec<bool> = plan.routes.iter().map(|r| r.ordered).collect();
    assert_eq!(ordered, vec![true, true, false]);
    assert_eq!(plan.nats_leader_ttl, Duration::from_secs(5));

    let mut c = BridgeConfig::default();
    c.mappings.push(MappingConfig {
        queue_group: Some("workers".into()),
        ..mapping("jobs.*", "job:{1}", "e")
    });
    let errors = c.plan(&defaults("memory")).unwrap_err();
    assert_eq!(keys(&errors), vec!["bridge.mappings[0].queue_group"]);
    c.mappings[0].ordered = Some(false);
    assert!(c.plan(&defaults("memory")).is_ok());

    let mut d = defaults("memory");
    d.redis_url = Some("redis://127.0.0.1:6379".into());
    let mut c = BridgeConfig {
        nats_leader_ttl: Duration::from_millis(10),
        ..Default::default()
    };
    c.mappings.push(MappingConfig {
        redis_channel: Some("events:*".into()),
        room: Some("r:{1}".into()),
        event: Some("e".into()),
        ordered: Some(false),
        ..Default::default()
    });
    let errors = c.plan(&d).unwrap_err();
    assert_eq!(
        keys(&errors),
        vec!["bridge.nats_leader_ttl", "bridge.mappings[0].ordered"]
    );
}
