//! `auth.api_keys[].name`: the name an API key appears under in the audit
//! log and the publish log lines, so the key itself is never written
//! anywhere.

use super::{invalid, ApiKeyConfig, ConfigError};
use std::collections::HashMap;

/// Longest API key name.
const MAX_NAME_LEN: usize = 64;

impl ApiKeyConfig {
    /// The key's name: the configured one, else `key-<n>` with `n` its
    /// 1-based position in `auth.api_keys`.
    pub fn name_or_default(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("key-{}", index + 1))
    }
}

/// Checks every key's name: 1 to 64 characters of `A-Z a-z 0-9 . _ -`,
/// and unique among the keys (defaults included).
pub(super) fn validate_names(keys: &[ApiKeyConfig], problems: &mut Vec<ConfigError>) {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        let name = k.name_or_default(i);
        let key = format!("auth.api_keys[{i}].name");
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            let shown: String = name.chars().take(80).collect();
            problems.push(invalid(
                key,
                format!(
                    "`{shown}`: must be 1 to {MAX_NAME_LEN} characters of letters, digits, \
                     `.`, `_` and `-`"
                ),
            ));
            continue;
        }
        if let Some(first) = seen.insert(name.clone(), i) {
            problems.push(invalid(
                key,
                format!(
                    "`{name}` is already the name of auth.api_keys[{first}]; names must be unique"
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const KEYS: &str = r#"
[auth]
hs256_secret = "0123456789abcdef0123456789abcdef"
"#;

    fn config(keys: &str) -> Result<Config, String> {
        Config::from_toml(&format!("{KEYS}{keys}")).map_err(|e| e.to_string())
    }

    /// An `[[auth.api_keys]]` entry with the given name (`None`: no `name`
    /// key, so the default applies).
    fn key(key: &str, scope: &str, name: Option<&str>) -> String {
        let name = name.map(|n| format!("name = {n:?}\n")).unwrap_or_default();
        format!("[[auth.api_keys]]\nkey = {key:?}\nscopes = [{scope:?}]\n{name}")
    }

    /// An admin key then a publish key, named as given.
    fn two_keys(first: Option<&str>, second: Option<&str>) -> String {
        format!(
            "{}{}",
            key("first-key-000000000000", "admin", first),
            key("second-key-00000000000", "publish", second)
        )
    }

    #[test]
    fn names_default_to_the_position_and_show_in_config_show() {
        let c = config(&two_keys(None, Some("billing-svc.v2"))).expect("valid");
        let names: Vec<String> = c
            .auth
            .api_keys
            .iter()
            .enumerate()
            .map(|(i, k)| k.name_or_default(i))
            .collect();
        assert_eq!(names, ["key-1", "billing-svc.v2"]);
        let shown = c.to_masked_toml();
        assert!(shown.contains(r#"name = "key-1""#), "{shown}");
        assert!(shown.contains(r#"name = "billing-svc.v2""#), "{shown}");
        assert!(!shown.contains("first-key"), "{shown}");
    }

    #[test]
    fn duplicate_and_bad_names_are_refused_naming_the_key() {
        let e = config(&two_keys(Some("ops"), Some("ops"))).expect_err("duplicate");
        assert!(e.contains("auth.api_keys[1].name"), "{e}");
        assert!(e.contains("auth.api_keys[0]"), "{e}");

        // A default name counts too.
        let e = config(&two_keys(Some("key-2"), None)).expect_err("duplicate default");
        assert!(e.contains("auth.api_keys[1].name"), "{e}");

        let one = |name: &str| config(&key("first-key-000000000000", "admin", Some(name)));
        let long = "x".repeat(65);
        for bad in ["", "has space", "naïve", long.as_str(), "a/b"] {
            let e = one(bad).expect_err("bad name");
            assert!(e.contains("auth.api_keys[0].name"), "{bad:?}: {e}");
        }
        assert!(one(&"x".repeat(64)).is_ok());
    }
}
