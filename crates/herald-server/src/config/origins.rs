//! `server.allowed_origins`: checked with the same parser the transports
//! match origins with ([`crate::origin`]).

use super::{ConfigError, ServerConfig};
use crate::origin::OriginPolicy;

/// Reports each bad pattern as `server.allowed_origins[<i>]`.
pub(super) fn validate(server: &ServerConfig, problems: &mut Vec<ConfigError>) {
    match OriginPolicy::from_config(server) {
        Ok(_) => {}
        Err(ConfigError::Many(errors)) => problems.extend(errors),
        Err(e) => problems.push(e),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn bad_patterns_are_refused_naming_their_index() {
        let e = Config::from_toml(
            r#"
[server]
allowed_origins = ["https://app.example.com", "app.example.com", "https://*.example.org/x"]
"#,
        )
        .expect_err("bad patterns")
        .to_string();
        assert!(e.contains("server.allowed_origins[1]"), "{e}");
        assert!(e.contains("server.allowed_origins[2]"), "{e}");
        assert!(!e.contains("server.allowed_origins[0]"), "{e}");

        let c = Config::from_toml(
            r#"
[server]
allowed_origins = ["*", "https://*.example.org", "http://localhost:3000"]
"#,
        )
        .expect("valid patterns");
        assert_eq!(c.server.allowed_origins.map(|o| o.len()), Some(3));
        assert!(Config::default().server.allowed_origins.is_none());
    }
}
