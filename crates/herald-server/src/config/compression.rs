//! `[compression]`: permessage-deflate (RFC 7692) on `/ws` and the
//! Socket.IO WebSocket transport (docs/protocol.md "Compression
//! (permessage-deflate)", docs/operations.md "Compression").

use super::{invalid, ConfigError};
use serde::{Deserialize, Serialize};

/// `[compression]`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    /// Accept permessage-deflate offers (off by default: compression costs
    /// CPU once per event and saves bytes on every recipient).
    pub enabled: bool,
    /// Room events smaller than this (encoded frame bytes) go out
    /// uncompressed: deflate saves little on them.
    pub min_bytes: usize,
    /// zlib level, 1 (fastest) ..= 9 (smallest).
    pub level: u32,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            min_bytes: 256,
            // Level 6 measured within a few percent of 9's size on event
            // JSON at about half its CPU (docs/operations.md "Compression").
            level: 6,
        }
    }
}

impl CompressionConfig {
    /// Adds a problem per bad value to `problems`.
    pub(super) fn validate(&self, problems: &mut Vec<ConfigError>) {
        if !(1..=9).contains(&self.level) {
            problems.push(invalid(
                "compression.level",
                format!(
                    "{} is not a zlib level: use 1 (fastest) to 9 (smallest)",
                    self.level
                ),
            ));
        }
        if self.min_bytes > u32::MAX as usize {
            problems.push(invalid(
                "compression.min_bytes",
                format!("{} is too large (at most {})", self.min_bytes, u32::MAX),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_their_key() {
        let mut problems = Vec::new();
        CompressionConfig::default().validate(&mut problems);
        assert!(problems.is_empty());
        for level in [0, 10] {
            CompressionConfig {
                level,
                ..CompressionConfig::default()
            }
            .validate(&mut problems);
        }
        assert_eq!(problems.len(), 2);
        assert!(problems
            .iter()
            .all(|p| p.to_string().contains("compression.level")));
        assert!(!CompressionConfig::default().enabled, "off by default");
    }
}
