//! Durations in config as strings like `250ms`, `10s`, `5m`, `24h`: a serde
//! helper for `#[serde(with = "herald_core::duration")]`.

use serde::{Deserialize, Deserializer, Serializer};
use std::time::Duration;

/// Writes a duration as a string such as `1m 30s`.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// Reads a duration string.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// Parses a duration string, with a message fit for a config error.
pub fn parse(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. 250ms, 10s, 5m or 24h"))
}
