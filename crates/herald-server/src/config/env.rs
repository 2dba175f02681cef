//! Which `HERALD_*` environment variables are config overrides.
//!
//! Config variables are `HERALD_<SECTION>__<KEY>`. Kubernetes also injects
//! service-link variables into every pod of a namespace for each Service,
//! named after it: a Service `herald` (or `herald-redis`) gives
//! `HERALD_PORT=tcp://…`, `HERALD_SERVICE_HOST`, `HERALD_PORT_8080_TCP_ADDR`
//! (or `HERALD_REDIS_SERVICE_PORT`…). Those are not Herald's to read: they
//! are ignored, while any other `HERALD_*` name that is not a config key is
//! still refused, so a typo never passes silently.

use super::ConfigError;

/// `HERALD_LOG_FORMAT` belongs to the command line (`--log-format`).
pub(super) const COMMAND_LINE: &[&str] = &["LOG_FORMAT"];

/// How the `HERALD_*` variables of an environment divide up.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct HeraldVars {
    /// Kubernetes service-link variables, ignored.
    pub(super) service_links: Vec<String>,
    /// Names that are neither config keys nor service links, refused.
    pub(super) unknown: Vec<String>,
}

/// Sorts the `HERALD_*` names of `vars` (full names, e.g. `HERALD_PORT`).
/// Names with `__` are left to the config loader, which names any unknown
/// key itself.
pub(super) fn classify<'a>(vars: impl IntoIterator<Item = &'a str>) -> HeraldVars {
    let mut out = HeraldVars::default();
    for name in vars {
        let Some(rest) = strip_prefix_ignore_case(name, "HERALD_") else {
            continue;
        };
        let upper = rest.to_ascii_uppercase();
        if upper.contains("__") || COMMAND_LINE.contains(&upper.as_str()) {
            continue;
        }
        if is_service_link(&upper) {
            out.service_links.push(name.to_owned());
        } else {
            out.unknown.push(name.to_owned());
        }
    }
    out.service_links.sort();
    out.unknown.sort();
    out
}

/// The error for `HERALD_*` names that are not config keys.
pub(super) fn unknown_error(unknown: &[String]) -> Option<ConfigError> {
    let first = unknown.first()?;
    Some(ConfigError::Invalid {
        key: first.clone(),
        message: format!(
            "not a config variable ({}); config variables are HERALD_<SECTION>__<KEY> with a \
             double underscore, e.g. HERALD_SERVER__LISTEN",
            unknown.join(", ")
        ),
    })
}

fn strip_prefix_ignore_case<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let head = name.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &name[prefix.len()..])
}

/// Whether `rest` (the name after `HERALD_`, upper case) is what Kubernetes
/// injects for a Service named `herald` or `herald-<something>`: the
/// Service's name part, then `SERVICE_HOST`, `SERVICE_PORT[_<port name>]`,
/// `PORT`, or `PORT_<number>_<TCP|UDP|SCTP>[_PROTO|_PORT|_ADDR]`.
fn is_service_link(rest: &str) -> bool {
    let tokens: Vec<&str> = rest.split('_').collect();
    (0..tokens.len()).any(|start| {
        // The Service's name part before the tail must be real words.
        tokens[..start].iter().all(|t| !t.is_empty()) && is_link_tail(&tokens[start..])
    })
}

fn is_link_tail(tail: &[&str]) -> bool {
    match tail {
        ["SERVICE", "HOST"] | ["PORT"] => true,
        ["SERVICE", "PORT", named @ ..] => named.iter().all(|t| !t.is_empty()),
        ["PORT", number, proto, field @ ..] => {
            !number.is_empty()
                && number.bytes().all(|b| b.is_ascii_digit())
                && matches!(*proto, "TCP" | "UDP" | "SCTP")
                && matches!(field, [] | ["PROTO" | "PORT" | "ADDR"])
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_service_links_are_recognised() {
        let vars = [
            "HERALD_PORT",
            "HERALD_SERVICE_HOST",
            "HERALD_SERVICE_PORT",
            "HERALD_SERVICE_PORT_HTTP",
            "HERALD_PORT_8080_TCP",
            "HERALD_PORT_8080_TCP_PROTO",
            "HERALD_PORT_8080_TCP_PORT",
            "HERALD_PORT_8080_TCP_ADDR",
            "HERALD_REDIS_SERVICE_HOST",
            "HERALD_REDIS_PORT_6379_TCP_ADDR",
            "HERALD_NATS_PORT",
        ];
        let got = classify(vars);
        assert_eq!(got.service_links.len(), vars.len(), "{got:?}");
        assert!(got.unknown.is_empty(), "{got:?}");
    }

    #[test]
    fn config_keys_and_log_format_are_left_alone() {
        let got = classify([
            "HERALD_SERVER__LISTEN",
            "HERALD_SERVER__LISTN",
            "HERALD_LOG_FORMAT",
            "PATH",
            "HERALDRY",
        ]);
        assert_eq!(got, HeraldVars::default());
    }

    #[test]
    fn other_names_are_refused() {
        let got = classify([
            "HERALD_LISTEN",
            "HERALD_AUTH_HS256_SECRET",
            "HERALD_PORT_HTTP_TCP",
            "HERALD_PORT_8080_TCP_HOST",
            "HERALD__PORT",
        ]);
        assert!(got.service_links.is_empty(), "{got:?}");
        assert_eq!(got.unknown.len(), 5, "{got:?}");
        let err = unknown_error(&got.unknown).expect("an error").to_string();
        assert!(err.contains("HERALD_LISTEN"), "{err}");
        assert!(err.contains("HERALD_<SECTION>__<KEY>"), "{err}");
    }
}
