//! `[webhooks]`: where Herald POSTs its signed event batches (docs/protocol.md
//! "Webhooks"). The section is off without `url`.

use super::{invalid, ConfigError};
use herald_core::duration;
use herald_core::{HookKind, HookSet};
use herald_webhooks::WebhookSettings;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// `[webhooks]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Where batches are POSTed (http or https); webhooks are off without it.
    pub url: Option<String>,
    /// The HMAC key of `Herald-Signature` (required with `url`, or
    /// `secret_file`); masked when the config is shown.
    pub secret: Option<String>,
    /// A file holding the secret (its trailing newline is ignored).
    pub secret_file: Option<String>,
    /// Event types to send; all nine by default.
    pub events: Vec<String>,
    /// Events older than this are dropped instead of sent.
    #[serde(with = "duration")]
    pub max_age: Duration,
    /// Events per POST at most (1 to 1000).
    pub batch_size: usize,
    /// Longest wait for one POST's answer.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Static headers added to every POST.
    pub headers: BTreeMap<String, String>,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            url: None,
            secret: None,
            secret_file: None,
            events: HookKind::ALL
                .iter()
                .map(|k| k.as_str().to_owned())
                .collect(),
            max_age: Duration::from_secs(24 * 3600),
            batch_size: 100,
            timeout: Duration::from_secs(5),
            headers: BTreeMap::new(),
        }
    }
}

impl WebhooksConfig {
    /// The kinds webhooks send: empty when the section is off (no `url`).
    /// Unknown names are left out here; [`Self::resolve`] reports them.
    pub fn hook_set(&self) -> HookSet {
        if self.url.is_none() {
            return HookSet::empty();
        }
        self.events.iter().filter_map(|e| e.parse().ok()).collect()
    }

    /// The dispatcher's settings (reading `secret_file`), `None` when the
    /// section is off; every problem names its key.
    pub fn resolve(&self) -> Result<Option<WebhookSettings>, Vec<ConfigError>> {
        let Some(url) = &self.url else {
            return Ok(None);
        };
        let mut problems = Vec::new();
        let mut events = HookSet::empty();
        for name in &self.events {
            match name.parse::<HookKind>() {
                Ok(kind) => events.insert(kind),
                Err(e) => problems.push(invalid("webhooks.events", e.to_string())),
            }
        }
        let secret = match (&self.secret, &self.secret_file) {
            (Some(_), Some(_)) => {
                problems.push(invalid(
                    "webhooks.secret_file",
                    "set either webhooks.secret or webhooks.secret_file, not both",
                ));
                Vec::new()
            }
            (Some(s), None) => s.clone().into_bytes(),
            (None, Some(path)) => match std::fs::read_to_string(path) {
                Ok(s) => s.trim_end_matches(['\n', '\r']).as_bytes().to_vec(),
                Err(e) => {
                    problems.push(invalid(
                        "webhooks.secret_file",
                        format!("cannot read {path}: {e}"),
                    ));
                    Vec::new()
                }
            },
            (None, None) => {
                problems.push(invalid(
                    "webhooks.secret",
                    "required with webhooks.url (or webhooks.secret_file): batches are signed",
                ));
                Vec::new()
            }
        };
        let settings = WebhookSettings {
            url: url.clone(),
            secret,
            events,
            max_age: self.max_age,
            batch_size: self.batch_size,
            timeout: self.timeout,
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let checked_apart = ["webhooks.secret", "webhooks.events"];
        for e in settings.validate() {
            // Reported above with a better message, or a consequence of it.
            if checked_apart.contains(&e.key.as_str()) && !problems.is_empty() {
                continue;
            }
            problems.push(invalid(e.key, e.message));
        }
        if problems.is_empty() {
            Ok(Some(settings))
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn errors(toml: &str) -> String {
        match Config::from_toml(toml) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn off_without_url_and_defaults_with_it() {
        let c = Config::from_toml("").expect("defaults");
        assert!(c.webhooks.hook_set().is_empty());
        let c = Config::from_toml("[webhooks]\nurl = \"http://127.0.0.1:9/h\"\nsecret = \"s\"\n")
            .expect("valid");
        assert_eq!(c.webhooks.hook_set(), HookSet::all());
        let s = c.webhooks.resolve().expect("valid").expect("on");
        assert_eq!(s.max_age, Duration::from_secs(86_400));
        assert_eq!(s.batch_size, 100);
        assert_eq!(s.timeout, Duration::from_secs(5));
    }

    #[test]
    fn bad_values_name_their_keys() {
        let e = errors(
            "[webhooks]\nurl = \"http://127.0.0.1:9/h\"\nsecret = \"s\"\nevents = [\"user.online\", \"user.away\"]\n",
        );
        assert!(
            e.contains("webhooks.events") && e.contains("`user.away`"),
            "{e}"
        );
        let e = errors("[webhooks]\nurl = \"http://127.0.0.1:9/h\"\n");
        assert!(e.contains("webhooks.secret"), "{e}");
        let e = errors("[webhooks]\nurl = \"ftp://x/h\"\nsecret = \"s\"\nbatch_size = 5000\n");
        assert!(
            e.contains("webhooks.url") && e.contains("webhooks.batch_size"),
            "{e}"
        );
        let e = errors("[webhooks]\nurl = \"http://x/h\"\nsecret_file = \"/nonexistent/herald\"\n");
        assert!(e.contains("webhooks.secret_file"), "{e}");
        let e = errors("[webhooks]\nurl = \"http://x/h\"\nsecret = \"s\"\nmax_age = \"soon\"\n");
        assert!(e.contains("max_age"), "{e}");
        let e = errors("[webhooks]\nurl = \"http://x/h\"\nsecret = \"s\"\n[webhooks.headers]\nHerald-Signature = \"x\"\n");
        assert!(e.contains("webhooks.headers.Herald-Signature"), "{e}");
    }

    #[test]
    fn the_event_list_filters() {
        let c = Config::from_toml(
            "[webhooks]\nurl = \"http://x/h\"\nsecret = \"s\"\nevents = [\"user.online\", \"user.offline\"]\n",
        )
        .expect("valid");
        let set = c.webhooks.hook_set();
        assert!(set.contains(HookKind::UserOnline) && set.contains(HookKind::UserOffline));
        assert!(!set.contains(HookKind::MessageSent));
    }

    #[test]
    fn the_secret_is_masked_when_shown() {
        let c = Config::from_toml("[webhooks]\nurl = \"http://x/h\"\nsecret = \"hunter2\"\n")
            .expect("valid");
        assert!(!c.to_masked_toml().contains("hunter2"));
    }
}
