use super::*;
use herald_core::Rule;
use herald_node::PerUserPolicy;

#[test]
fn defaults_match_the_contract() {
    let c = Config::from_toml("").expect("empty config is valid");
    assert_eq!(c.server.listen, "127.0.0.1:8080");
    assert_eq!(c.server.shutdown_drain, Duration::from_secs(10));
    assert_eq!(c.server.body_timeout, Duration::from_secs(10));
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
    let err = Config::from_toml("[broker]\nkind = \"kafka\"\n").unwrap_err();
    assert!(err.to_string().contains("broker.kind"), "{err}");
    // The message names the kinds this build has (issue #13 item 3).
    let text = err.to_string();
    assert!(
        text.contains("`kafka` is not available in this build"),
        "{text}"
    );
    assert!(text.contains("`memory`"), "{text}");
    #[cfg(feature = "redis")]
    assert!(text.contains("`redis`"), "{text}");
    #[cfg(feature = "nats")]
    assert!(text.contains("`nats`"), "{text}");
}

#[cfg(feature = "nats")]
const NATS: &str = "[auth]\nhs256_secret = \"s\"\n[broker]\nkind = \"nats\"\n";

/// Issue #15: the NATS engine's keys, checked by the engine, each problem
/// naming its key.
#[cfg(feature = "nats")]
#[test]
fn nats_keys_are_validated_naming_each_key() {
    let err = Config::from_toml(NATS).unwrap_err().to_string();
    assert!(err.contains("broker.nats_url: is required"), "{err}");
    let err = Config::from_toml(&format!(
        "{NATS}nats_url = \"http://x:1\"\nnats_user = \"u\"\n\
         nats_credentials_file = \"/no/such.creds\"\nprefix = \"a.*\"\n"
    ))
    .unwrap_err()
    .to_string();
    for key in [
        "broker.nats_url",
        "broker.nats_password",
        "broker.nats_credentials_file",
        "broker.prefix",
    ] {
        assert!(err.contains(key), "{key}: {err}");
    }
    let ok = Config::from_toml(&format!(
        "{NATS}nats_url = \"nats://a:4222,tls://b:4222\"\nnats_replicas = 3\n"
    ))
    .expect("valid");
    assert_eq!(ok.broker.nats_replicas, 3);
    assert_eq!(ok.broker.nats_max_age, Duration::from_secs(86_400));
    assert_eq!(ok.engine_settings()["nats_max_age"], "1day");
}

/// `broker.nats_max_age` must cover every namespace's `history_ttl`.
#[cfg(feature = "nats")]
#[test]
fn nats_max_age_covers_every_history_ttl() {
    let base = format!("{NATS}nats_url = \"nats://127.0.0.1:4222\"\nnats_max_age = \"30h\"\n");
    let err = Config::from_toml(&format!(
        "{base}[namespaces.logs]\njoin = \"any\"\nhistory_size = 10\nhistory_ttl = \"2d\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("broker.nats_max_age") && err.contains("namespaces.logs.history_ttl"),
        "{err}"
    );
    Config::from_toml(&format!(
        "{base}[namespaces.logs]\njoin = \"any\"\nhistory_size = 10\nhistory_ttl = \"2h\"\n"
    ))
    .expect("within max_age");
}

#[cfg(feature = "nats")]
#[test]
fn nats_secrets_are_masked() {
    let c = Config::from_toml(&format!(
        "{NATS}nats_url = \"nats://u:pw1hidden@a:4222,nats://b:4222\"\n\
         nats_user = \"u\"\nnats_password = \"pw2hidden\"\nnats_token = \"tok3hidden\"\n"
    ))
    .expect("valid");
    let text = c.to_masked_toml();
    assert!(!text.contains("hidden"), "{text}");
    assert!(text.contains("nats://b:4222"), "{text}");
}

/// The `[broker]` table reaches the engine as its settings, durations in
/// the config's spelling.
#[test]
fn the_broker_table_is_the_engine_settings() {
    let c = Config::from_toml(
        "[auth]\nhs256_secret = \"s\"\n[broker]\nkind = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nnode_heartbeat = \"1s\"\nprefix = \"p\"\n",
    )
    .expect("valid");
    let settings = c.engine_settings();
    assert_eq!(settings["kind"], "redis");
    assert_eq!(settings["redis_url"], "redis://127.0.0.1:6379");
    assert_eq!(settings["node_heartbeat"], "1s");
    assert_eq!(settings["prefix"], "p");
}

#[test]
fn redis_needs_a_redis_url() {
    let err = Config::from_toml("[broker]\nkind = \"redis\"\n").unwrap_err();
    assert!(err.to_string().contains("broker.redis_url"), "{err}");
    let err =
        Config::from_toml("[broker]\nkind = \"redis\"\nredis_url = \"http://x\"\n").unwrap_err();
    assert!(err.to_string().contains("broker.redis_url"), "{err}");
    let c = Config::from_toml(
        "[auth]\nhs256_secret = \"s\"\n[broker]\nkind = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nnode_heartbeat = \"1s\"\n",
    )
    .expect("valid");
    assert_eq!(c.broker.node_heartbeat, std::time::Duration::from_secs(1));
}

#[test]
fn every_bad_value_is_reported_at_once() {
    let err = Config::from_toml(
        "[server]\nlisten = \"nowhere\"\nbody_timeout = \"0s\"\n[limits]\nburst = 0\nmax_connections = 0\n",
    )
    .unwrap_err();
    let text = err.to_string();
    for key in [
        "server.listen",
        "server.body_timeout",
        "limits.burst",
        "limits.max_connections",
    ] {
        assert!(text.contains(key), "{key} missing from: {text}");
    }
}

/// Issue #12 finding 11: development mode only on loopback with the memory
/// broker; any token key lifts the restriction.
#[test]
fn development_mode_is_loopback_and_memory_only() {
    let c = Config::from_toml("").expect("defaults are valid");
    assert!(c.is_dev_mode());
    for listen in ["127.0.0.1:9000", "[::1]:9000"] {
        Config::from_toml(&format!("[server]\nlisten = \"{listen}\"\n")).expect("loopback");
    }
    let err = Config::from_toml("[server]\nlisten = \"0.0.0.0:8080\"\n").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("auth.hs256_secret"), "{text}");
    assert!(text.contains("0.0.0.0:8080"), "{text}");
    let err =
        Config::from_toml("[broker]\nkind = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\n")
            .unwrap_err();
    assert!(err.to_string().contains("broker.kind = \"redis\""), "{err}");
    let keyed =
        Config::from_toml("[server]\nlisten = \"0.0.0.0:8080\"\n[auth]\nhs256_secret = \"s\"\n")
            .expect("a keyed node may listen anywhere");
    assert!(!keyed.is_dev_mode());
}

#[test]
fn pre_auth_and_per_ip_limits_default_and_are_checked() {
    let c = Config::from_toml("").expect("defaults are valid");
    assert_eq!(c.limits.max_pending_connections, 1024);
    assert_eq!(c.limits.max_pending_message_bytes, 16_384);
    assert_eq!(
        c.limits.max_connections_per_ip, 0,
        "per-IP cap off by default"
    );
    let err = Config::from_toml(
        "[limits]\nmax_pending_connections = 0\nmax_pending_message_bytes = 100\n",
    )
    .unwrap_err();
    let text = err.to_string();
    for key in [
        "limits.max_pending_connections",
        "limits.max_pending_message_bytes",
    ] {
        assert!(text.contains(key), "{key} missing from: {text}");
    }
    let c = Config::from_toml("[limits]\nmax_connections_per_ip = 5\n").expect("valid");
    assert_eq!(c.limits.max_connections_per_ip, 5);
}

#[test]
fn budget_keys_are_validated_and_named() {
    let c = Config::from_toml("").expect("valid");
    assert_eq!(c.limits.max_event_patterns, 64);
    assert_eq!(c.limits.history_room_bytes, 1_048_576);
    assert_eq!(c.limits.history_total_bytes, 268_435_456);
    let err = Config::from_toml(
        "[limits]\nmax_event_patterns = 0\nhistory_room_bytes = 0\nhistory_total_bytes = 0\n",
    )
    .unwrap_err()
    .to_string();
    for key in [
        "limits.max_event_patterns",
        "limits.history_room_bytes",
        "limits.history_total_bytes",
    ] {
        assert!(err.contains(key), "{key}: {err}");
    }
    let err = Config::from_toml("[namespaces.chat]\nhistory_max_bytes = 0\n").unwrap_err();
    assert!(
        err.to_string()
            .contains("namespaces.chat.history_max_bytes"),
        "{err}"
    );
    let c = Config::from_toml("[namespaces.chat]\nhistory_max_bytes = 4096\n").expect("valid");
    let ns = c.namespace_rules().expect("rules");
    assert_eq!(ns.get("chat").and_then(|n| n.history_max_bytes), Some(4096));
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

#[test]
fn socketio_defaults_and_path_checks() {
    let c = Config::from_toml("").expect("defaults");
    assert!(c.socketio.enabled);
    assert_eq!(c.socketio.path, "/socket.io/");
    assert!(c.socketio.recovery);
    let c =
        Config::from_toml("[socketio]\nenabled = false\npath = \"/rt/io/\"\nrecovery = false\n")
            .expect("valid");
    assert!(!c.socketio.enabled && !c.socketio.recovery);
    assert_eq!(c.socketio.path, "/rt/io/");
    for bad in ["socket.io/", "/socket.io", "/", "//x/", "/a b/"] {
        let err = Config::from_toml(&format!("[socketio]\npath = \"{bad}\"\n")).unwrap_err();
        assert!(err.to_string().contains("socketio.path"), "{bad}: {err}");
    }
    let err = Config::from_toml("[socketio]\nrecovry = true\n").unwrap_err();
    assert!(err.to_string().contains("recovry"), "{err}");
}
