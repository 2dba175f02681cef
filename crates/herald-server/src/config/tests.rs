use super::*;
use herald_core::Rule;
use herald_node::PerUserPolicy;

#[test]
fn defaults_match_the_contract() {
    let c = Config::from_toml("").expect("empty config is valid");
    assert_eq!(c.server.listen, "127.0.0.1:8080");
    assert_eq!(c.server.shutdown_drain, Duration::from_secs(10));
    assert_eq!(c.limits.max_connections, 100_000);
    assert_eq!(c.limits.per_user_policy, PerUserPolicy::Reject);
    assert_eq!(c.limits.heartbeat_interval, Duration::from_secs(25));
    assert_eq!(c.broker.prefix, "herald");
}

#[test]
fn unknown_keys_are_named() {
    let err = Config::from_toml("[limits]\nmax_conections = 5\n").unwrap_err();
    assert!(err.to_string().contains("max_conections"), "{err}");
    let err = Config::from_toml("[bogus]\nx = 1\n").unwrap_err();
    assert!(err.to_string().contains("bogus"), "{err}");
}

#[test]
fn bad_durations_are_named() {
    let err = Config::from_toml("[limits]\nauth_timeout = \"ten seconds\"\n").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("auth_timeout") && text.contains("ten seconds"),
        "{text}"
    );
}

#[test]
fn namespaces_merge_over_shipped() {
    let c = Config::from_toml(
        "[namespaces.chat]\njoin = \"any\"\nsend = \"any\"\npresence = true\n\
         [namespaces.project]\nhistory_size = 5\n",
    )
    .expect("valid");
    let ns = c.namespace_rules().expect("rules");
    let chat = ns.get("chat").expect("chat");
    assert_eq!(chat.join, Rule::Any);
    assert!(chat.presence);
    let project = ns.get("project").expect("project");
    assert_eq!(project.history_size, 5);
    assert_eq!(
        project.join,
        Rule::Claim("projects".into()),
        "unset keys keep shipped values"
    );
}

#[test]
fn bad_rules_are_named() {
    let err = Config::from_toml("[namespaces.chat]\njoin = \"everyone\"\n").unwrap_err();
    assert!(err.to_string().contains("namespaces.chat.join"), "{err}");
}

#[test]
fn masks_secrets() {
    let c = Config::from_toml(
        "[auth]\nhs256_secret = \"topsecret\"\n[[auth.api_keys]]\nkey = \"0123456789abcdefXYZ\"\nscopes = [\"admin\"]\n",
    )
    .expect("valid");
    let text = c.to_masked_toml();
    assert!(
        !text.contains("topsecret") && !text.contains("0123456789abcdefXYZ"),
        "{text}"
    );
}

#[test]
fn unavailable_broker_kinds_are_refused() {
    let err = Config::from_toml("[broker]\nkind = \"nats\"\n").unwrap_err();
    assert!(err.to_string().contains("broker.kind"), "{err}");
}

#[test]
fn redis_needs_a_redis_url() {
    let err = Config::from_toml("[broker]\nkind = \"redis\"\n").unwrap_err();
    assert!(err.to_string().contains("broker.redis_url"), "{err}");
    let err =
        Config::from_toml("[broker]\nkind = \"redis\"\nredis_url = \"http://x\"\n").unwrap_err();
    assert!(err.to_string().contains("broker.redis_url"), "{err}");
    let c = Config::from_toml(
        "[broker]\nkind = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nnode_heartbeat = \"1s\"\n",
    )
    .expect("valid");
    assert_eq!(c.broker.node_heartbeat, std::time::Duration::from_secs(1));
}

#[test]
fn every_bad_value_is_reported_at_once() {
    let err = Config::from_toml(
        "[server]\nlisten = \"nowhere\"\n[limits]\nburst = 0\nmax_connections = 0\n",
    )
    .unwrap_err();
    let text = err.to_string();
    for key in ["server.listen", "limits.burst", "limits.max_connections"] {
        assert!(text.contains(key), "{key} missing from: {text}");
    }
}

/// Found by the `config` fuzz target: a duration this long loaded, then
/// `now + duration` panicked at the first connection or publish.
#[test]
fn fuzz_config_duration_overflowing_the_clock_is_refused() {
    for (toml, key) in [
        (
            "[limits]\nauth_timeout = \"300000000000y\"\n",
            "auth_timeout",
        ),
        (
            "[namespaces.chat]\nhistory_size = 10\nhistory_ttl = \"18446744073709551615s\"\n",
            "history_ttl",
        ),
    ] {
        let err = Config::from_toml(toml).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains("100 years"), "{err}");
    }
}
