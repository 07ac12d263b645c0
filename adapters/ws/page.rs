//! The web chat page, embedded in the binary so `confab serve` needs no files beside it.
//! Plain HTML and JavaScript with no build step: it speaks the JSON text frames.
//!
//! `confab.js` is the client module (reconnect, exact resume, resend of pending posts) that the
//! page imports and that any other page may import from `/confab.js`; `app.js` is the page's UI.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

/// The page.
const INDEX_HTML: &str = include_str!("page/index.html");

/// The page's script (an ES module that imports [`CLIENT_JS`]).
const APP_JS: &str = include_str!("page/app.js");

/// The client module, for the page and for any other page that talks to this server.
const CLIENT_JS: &str = include_str!("page/confab.js");

/// The media type of both scripts (RFC 9239); a browser runs a module only with a JavaScript one.
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// `GET /`.
pub(super) async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// `GET /app.js`.
pub(super) async fn script() -> Response {
    ([(header::CONTENT_TYPE, JAVASCRIPT)], APP_JS).into_response()
}

/// `GET /confab.js`.
pub(super) async fn client() -> Response {
    ([(header::CONTENT_TYPE, JAVASCRIPT)], CLIENT_JS).into_response()
}
