//! `[namespaces.<name>]` tables, merged over the shipped namespaces.

use super::{invalid, ConfigError};
use herald_core::duration;
use herald_core::{NamespaceConfig, Namespaces, Rule};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// One namespace as written in config; unset keys keep the shipped value
/// (or the default for a new namespace: join and send `none`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceToml {
    /// Join rule.
    pub join: Option<String>,
    /// Send rule.
    pub send: Option<String>,
    /// Presence on or off.
    pub presence: Option<bool>,
    /// Events kept.
    pub history_size: Option<usize>,
    /// How long kept events live.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub history_ttl: Option<Duration>,
    /// Bytes of history one room keeps (default `limits.history_room_bytes`).
    pub history_max_bytes: Option<usize>,
    /// Auto-joined room template, `""` to turn a shipped one off.
    pub auto_join: Option<String>,
    /// What a full send queue does: `disconnect` (default), `drop` or
    /// `conflate`.
    pub overflow: Option<String>,
    /// Event names that are always critical (never dropped or conflated).
    pub critical_events: Option<Vec<String>>,
}

mod opt_duration {
    use super::duration;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        duration::parse(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// Largest `history_size` accepted: history is memory, keep it bounded.
const MAX_HISTORY_SIZE: usize = 100_000;

pub(super) fn merge(tables: &BTreeMap<String, NamespaceToml>) -> Result<Namespaces, ConfigError> {
    let mut ns = Namespaces::shipped();
    for (name, t) in tables {
        let key = |k: &str| format!("namespaces.{name}.{k}");
        if name.is_empty() || name.contains(':') || herald_core::RoomName::parse(name).is_err() {
            return Err(invalid(
                format!("namespaces.{name}"),
                "is not a valid namespace name",
            ));
        }
        let mut cfg = ns
            .get(name)
            .cloned()
            .unwrap_or_else(NamespaceConfig::default);
        if let Some(rule) = &t.join {
            cfg.join = rule
                .parse::<Rule>()
                .map_err(|e| invalid(key("join"), e.to_string()))?;
        }
        if let Some(rule) = &t.send {
            cfg.send = rule
                .parse::<Rule>()
                .map_err(|e| invalid(key("send"), e.to_string()))?;
        }
        if let Some(p) = t.presence {
            cfg.presence = p;
        }
        if let Some(size) = t.history_size {
            if size > MAX_HISTORY_SIZE {
                return Err(invalid(
                    key("history_size"),
                    format!("at most {MAX_HISTORY_SIZE}"),
                ));
            }
            cfg.history_size = size;
        }
        if let Some(ttl) = t.history_ttl {
            cfg.history_ttl = ttl;
        }
        if let Some(bytes) = t.history_max_bytes {
            if bytes == 0 {
                return Err(invalid(
                    key("history_max_bytes"),
                    "must be greater than 0 (set history_size = 0 to keep no history)",
                ));
            }
            cfg.history_max_bytes = Some(bytes);
        }
        if let Some(tpl) = &t.auto_join {
            if tpl.is_empty() {
                cfg.auto_join = None;
            } else {
                let probe = tpl.replace("{sub}", "x");
                let room = herald_core::RoomName::parse(&probe)
                    .map_err(|e| invalid(key("auto_join"), e.to_string()))?;
                if room.namespace() != name {
                    return Err(invalid(
                        key("auto_join"),
                        format!("`{tpl}` is not a room of namespace `{name}`"),
                    ));
                }
                cfg.auto_join = Some(tpl.clone());
            }
        }
        if let Some(overflow) = &t.overflow {
            cfg.overflow = overflow
                .parse::<herald_core::Overflow>()
                .map_err(|e| invalid(key("overflow"), e.to_string()))?;
        }
        if let Some(names) = &t.critical_events {
            if let Some(bad) = names.iter().find(|n| n.is_empty() || n.len() > 255) {
                return Err(invalid(
                    key("critical_events"),
                    format!("`{bad}` is not an event name (1 to 255 bytes)"),
                ));
            }
            cfg.critical_events = names.clone();
        }
        if cfg.history_size > 0 && cfg.history_ttl.is_zero() {
            return Err(invalid(
                key("history_ttl"),
                "must be set when history_size > 0",
            ));
        }
        ns.insert(name.clone(), cfg);
    }
    Ok(ns)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use herald_core::Overflow;

    #[test]
    fn overflow_and_critical_events_are_read_and_checked() {
        let c = Config::from_toml(
            "[namespaces.agent]\noverflow = \"conflate\"\ncritical_events = [\"agent.completed\"]\n",
        )
        .expect("valid");
        let ns = c.namespace_rules().expect("rules");
        let agent = ns.get("agent").expect("agent");
        assert_eq!(agent.overflow, Overflow::Conflate);
        assert_eq!(agent.critical_events, vec!["agent.completed".to_owned()]);
        assert_eq!(
            ns.get("user").expect("user").overflow,
            Overflow::Disconnect,
            "the default stays today's cut"
        );
        let err = Config::from_toml("[namespaces.agent]\noverflow = \"shed\"\n")
            .and_then(|c| c.namespace_rules().map(|_| c))
            .expect_err("unknown policy");
        assert!(
            err.to_string().contains("namespaces.agent.overflow"),
            "{err}"
        );
        let err = Config::from_toml("[namespaces.agent]\ncritical_events = [\"\"]\n")
            .and_then(|c| c.namespace_rules().map(|_| c))
            .expect_err("empty name");
        assert!(
            err.to_string().contains("namespaces.agent.critical_events"),
            "{err}"
        );
    }
}
