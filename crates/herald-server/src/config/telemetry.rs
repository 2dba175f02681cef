//! `[telemetry]`: OpenTelemetry tracing of publishes, exported over
//! OTLP/HTTP (docs/operations.md "Tracing"). Off without `otlp_endpoint`.

use super::{invalid, ConfigError};
use herald_core::duration;
use herald_telemetry::{TelemetryError, TelemetrySettings};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// `[telemetry]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (spans go to
    /// `{otlp_endpoint}/v1/traces`); tracing is off without it.
    pub otlp_endpoint: Option<String>,
    /// Share of publishes without a sampled `traceparent` that are traced
    /// (0.0 to 1.0); a publisher's sampled `traceparent` is always followed.
    pub sample_ratio: f64,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// More resource attributes; `service.instance.id` is the node id.
    pub resource_attributes: BTreeMap<String, String>,
    /// How often queued spans are sent.
    #[serde(with = "duration")]
    pub export_interval: Duration,
    /// Longest wait for the collector's answer to one export.
    #[serde(with = "duration")]
    pub export_timeout: Duration,
    /// Spans waiting for export at most; more are dropped and counted.
    pub queue_size: usize,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: 0.01,
            service_name: "herald".into(),
            resource_attributes: BTreeMap::new(),
            export_interval: Duration::from_secs(5),
            export_timeout: Duration::from_secs(10),
            queue_size: 2048,
        }
    }
}

impl TelemetryConfig {
    /// The tracer's settings for node `node_id`; `None` when tracing is off.
    pub fn settings(&self, node_id: &str) -> Option<TelemetrySettings> {
        let endpoint = self.otlp_endpoint.clone()?;
        Some(self.settings_for(endpoint, node_id))
    }

    fn settings_for(&self, endpoint: String, node_id: &str) -> TelemetrySettings {
        TelemetrySettings {
            endpoint,
            sample_ratio: self.sample_ratio,
            service_name: self.service_name.clone(),
            resource_attributes: self.resource_attributes.clone(),
            node_id: node_id.to_owned(),
            export_interval: self.export_interval,
            export_timeout: self.export_timeout,
            queue_size: self.queue_size,
        }
    }

    /// Adds the section's problems, each naming its key. The values are
    /// checked with tracing off too, so a typo is caught before the
    /// endpoint is set.
    pub(super) fn validate(&self, problems: &mut Vec<ConfigError>) {
        let endpoint = self.otlp_endpoint.clone().unwrap_or_default();
        for problem in self.settings_for(endpoint, "").problems() {
            match problem {
                TelemetryError::Invalid { key, .. }
                    if key == "telemetry.otlp_endpoint" && self.otlp_endpoint.is_none() => {}
                TelemetryError::Invalid { key, message } => problems.push(invalid(key, message)),
                other => problems.push(invalid("telemetry", other.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn problems(toml: &str) -> String {
        match Config::from_toml(toml) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn tracing_is_off_by_default_and_on_with_an_endpoint() {
        let config = Config::from_toml("").expect("defaults");
        assert!(config.telemetry.settings("n1").is_none());
        let config = Config::from_toml(
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 1.0\n\
             resource_attributes = { \"deployment.environment\" = \"test\" }\n",
        )
        .expect("valid");
        let settings = config.telemetry.settings("n1").expect("on");
        assert_eq!(settings.sample_ratio, 1.0);
        assert_eq!(settings.node_id, "n1");
        assert_eq!(settings.service_name, "herald");
    }

    #[test]
    fn bad_values_name_their_keys() {
        let e = problems("[telemetry]\notlp_endpoint = \"localhost:4318\"\n");
        assert!(e.contains("telemetry.otlp_endpoint"), "{e}");
        let e = problems("[telemetry]\nsample_ratio = 1.5\n");
        assert!(e.contains("telemetry.sample_ratio"), "{e}");
        let e = problems("[telemetry]\nsample_ratio = -0.1\nservice_name = \"\"\n");
        assert!(e.contains("telemetry.sample_ratio"), "{e}");
        assert!(e.contains("telemetry.service_name"), "{e}");
        let e =
            problems("[telemetry]\nresource_attributes = { \"service.instance.id\" = \"x\" }\n");
        assert!(e.contains("telemetry.resource_attributes"), "{e}");
        let e = problems("[telemetry]\nqueue_size = 0\nexport_interval = \"0s\"\n");
        assert!(e.contains("telemetry.queue_size"), "{e}");
        assert!(e.contains("telemetry.export_interval"), "{e}");
        let e = problems("[telemetry]\nsample_rate = 0.5\n");
        assert!(e.contains("sample_rate"), "an unknown key is named: {e}");
    }
}
