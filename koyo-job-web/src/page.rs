//! The page: one HTML file with the mount point, the CSRF token and the read-only flag filled
//! in, and its script and stylesheet, all compiled into the crate. Every answer of the router
//! gets the same protective headers.

use std::sync::Arc;

use axum::extract::{OriginalUri, Request, State as Extract};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::State;

const INDEX: &str = include_str!("../assets/index.html");
const SCRIPT: &str = include_str!("../assets/app.js");
const STYLESHEET: &str = include_str!("../assets/app.css");

/// Scripts, styles and requests only from this origin, nothing inline, no framing.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                      connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(crate) async fn index(
    Extract(state): Extract<Arc<State>>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
) -> Response {
    let base = mount_point(original.path(), uri.path());
    let html = INDEX
        .replace("{{BASE}}", &escape(&base))
        .replace("{{CSRF}}", &escape(&state.csrf))
        .replace("{{READ_ONLY}}", if state.read_only { "true" } else { "false" });
    ([(CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

pub(crate) async fn script() -> Response {
    ([(CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response()
}

pub(crate) async fn stylesheet() -> Response {
    ([(CONTENT_TYPE, "text/css; charset=utf-8")], STYLESHEET).into_response()
}

/// The path the router is mounted at, with a trailing slash: the request's full path minus
/// the part the router saw (`/admin/jobs/` for a request of `/admin/jobs` or `/admin/jobs/`).
fn mount_point(original: &str, seen: &str) -> String {
    let prefix = original.strip_suffix(seen).unwrap_or(original);
    let prefix = prefix.trim_end_matches('/');
    format!("{prefix}/")
}

/// Escapes text for an HTML attribute value.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Adds the protective headers to every answer: the content security policy, no sniffing, no
/// framing, no caching (the answers are live data, and the assets are small), and no referrer
/// to other sites.
pub(crate) async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (CONTENT_SECURITY_POLICY, POLICY),
        (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (X_FRAME_OPTIONS, "DENY"),
        (CACHE_CONTROL, "no-store"),
        (REFERRER_POLICY, "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_point_comes_from_the_request() {
        assert_eq!(mount_point("/admin/jobs", "/"), "/admin/jobs/");
        assert_eq!(mount_point("/admin/jobs/", "/"), "/admin/jobs/");
        assert_eq!(mount_point("/", "/"), "/");
        assert_eq!(mount_point("/x/y/", "/"), "/x/y/");
    }

    #[test]
    fn attribute_text_is_escaped() {
        assert_eq!(escape(r#"/a"b<c>&'"#), "/a&quot;b&lt;c&gt;&amp;&#39;");
    }
}
