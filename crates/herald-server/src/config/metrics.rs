//! `[metrics]`: what the node's Prometheus metrics may cost in series
//! (docs/operations.md section 7).

use super::{invalid, ConfigError};
use serde::{Deserialize, Serialize};

/// Most `metrics.max_event_names`: each name is two series per namespace.
const MAX_EVENT_NAMES_LIMIT: usize = 10_000;

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Distinct event names labelled in `herald_events_published_total`
    /// and `herald_events_delivered_total` (first come, first kept); later
    /// new names count as `other`, and 0 counts every event as `other`.
    pub max_event_names: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            max_event_names: herald_node::metrics::DEFAULT_MAX_EVENT_NAMES,
        }
    }
}

impl MetricsConfig {
    /// Adds a problem per bad value to `problems`.
    pub(super) fn validate(&self, problems: &mut Vec<ConfigError>) {
        if self.max_event_names > MAX_EVENT_NAMES_LIMIT {
            problems.push(invalid(
                "metrics.max_event_names",
                format!(
                    "{} is more than {MAX_EVENT_NAMES_LIMIT}: every name adds series per namespace",
                    self.max_event_names
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_bounded_and_names_its_key() {
        let mut problems = Vec::new();
        MetricsConfig::default().validate(&mut problems);
        MetricsConfig { max_event_names: 0 }.validate(&mut problems);
        assert!(problems.is_empty());
        MetricsConfig {
            max_event_names: 10_001,
        }
        .validate(&mut problems);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].to_string().contains("metrics.max_event_names"));
    }
}
