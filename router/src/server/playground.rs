//! The web playground: a chat page served by the binary itself at `/ui/` (`/` redirects there).
//! Its HTML, scripts and style sheet (`router/ui/`) are embedded at build time; the page loads
//! nothing from anywhere else and talks to the server over the same OpenAI API as every client
//! (streamed chat completions, `/info`, `/metrics`).
//!
//! This module owns the routes that serve those files, the headers that confine them (a
//! Content-Security-Policy that allows only this origin's scripts, styles and connections, so
//! model output, which the page renders as text, could not run even if it reached the DOM as
//! HTML), and the page's configuration (`/ui/config.json`: whether generation needs an API key,
//! which the page then asks for and keeps in the tab's session storage). The routes answer while
//! the model loads (the page then shows the server as loading) and are left out with `--no-ui`.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

/// What the page needs to know before it calls anything.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PageConfig {
    /// Generation routes need `Authorization: Bearer <key>` (`--api-key`, `--api-key-file`).
    pub api_key_required: bool,
}

/// The embedded files, by name under `/ui/`.
const FILES: &[(&str, &str)] = &[
    ("index.html", include_str!("../../ui/index.html")),
    ("style.css", include_str!("../../ui/style.css")),
    ("app.js", include_str!("../../ui/app.js")),
    ("api.js", include_str!("../../ui/api.js")),
    ("markdown.js", include_str!("../../ui/markdown.js")),
    ("panel.js", include_str!("../../ui/panel.js")),
    ("chat.js", include_str!("../../ui/chat.js")),
];

/// A file's content type, by its extension.
fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "text/javascript; charset=utf-8",
    }
}

/// Only this origin's scripts, styles, images and connections; no inline script, no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The playground's routes, merged into the server's outer router.
pub fn routes(config: PageConfig) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/ui/") }))
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { file("index.html") }))
        .route("/ui/config.json", get(move || async move { Json(config) }))
        .route(
            "/ui/{name}",
            get(|Path(name): Path<String>| async move { file(&name) }),
        )
}

/// One embedded file with the page's headers, or a 404.
fn file(name: &str) -> Response {
    let Some(&(_, body)) = FILES.iter().find(|(n, _)| *n == name) else {
        return crate::error::ApiError::RouteNotFound {
            path: format!("/ui/{name}"),
        }
        .into_response();
    };
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    let set = [
        (header::CONTENT_TYPE, content_type(name)),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        // A rollout's new page is seen at the next load.
        (header::CACHE_CONTROL, "no-cache"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_page_names_is_embedded_and_nothing_comes_from_elsewhere() {
        let names: Vec<&str> = FILES.iter().map(|(n, _)| *n).collect();
        for (name, body) in FILES {
            for (at, _) in body.match_indices("/ui/") {
                let rest = &body[at + 4..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
                    .unwrap_or(rest.len());
                let named = &rest[..end];
                assert!(
                    named.is_empty() || named == "config.json" || names.contains(&named),
                    "{name} names /ui/{named}, which is not embedded"
                );
            }
            for scheme in ["http://", "https://", "//cdn", "@import"] {
                assert!(
                    !body.contains(scheme),
                    "{name} refers to {scheme}: the page must load nothing from elsewhere"
                );
            }
        }
    }

    #[test]
    fn files_carry_their_type_and_the_policy() {
        let r = file("app.js");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert!(r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("script-src 'self'"));
        assert_eq!(
            file("index.html").headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(
            file("style.css").headers()[header::CONTENT_TYPE],
            "text/css; charset=utf-8"
        );
        assert_eq!(file("../Cargo.toml").status(), StatusCode::NOT_FOUND);
        assert_eq!(file("nothing.js").status(), StatusCode::NOT_FOUND);
    }
}
