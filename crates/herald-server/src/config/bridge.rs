//! `[bridge]`: the ingest bridges (herald-bridge), compiled in with the
//! `bridge` feature (on by default). A build without it (the fuzz targets,
//! a slimmed binary) still reads the table, so a config naming bridges is
//! refused at start with the key named rather than silently ignored.

use super::Config;

/// `[bridge]` in a build without bridges: read so that any key in it can
/// be refused by name. The secret-bearing keys are fields of their own so
/// the effective config masks them as a full build does.
#[cfg(not(feature = "bridge"))]
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct BridgeConfig {
    /// `bridge.nats_url`, refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_url: Option<String>,
    /// `bridge.redis_url`, refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// `bridge.nats_password`, refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_password: Option<String>,
    /// `bridge.nats_token`, refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_token: Option<String>,
    /// Every other key, refused.
    #[serde(flatten)]
    rest: toml::Table,
}

impl Config {
    /// What `[bridge]` falls back on: the `[broker]` table.
    #[cfg(feature = "bridge")]
    pub fn bridge_defaults(&self) -> herald_bridge::BridgeDefaults {
        // Read from the table as the engine reads it, so the broker's
        // `nats_*` credential keys are found wherever the engine defines
        // them.
        let settings = self.engine_settings();
        let text = |key: &str| {
            settings
                .get(key)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        herald_bridge::BridgeDefaults {
            prefix: self.broker.prefix.clone(),
            broker_kind: self.broker.kind.clone(),
            nats_url: self.broker.nats_url.clone(),
            redis_url: self.broker.redis_url.clone(),
            nats_auth: herald_bridge::NatsAuth {
                credentials_file: text("nats_credentials_file"),
                user_password: text("nats_user").zip(text("nats_password")),
                token: text("nats_token"),
                tls_ca_file: text("nats_tls_ca_file"),
                tls_client_cert: text("nats_tls_cert_file").zip(text("nats_tls_key_file")),
            },
        }
    }

    /// What is wrong with `[bridge]`: (key, message) pairs.
    #[cfg(feature = "bridge")]
    pub(super) fn bridge_problems(&self) -> Vec<(String, String)> {
        self.bridge
            .validate(&self.bridge_defaults())
            .into_iter()
            .map(|e| (e.key, e.message))
            .collect()
    }

    /// What is wrong with `[bridge]`: in a build without bridges, any key.
    #[cfg(not(feature = "bridge"))]
    pub(super) fn bridge_problems(&self) -> Vec<(String, String)> {
        let b = &self.bridge;
        let named = [
            ("nats_url", b.nats_url.is_some()),
            ("redis_url", b.redis_url.is_some()),
            ("nats_password", b.nats_password.is_some()),
            ("nats_token", b.nats_token.is_some()),
        ];
        named
            .iter()
            .filter(|(_, set)| *set)
            .map(|(k, _)| *k)
            .chain(b.rest.keys().map(String::as_str))
            .map(|k| {
                (
                    format!("bridge.{k}"),
                    "this build has no ingest bridges (cargo feature `bridge`)".to_owned(),
                )
            })
            .collect()
    }
}

#[cfg(all(test, not(feature = "bridge")))]
mod tests {
    use crate::config::Config;

    #[test]
    fn a_build_without_bridges_refuses_bridge_keys_by_name() {
        assert!(Config::from_toml("").is_ok());
        let err = Config::from_toml(
            "[bridge]\nnats_url = \"nats://u:p@h:4222\"\n[[bridge.routes]]\nsubject = \"a\"\n",
        )
        .expect_err("no bridges here");
        let text = err.to_string();
        assert!(
            text.contains("bridge.nats_url") && text.contains("bridge.routes"),
            "{text}"
        );
        assert!(text.contains("feature `bridge`"), "{text}");
    }
}
