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
