//! What the dispatcher is configured with (`[webhooks]`, resolved and
//! checked by the server's config).

use herald_core::{HookSet, SettingError};
use std::time::Duration;

/// Largest `webhooks.batch_size`.
pub const MAX_BATCH_SIZE: usize = 1000;

/// Headers the dispatcher sets itself, which `webhooks.headers` may not.
pub const RESERVED_HEADERS: [&str; 3] = ["content-type", "content-length", "herald-signature"];

/// The `[webhooks]` section, resolved.
#[derive(Clone)]
pub struct WebhookSettings {
    /// Where batches are POSTed (http or https).
    pub url: String,
    /// The HMAC key of `Herald-Signature`.
    pub secret: Vec<u8>,
    /// The kinds sent.
    pub events: HookSet,
    /// Events older than this are dropped instead of sent.
    pub max_age: Duration,
    /// Events per POST at most.
    pub batch_size: usize,
    /// Longest wait for one POST's answer.
    pub timeout: Duration,
    /// Static headers added to every POST.
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &self.url)
            .field("secret", &"********")
            .field("events", &self.events)
            .field("max_age", &self.max_age)
            .field("batch_size", &self.batch_size)
            .field("timeout", &self.timeout)
            .field("headers", &self.headers.len())
            .finish()
    }
}

fn problem(key: impl Into<String>, message: impl Into<String>) -> SettingError {
    SettingError {
        key: key.into(),
        message: message.into(),
    }
}

impl WebhookSettings {
    /// Every problem with these settings, each naming its `webhooks.` key.
    pub fn validate(&self) -> Vec<SettingError> {
        let mut problems = Vec::new();
        match reqwest::Url::parse(&self.url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            Ok(url) => problems.push(problem(
                "webhooks.url",
                format!("`{}`: must be an http:// or https:// URL with a host", url),
            )),
            Err(e) => problems.push(problem(
                "webhooks.url",
                format!("`{}` is not a URL: {e}", self.url),
            )),
        }
        if self.secret.is_empty() {
            problems.push(problem(
                "webhooks.secret",
                "must not be empty (or set webhooks.secret_file)",
            ));
        }
        if self.events.is_empty() {
            problems.push(problem(
                "webhooks.events",
                "must list at least one event type (remove webhooks.url to turn webhooks off)",
            ));
        }
        if self.max_age.is_zero() {
            problems.push(problem("webhooks.max_age", "must be longer than 0s"));
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            problems.push(problem(
                "webhooks.batch_size",
                format!("must be 1 to {MAX_BATCH_SIZE}"),
            ));
        }
        if self.timeout < Duration::from_millis(10) {
            problems.push(problem("webhooks.timeout", "must be at least 10ms"));
        }
        for (name, value) in &self.headers {
            let key = format!("webhooks.headers.{name}");
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                problems.push(problem(key, "is not a valid HTTP header name"));
            } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                problems.push(problem(key, "is set by Herald and cannot be configured"));
            } else if reqwest::header::HeaderValue::from_str(value).is_err() {
                problems.push(problem(key, "is not a valid HTTP header value"));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> WebhookSettings {
        WebhookSettings {
            url: "http://127.0.0.1:9/hooks".into(),
            secret: b"s".to_vec(),
            events: HookSet::all(),
            max_age: Duration::from_secs(3600),
            batch_size: 100,
            timeout: Duration::from_secs(5),
            headers: vec![("X-Env".into(), "test".into())],
        }
    }

    #[test]
    fn good_settings_pass_and_each_bad_one_names_its_key() {
        assert!(settings().validate().is_empty());
        let keys = |s: WebhookSettings| -> Vec<String> {
            s.validate().into_iter().map(|e| e.key).collect()
        };
        let mut s = settings();
        s.url = "ftp://example.com/x".into();
        assert_eq!(keys(s), ["webhooks.url"]);
        let mut s = settings();
        s.url = "not a url".into();
        assert_eq!(keys(s), ["webhooks.url"]);
        let mut s = settings();
        s.batch_size = 1001;
        assert_eq!(keys(s), ["webhooks.batch_size"]);
        let mut s = settings();
        s.secret.clear();
        s.events = HookSet::empty();
        assert_eq!(keys(s), ["webhooks.secret", "webhooks.events"]);
        let mut s = settings();
        s.headers = vec![
            ("Herald-Signature".into(), "x".into()),
            ("bad name".into(), "x".into()),
            ("X-Ok".into(), "line\nbreak".into()),
        ];
        assert_eq!(
            keys(s),
            [
                "webhooks.headers.Herald-Signature",
                "webhooks.headers.bad name",
                "webhooks.headers.X-Ok"
            ]
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let text = format!("{:?}", settings());
        assert!(
            !text.contains("secret: [") && text.contains("********"),
            "{text}"
        );
    }
}
