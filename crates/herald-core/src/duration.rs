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

/// Longest duration accepted: 100 years (36,500 days). Far beyond any
/// sensible setting, and far enough below the overflow of `now + duration`
/// (a deadline, an expiry), which panics, that nothing need check it.
pub const MAX: Duration = Duration::from_secs(36_500 * 24 * 3600);

/// Parses a duration string, with a message fit for a config error.
pub fn parse(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("`{text}` is not a duration ({e}); write e.g. 250ms, 10s, 5m or 24h")
    })?;
    if d > MAX {
        return Err(format!(
            "`{text}` is longer than 100 years (36500d), the longest duration accepted"
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Found by the `config` fuzz target: `limits.auth_timeout =
    /// "300000000000y"` loaded, then `now + auth_timeout` panicked on every
    /// connection (and a `history_ttl` like it on every publish).
    #[test]
    fn fuzz_config_duration_overflowing_the_clock_is_refused() {
        for text in ["300000000000y", "18446744073709551615s", "36501d"] {
            let err = parse(text).expect_err(text);
            assert!(err.contains("100 years"), "{text}: {err}");
        }
        assert_eq!(parse("36500d"), Ok(MAX));
        assert!(Instant::now().checked_add(MAX).is_some());
        assert_eq!(parse(" 250ms "), Ok(Duration::from_millis(250)));
        assert!(parse("soon").expect_err("soon").contains("not a duration"));
    }
}
