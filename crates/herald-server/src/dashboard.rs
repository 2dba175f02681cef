//! The operator dashboard at `/dashboard`: plain HTML, JavaScript and CSS
//! built into the binary, so a node serves it offline with no build step.
//! The page itself holds no data; it asks the operator for an admin API key
//! and reads `/api/v1/stats` and `/metrics` like any other client.

use crate::error::ApiError;
use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use herald_protocol::ErrorCode;

/// Same origin only; `ws:`/`wss:` for the playground's WebSocket; no inline
/// script or style, no framing, no plugins.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// One embedded file of `crates/herald-server/dashboard/`.
macro_rules! asset {
    ($name:literal, $content_type:expr) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_bytes!(concat!("../dashboard/", $name)),
        }
    };
}

/// Every file the dashboard serves.
const ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("chart.js", JS),
    asset!("format.js", JS),
    asset!("inspector.js", JS),
    asset!("playground.js", JS),
    asset!("prometheus.js", JS),
    asset!("style.css", CSS),
];

/// `GET /dashboard` and `GET /dashboard/{file}`.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/dashboard", get(index))
        .route("/dashboard/{file}", get(file))
}

async fn index() -> Response {
    asset("index.html")
}

async fn file(Path(name): Path<String>) -> Response {
    asset(&name)
}

/// The named asset with its content type and security headers, or a JSON
/// 404.
fn asset(name: &str) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "no-cache"),
                (header::CONTENT_SECURITY_POLICY, CSP),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::REFERRER_POLICY, "no-referrer"),
                (header::X_FRAME_OPTIONS, "DENY"),
            ],
            a.body,
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no such dashboard asset",
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_of(r: &Response, name: header::HeaderName) -> String {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    async fn body_of(r: Response) -> String {
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .expect("read body");
        String::from_utf8(bytes.to_vec()).expect("utf-8 body")
    }

    #[tokio::test]
    async fn index_is_html_with_strict_headers() {
        let r = index().await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            header_of(&r, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        assert_eq!(header_of(&r, header::CACHE_CONTROL), "no-cache");
        let csp = header_of(&r, header::CONTENT_SECURITY_POLICY);
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(csp.contains("connect-src 'self' ws:"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        let body = body_of(r).await;
        assert!(
            body.contains("<script type=\"module\" src=\"/dashboard/app.js\""),
            "{body}"
        );
        assert!(body.contains("/dashboard/style.css"), "{body}");
    }

    #[tokio::test]
    async fn assets_have_their_content_types() {
        for (name, ty) in [
            ("index.html", "text/html; charset=utf-8"),
            ("app.js", "text/javascript; charset=utf-8"),
            ("api.js", "text/javascript; charset=utf-8"),
            ("chart.js", "text/javascript; charset=utf-8"),
            ("format.js", "text/javascript; charset=utf-8"),
            ("inspector.js", "text/javascript; charset=utf-8"),
            ("playground.js", "text/javascript; charset=utf-8"),
            ("prometheus.js", "text/javascript; charset=utf-8"),
            ("style.css", "text/css; charset=utf-8"),
        ] {
            let r = file(Path(name.to_owned())).await;
            assert_eq!(r.status(), StatusCode::OK, "{name}");
            assert_eq!(header_of(&r, header::CONTENT_TYPE), ty, "{name}");
            assert_eq!(header_of(&r, header::CACHE_CONTROL), "no-cache", "{name}");
            assert_eq!(header_of(&r, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
            assert!(!body_of(r).await.is_empty(), "{name} is empty");
        }
    }

    /// Every `import … from "/dashboard/x.js"` in a served module names a
    /// served asset, so the module graph loads whole.
    #[test]
    fn module_imports_are_all_served() {
        let mut imports = 0;
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(a.body).expect("utf-8 script");
            for rest in text.split("from \"/dashboard/").skip(1) {
                let target = rest.split('"').next().unwrap_or_default();
                assert!(
                    ASSETS.iter().any(|b| b.name == target),
                    "{} imports unserved /dashboard/{target}",
                    a.name
                );
                imports += 1;
            }
        }
        assert!(imports > 0, "app.js imports its modules");
    }

    #[tokio::test]
    async fn unknown_assets_are_json_404s() {
        for name in ["nope.js", "../Cargo.toml", "", "INDEX.HTML"] {
            let r = file(Path(name.to_owned())).await;
            assert_eq!(r.status(), StatusCode::NOT_FOUND, "{name}");
            assert!(
                header_of(&r, header::CONTENT_TYPE).starts_with("application/json"),
                "{name}"
            );
            let body: serde_json::Value =
                serde_json::from_str(&body_of(r).await).expect("JSON body");
            assert_eq!(body["error"]["code"], "not_found", "{body}");
        }
    }

    /// One raw HTTP/1.1 request to `addr`; returns (status, head, body).
    async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("answer in time")
            .expect("read");
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("HTTP answer");
        let status = head[9..12].parse().expect("status code");
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    #[tokio::test]
    async fn routes_answer_through_the_router() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, routes::<()>()).await;
        });
        let (s, head, body) = raw_get(addr, "/dashboard").await;
        assert_eq!(s, 200, "{head}");
        assert!(head.contains("content-type: text/html"), "{head}");
        assert!(head.contains("content-security-policy: "), "{head}");
        assert!(body.contains("<html"), "{body}");
        let (s, head, _) = raw_get(addr, "/dashboard/app.js").await;
        assert_eq!(s, 200, "{head}");
        assert!(head.contains("content-type: text/javascript"), "{head}");
        let (s, head, _) = raw_get(addr, "/dashboard/style.css").await;
        assert_eq!(s, 200, "{head}");
        assert!(head.contains("content-type: text/css"), "{head}");
        let (s, head, body) = raw_get(addr, "/dashboard/missing.png").await;
        assert_eq!(s, 404, "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(body.contains("not_found"), "{body}");
        server.abort();
    }
}
