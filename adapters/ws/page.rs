//! The web chat page, embedded in the binary so `confab serve` needs no files beside it.
//! Plain HTML and JavaScript with no build step: it speaks the JSON text frames.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

/// The page.
const INDEX_HTML: &str = include_str!("page/index.html");

/// The page's script.
const APP_JS: &str = include_str!("page/app.js");

/// `GET /`.
pub(super) async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// `GET /app.js`.
pub(super) async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS).into_response()
}
