//! `[bridge]`: the ingest bridges (herald-bridge), compiled in with the
//! `bridge` feature (on by default). A build without it (the fuzz targets,
//! a slimmed binary) still reads the table, so a config naming bridges is
//! refused at start with the key named rather than silently ignored.

use super::{mask_url, Config};

/// `[bridge]` (herald-bridge's settings).
#[cfg(feature = "bridge")]
pub type BridgeConfig = herald_bridge::BridgeConfig;

/// `[bridge]` in a build without bridges: any key in it is refused.
#[cfg(not(feature = "bridge"))]
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(transparent)]
pub struct BridgeConfig(toml::Table);

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
        self.bridge
            .0
            .keys()
            .map(|k| {
                (
                    format!("bridge.{k}"),
                    "this build has no ingest bridges (cargo feature `bridge`)".to_owned(),
                )
            })
            .collect()
    }

    /// Masks the secrets of `[bridge]` (for the effective config shown).
    #[cfg(feature = "bridge")]
    pub(super) fn mask_bridge(&mut self) {
        for url in [&mut self.bridge.nats_url, &mut self.bridge.redis_url]
            .into_iter()
            .flatten()
        {
            *url = mask_url(url);
        }
        for secret in [&mut self.bridge.nats_password, &mut self.bridge.nats_token]
            .into_iter()
            .flatten()
        {
            *secret = "********".into();
        }
    }

    /// Masks the secrets of `[bridge]`: without bridges, the whole table.
    #[cfg(not(feature = "bridge"))]
    pub(super) fn mask_bridge(&mut self) {
        let _ = mask_url;
        for (_, value) in self.bridge.0.iter_mut() {
            *value = toml::Value::String("********".into());
        }
    }
}

#[cfg(all(test, not(feature = "bridge")))]
mod tests {
    use crate::config::Config;

    #[test]
    fn a_build_without_bridges_refuses_bridge_keys_by_name() {
        assert!(Config::from_toml("").is_ok());
        let err = Config::from_toml("[bridge]\nnats_url = \"nats://u:p@h:4222\"\n")
            .expect_err("no bridges here");
        let text = err.to_string();
        assert!(
            text.contains("bridge.nats_url") && text.contains("feature"),
            "{text}"
        );
    }
}
