//! The browser origin policy, `server.allowed_origins`: which web pages
//! (by their `Origin` header) may open WebSocket, SSE and Socket.IO
//! connections and call the HTTP API from a browser.
//!
//! Unset, every transport behaves as before the key existed (no check; SSE
//! answers `Access-Control-Allow-Origin: *`; Socket.IO echoes any origin;
//! the API sends no CORS headers). Set, a request carrying an `Origin` that
//! no pattern matches is refused with 403 before anything else happens; a
//! request without `Origin` comes from a non-browser client (browsers send
//! it on every cross-origin request and every WebSocket upgrade) and is let
//! through. The parsing and matching here are the only place origins are
//! judged; the transports ask [`OriginPolicy`].

use crate::config::{ConfigError, ServerConfig};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herald_protocol::ErrorCode;

/// Request headers a browser may send to the API: those the API reads,
/// plus the trace context a tracing publisher adds.
const API_ALLOW_HEADERS: &str =
    "authorization, content-type, x-request-id, idempotency-key, traceparent, tracestate";
/// Methods of the API routes.
const API_ALLOW_METHODS: &str = "GET, POST, OPTIONS";
/// Response headers a browser page may read beyond the safelisted ones.
const API_EXPOSE_HEADERS: &str = "x-request-id, retry-after";
/// How long a browser may cache a preflight answer, in seconds.
const API_PREFLIGHT_MAX_AGE: &str = "600";

/// A web origin: scheme, lower-case host and port, the port left out when
/// it is the scheme's default (browsers omit it in `Origin`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

/// One entry of `server.allowed_origins`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `*`: any origin.
    Any,
    /// `https://app.example.com[:port]`.
    Exact(Origin),
    /// `https://*.example.com[:port]`: one or more labels before the
    /// suffix, which is stored with its leading dot (`.example.com`).
    Subdomains {
        scheme: String,
        suffix: String,
        port: Option<u16>,
    },
}

impl Pattern {
    fn matches(&self, origin: &Origin) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(o) => o == origin,
            Pattern::Subdomains {
                scheme,
                suffix,
                port,
            } => {
                *scheme == origin.scheme
                    && *port == origin.port
                    && origin.host.len() > suffix.len()
                    && origin.host.ends_with(suffix.as_str())
            }
        }
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Splits `scheme://host[:port]` into its parts, lower-cased, refusing a
/// path, a query, user info or a malformed piece. `wildcard` allows a
/// leading `*.` in the host (returned as part of it).
fn split(text: &str, wildcard: bool) -> Result<Origin, String> {
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err("must be `*` or `scheme://host[:port]`".into());
    };
    let scheme = scheme.to_ascii_lowercase();
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b));
    if !scheme_ok {
        return Err(format!("`{scheme}` is not a URL scheme"));
    }
    if rest.contains(['/', '?', '#']) {
        return Err("an origin has no path, query or fragment (drop what follows the host)".into());
    }
    if rest.contains('@') {
        return Err("an origin has no user name or password".into());
    }
    let (host, port) = match rest.rsplit_once(':') {
        // `[::1]` holds colons of its own; a port follows the bracket.
        Some((host, port)) if !port.contains(']') => {
            let port: u16 = port
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("`{port}` is not a port (1 to 65535)"))?;
            (host, Some(port))
        }
        _ => (rest, None),
    };
    let host = host.to_ascii_lowercase();
    let name = match host.strip_prefix("*.") {
        Some(suffix) if wildcard => suffix,
        _ => host.as_str(),
    };
    if !valid_host(name) {
        return Err(if name.contains('*') {
            "`*` may only stand alone or as the first label (`https://*.example.com`)".into()
        } else {
            format!("`{name}` is not a host name")
        });
    }
    let port = port.filter(|p| Some(*p) != default_port(&scheme));
    Ok(Origin { scheme, host, port })
}

/// A DNS name (letters, digits, `-`, `_` in dot-separated labels) or a
/// bracketed IPv6 address.
fn valid_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn parse_pattern(text: &str) -> Result<Pattern, String> {
    let text = text.trim();
    if text == "*" {
        return Ok(Pattern::Any);
    }
    let origin = split(text, true)?;
    Ok(match origin.host.strip_prefix('*') {
        Some(suffix) => Pattern::Subdomains {
            scheme: origin.scheme,
            suffix: suffix.to_owned(),
            port: origin.port,
        },
        None => Pattern::Exact(origin),
    })
}

/// What the policy says about one request's `Origin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict<'a> {
    /// `server.allowed_origins` is unset: today's behaviour.
    Unrestricted,
    /// The request has no `Origin` (not a browser, or same-origin).
    Absent,
    /// The origin is allowed; the header value to echo.
    Allowed(&'a HeaderValue),
    /// The origin is not allowed.
    Refused(&'a HeaderValue),
}

/// `server.allowed_origins`, parsed.
#[derive(Debug, Clone, Default)]
pub(crate) struct OriginPolicy {
    /// `None` when the key is unset.
    patterns: Option<Vec<Pattern>>,
}

impl OriginPolicy {
    /// Parses the configured patterns; on failure, each bad entry's index
    /// with what is wrong with it.
    pub(crate) fn new(list: Option<&[String]>) -> Result<Self, Vec<(usize, String)>> {
        let Some(list) = list else {
            return Ok(Self::default());
        };
        let mut patterns = Vec::with_capacity(list.len());
        let mut problems = Vec::new();
        for (i, text) in list.iter().enumerate() {
            match parse_pattern(text) {
                Ok(p) => patterns.push(p),
                Err(e) => problems.push((i, format!("`{text}`: {e}"))),
            }
        }
        if problems.is_empty() {
            Ok(Self {
                patterns: Some(patterns),
            })
        } else {
            Err(problems)
        }
    }

    /// `server.allowed_origins` of `server`; a bad pattern is an error
    /// naming `server.allowed_origins[<i>]` (config validation reports
    /// them first; a config built in code may not have been validated).
    pub(crate) fn from_config(server: &ServerConfig) -> Result<Self, ConfigError> {
        Self::new(server.allowed_origins.as_deref()).map_err(|bad| {
            let mut errors: Vec<ConfigError> = bad
                .into_iter()
                .map(|(i, message)| ConfigError::Invalid {
                    key: format!("server.allowed_origins[{i}]"),
                    message,
                })
                .collect();
            if errors.len() == 1 {
                errors.remove(0)
            } else {
                ConfigError::Many(errors)
            }
        })
    }

    /// Whether `server.allowed_origins` is set.
    pub(crate) fn is_set(&self) -> bool {
        self.patterns.is_some()
    }

    /// Whether `origin` (an `Origin` header's text) is allowed. An origin
    /// that does not parse (`null`, say) matches `*` only.
    fn allows(&self, origin: &str) -> bool {
        let Some(patterns) = &self.patterns else {
            return true;
        };
        if patterns.contains(&Pattern::Any) {
            return true;
        }
        match split(origin, false) {
            Ok(origin) => patterns.iter().any(|p| p.matches(&origin)),
            Err(_) => false,
        }
    }

    /// The verdict on a request with these headers.
    pub(crate) fn judge<'a>(&self, headers: &'a HeaderMap) -> Verdict<'a> {
        if !self.is_set() {
            return Verdict::Unrestricted;
        }
        match headers.get(header::ORIGIN) {
            None => Verdict::Absent,
            Some(value) => match value.to_str() {
                Ok(text) if self.allows(text) => Verdict::Allowed(value),
                _ => Verdict::Refused(value),
            },
        }
    }

    /// The 403 for a request whose `Origin` is not allowed, if it is one.
    pub(crate) fn refusal(&self, headers: &HeaderMap) -> Option<Response> {
        match self.judge(headers) {
            Verdict::Refused(origin) => Some(refused(origin)),
            _ => None,
        }
    }

    /// Sets the CORS headers of an SSE stream's answer: `*` when the policy
    /// is unset (the token travels in the query or a header, never in a
    /// cookie, so any page may read its own stream), the origin itself and
    /// `Vary: Origin` when it is allowed.
    pub(crate) fn stream_headers(&self, request: &HeaderMap, response: &mut HeaderMap) {
        match self.judge(request) {
            Verdict::Unrestricted => {
                response.insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
            }
            Verdict::Allowed(origin) => {
                response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                response.append(header::VARY, HeaderValue::from_static("origin"));
            }
            Verdict::Absent | Verdict::Refused(_) => {}
        }
    }
}

/// 403 `forbidden` naming the origin and the key.
fn refused(origin: &HeaderValue) -> Response {
    let shown: String = String::from_utf8_lossy(origin.as_bytes())
        .chars()
        .take(128)
        .collect();
    ApiError::new(
        StatusCode::FORBIDDEN,
        ErrorCode::Forbidden,
        format!("origin `{shown}` is not allowed (server.allowed_origins)"),
    )
    .into_response()
}

/// CORS on the HTTP API (`/api/...`) when `server.allowed_origins` is set:
/// a preflight (`OPTIONS`) from an allowed origin is answered 204 with the
/// methods and headers the API takes, from another origin 403; an actual
/// request from an allowed origin gets `Access-Control-Allow-Origin` with
/// that origin. Unset, the API sends no CORS headers, as before.
pub(crate) async fn api_cors(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if !app.origins.is_set() || !crate::request_id::is_api(request.uri().path()) {
        return next.run(request).await;
    }
    let preflight = request.method() == Method::OPTIONS;
    let origin = match app.origins.judge(request.headers()) {
        Verdict::Allowed(origin) => origin.clone(),
        Verdict::Refused(origin) if preflight => return refused(origin),
        // Without an allowed origin a browser reads nothing cross-origin;
        // the key check decides the rest.
        _ => return next.run(request).await,
    };
    let mut response = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(API_ALLOW_METHODS),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(API_ALLOW_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(API_PREFLIGHT_MAX_AGE),
        );
        r
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(API_EXPOSE_HEADERS),
    );
    h.append(header::VARY, HeaderValue::from_static("origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(list: &[&str]) -> OriginPolicy {
        let list: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
        OriginPolicy::new(Some(&list)).expect("valid patterns")
    }

    fn problems(list: &[&str]) -> Vec<(usize, String)> {
        let list: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
        OriginPolicy::new(Some(&list)).expect_err("invalid patterns")
    }

    #[test]
    fn exact_origins_compare_scheme_host_and_port_case_insensitively() {
        let p = policy(&["https://App.Example.com"]);
        assert!(p.allows("https://app.example.com"));
        assert!(p.allows("HTTPS://APP.EXAMPLE.COM"));
        // The default port is the same origin, written or not.
        assert!(p.allows("https://app.example.com:443"));
        assert!(!p.allows("http://app.example.com"));
        assert!(!p.allows("https://app.example.com:8443"));
        assert!(!p.allows("https://other.example.com"));
        assert!(!p.allows("https://x.app.example.com"));
        assert!(!p.allows("https://app.example.com.evil.net"));
        assert!(!p.allows("null"));
        assert!(!p.allows(""));

        let p = policy(&["http://localhost:3000", "https://app.example.com:443"]);
        assert!(p.allows("http://localhost:3000"));
        assert!(!p.allows("http://localhost"));
        assert!(!p.allows("http://localhost:3001"));
        assert!(p.allows("https://app.example.com"));
    }

    #[test]
    fn wildcards_match_one_or_more_labels_but_not_the_bare_domain() {
        let p = policy(&["https://*.example.org"]);
        assert!(p.allows("https://a.example.org"));
        assert!(p.allows("https://a.b.example.org"));
        assert!(p.allows("https://A.Example.ORG"));
        assert!(!p.allows("https://example.org"));
        assert!(!p.allows("https://aexample.org"));
        assert!(!p.allows("http://a.example.org"));
        assert!(!p.allows("https://a.example.org:8443"));
        assert!(!p.allows("https://a.example.org.evil.net"));

        let p = policy(&["http://*.example.org:8080"]);
        assert!(p.allows("http://a.example.org:8080"));
        assert!(!p.allows("http://a.example.org"));
    }

    #[test]
    fn a_star_allows_anything_even_unparsable_origins() {
        let p = policy(&["https://a.example.com", "*"]);
        assert!(p.allows("https://b.example.net"));
        assert!(p.allows("null"));
    }

    #[test]
    fn an_empty_list_allows_no_browser_origin() {
        let p = policy(&[]);
        assert!(p.is_set());
        assert!(!p.allows("https://app.example.com"));
        let mut headers = HeaderMap::new();
        assert_eq!(p.judge(&headers), Verdict::Absent);
        headers.insert(header::ORIGIN, HeaderValue::from_static("https://a.b"));
        assert!(matches!(p.judge(&headers), Verdict::Refused(_)));
    }

    #[test]
    fn unset_is_unrestricted() {
        let p = OriginPolicy::new(None).expect("unset");
        assert!(!p.is_set());
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, HeaderValue::from_static("https://a.b"));
        assert_eq!(p.judge(&headers), Verdict::Unrestricted);
        assert!(p.refusal(&headers).is_none());
    }

    #[test]
    fn other_schemes_and_ipv6_hosts_work() {
        let p = policy(&["capacitor://localhost", "http://[::1]:8080"]);
        assert!(p.allows("capacitor://localhost"));
        assert!(p.allows("http://[::1]:8080"));
        assert!(!p.allows("http://[::1]"));
    }

    #[test]
    fn malformed_patterns_are_refused_with_their_index() {
        let bad = problems(&[
            "https://ok.example.com",
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://a*.example.com",
            "https://*.*.example.com",
            "https://*",
            "https://app.example.com:0",
            "https://app.example.com:99999",
            "https://user@app.example.com",
            "1https://x.com",
            "https://",
            "https://exa mple.com",
        ]);
        let indexes: Vec<usize> = bad.iter().map(|(i, _)| *i).collect();
        assert_eq!(indexes, (1..=12).collect::<Vec<_>>(), "{bad:?}");
        assert!(bad[1].1.contains("no path"), "{bad:?}");
        assert!(bad[3].1.contains("first label"), "{bad:?}");
        assert!(bad[6].1.contains("port"), "{bad:?}");
    }
}
