//! Herald's OpenTelemetry tracing: the spans of a publish (`publish`), its
//! broker hop (`broker.publish`) and each node's fan-out (`fanout`),
//! exported over OTLP/HTTP (protobuf) to `{endpoint}/v1/traces`.
//!
//! Only this crate knows OpenTelemetry. Everything else carries a
//! [`TraceContext`] (herald-core): the API and ingest paths ask for a
//! [`PublishSpan`], hand its [`BrokerSpan`]'s context to the engine inside
//! the `PublishRequest`, and every node's fan-out asks for a [`FanoutSpan`]
//! under the context the publication brought along.
//!
//! The API uses explicit parent contexts rather than a `tracing` layer:
//! with tracing off a node holds no [`Telemetry`] at all, so the publish
//! and fan-out paths cost one `Option` check. With tracing on, spans end
//! into a bounded queue drained by one export task ([`export`]); a slow or
//! unreachable collector drops spans (counted in
//! `herald_trace_spans_dropped_total`), it never slows publishing.

#![warn(missing_docs)]

mod export;
mod spans;

pub use herald_core::TraceContext;
pub use spans::{BrokerSpan, FanoutSpan, PublishSource, PublishSpan};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where and how spans are exported (the server's `[telemetry]` section,
/// checked there; [`Telemetry::start`] checks again and names the key).
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// The collector's OTLP/HTTP base URL; spans go to `{endpoint}/v1/traces`.
    pub endpoint: String,
    /// Share of root publishes sampled (0.0 to 1.0). A publisher's
    /// `traceparent` decides for its own trace (parent-based).
    pub sample_ratio: f64,
    /// `service.name` of the resource.
    pub service_name: String,
    /// More resource attributes (`deployment.environment`, ...).
    pub resource_attributes: BTreeMap<String, String>,
    /// The node id, exported as `service.instance.id`.
    pub node_id: String,
    /// How often queued spans are sent (a full batch goes at once).
    pub export_interval: Duration,
    /// Longest wait for one export request.
    pub export_timeout: Duration,
    /// Spans waiting for export at most; more are dropped and counted.
    pub queue_size: usize,
}

/// Spans sent in one request at most (the OpenTelemetry SDK's default).
pub const MAX_EXPORT_BATCH: usize = 512;

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A setting is unusable; `key` names it as in the config.
    #[error("{key}: {message}")]
    Invalid {
        /// The config key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The OTLP exporter could not be built.
    #[error("telemetry.otlp_endpoint: cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

impl TelemetrySettings {
    /// The problems of these settings, each naming its config key.
    pub fn problems(&self) -> Vec<TelemetryError> {
        let mut out = Vec::new();
        let invalid = |key, message: &str| TelemetryError::Invalid {
            key,
            message: message.to_owned(),
        };
        if let Err(message) = traces_url(&self.endpoint) {
            out.push(TelemetryError::Invalid {
                key: "telemetry.otlp_endpoint",
                message,
            });
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            out.push(invalid(
                "telemetry.sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        if self.service_name.trim().is_empty() {
            out.push(invalid("telemetry.service_name", "must not be empty"));
        }
        for key in self.resource_attributes.keys() {
            if key.trim().is_empty() {
                out.push(invalid(
                    "telemetry.resource_attributes",
                    "attribute names must not be empty",
                ));
            } else if key == "service.name" || key == "service.instance.id" {
                out.push(TelemetryError::Invalid {
                    key: "telemetry.resource_attributes",
                    message: format!(
                        "`{key}` is set by Herald (telemetry.service_name, server.node_id)"
                    ),
                });
            }
        }
        if self.export_interval.is_zero() {
            out.push(invalid(
                "telemetry.export_interval",
                "must be longer than 0s",
            ));
        }
        if self.export_timeout.is_zero() {
            out.push(invalid(
                "telemetry.export_timeout",
                "must be longer than 0s",
            ));
        }
        if self.queue_size == 0 {
            out.push(invalid("telemetry.queue_size", "must be greater than 0"));
        }
        out
    }
}

/// `{endpoint}/v1/traces`, or why the endpoint is not an http(s) URL.
pub fn traces_url(endpoint: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(endpoint).map_err(|e| format!("`{endpoint}`: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "`{endpoint}`: must be an http:// or https:// URL with a host"
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "`{endpoint}`: a base URL without query or fragment; /v1/traces is appended"
        ));
    }
    Ok(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
}

/// A node's tracer: cheap to clone. A node without one traces nothing.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    tracer: SdkTracer,
    /// Kept so the provider lives as long as the node's handles.
    _provider: SdkTracerProvider,
    node_id: opentelemetry::Value,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("node_id", &self.inner.node_id)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Starts tracing for one node: the export task goes on `tasks` and,
    /// when `cancel` fires, sends what is queued (waiting at most
    /// [`export::SHUTDOWN_FLUSH`]) and stops.
    pub fn start(
        settings: &TelemetrySettings,
        cancel: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Self, TelemetryError> {
        if let Some(problem) = settings.problems().into_iter().next() {
            return Err(problem);
        }
        let resource = resource(settings);
        let (processor, task) = export::pipeline(settings, &resource)?;
        tasks.spawn(task.run(cancel));
        let ratio = match settings.sample_ratio {
            r if r >= 1.0 => Sampler::AlwaysOn,
            r if r <= 0.0 => Sampler::AlwaysOff,
            r => Sampler::TraceIdRatioBased(r),
        };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(ratio)))
            .with_resource(resource)
            .build();
        let scope = opentelemetry::InstrumentationScope::builder("herald")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let tracer = provider.tracer_with_scope(scope);
        Ok(Self {
            inner: Arc::new(Inner {
                tracer,
                _provider: provider,
                node_id: settings.node_id.clone().into(),
            }),
        })
    }

    pub(crate) fn tracer(&self) -> &SdkTracer {
        &self.inner.tracer
    }

    pub(crate) fn node_id(&self) -> opentelemetry::Value {
        self.inner.node_id.clone()
    }
}

fn resource(settings: &TelemetrySettings) -> Resource {
    // Herald's version first, so an operator's `service.version` wins;
    // the instance id last, so it always names the node.
    Resource::builder_empty()
        .with_service_name(settings.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_attributes(
            settings
                .resource_attributes
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .with_attribute(KeyValue::new(
            "service.instance.id",
            settings.node_id.clone(),
        ))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> TelemetrySettings {
        TelemetrySettings {
            endpoint: "http://127.0.0.1:4318".into(),
            sample_ratio: 0.01,
            service_name: "herald".into(),
            resource_attributes: BTreeMap::new(),
            node_id: "n1".into(),
            export_interval: Duration::from_secs(5),
            export_timeout: Duration::from_secs(10),
            queue_size: 2048,
        }
    }

    #[test]
    fn the_traces_path_is_appended_once() {
        assert_eq!(
            traces_url("http://c:4318").as_deref(),
            Ok("http://c:4318/v1/traces")
        );
        assert_eq!(
            traces_url("https://c/otlp/").as_deref(),
            Ok("https://c/otlp/v1/traces")
        );
        assert!(traces_url("c:4318").is_err());
        assert!(traces_url("ftp://c").is_err());
        assert!(traces_url("http://c/?a=1").is_err());
    }

    #[test]
    fn bad_settings_name_their_keys() {
        let mut s = settings();
        assert!(s.problems().is_empty());
        s.sample_ratio = 1.5;
        s.service_name = " ".into();
        s.endpoint = "nope".into();
        s.resource_attributes
            .insert("service.instance.id".into(), "x".into());
        s.queue_size = 0;
        let keys: Vec<String> = s
            .problems()
            .iter()
            .map(|e| match e {
                TelemetryError::Invalid { key, .. } => (*key).to_owned(),
                other => other.to_string(),
            })
            .collect();
        assert_eq!(
            keys,
            [
                "telemetry.otlp_endpoint",
                "telemetry.sample_ratio",
                "telemetry.service_name",
                "telemetry.resource_attributes",
                "telemetry.queue_size",
            ]
        );
        s.sample_ratio = f64::NAN;
        assert!(s
            .problems()
            .iter()
            .any(|e| e.to_string().starts_with("telemetry.sample_ratio")));
    }
}
