//! The web console: a single-page app served by the HTTP listener at `/` (and over HTTPS when
//! `http_tls_listen` is set), built from the static files in this directory, embedded in the
//! binary with `include_str!`/`include_bytes!`: no build step, no Node and no CDN at run time.
//!
//! The files are plain HTML, CSS and JavaScript (no bundler); charts use uPlot, vendored under
//! `vendor/` (version and license in `vendor/README.md`). The app logs in with the same users
//! and tags as the admin API: it keeps the user's credentials in the tab's session storage and
//! sends them as basic auth on every `/api` call, marked with `X-Ferry-Console` so a 401 comes
//! back without `WWW-Authenticate` (no browser password dialog over the login page). Every page
//! polls the API every 5 s (the history's tick). Nothing here needs auth: the files hold no
//! data. A strict Content-Security-Policy allows scripts from this origin only.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const PAGES_JS: &str = include_str!("pages.js");
const APP_CSS: &str = include_str!("app.css");
const UPLOT_JS: &str = include_str!("vendor/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("vendor/uPlot.min.css");

/// The header the console sends on API calls (see the module docs).
pub const CONSOLE_HEADER: &str = "x-ferry-console";

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

/// `/` and `/console/...`, to be merged into the HTTP router.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/console", get(index))
        .route("/console/{file}", get(asset))
        .route("/console/vendor/{file}", get(vendor))
}

fn serve(content_type: &'static str, body: &'static str, cache: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn index() -> Response {
    serve("text/html; charset=utf-8", INDEX_HTML, "no-cache")
}

/// The app's own files change with the binary: revalidate each time (they are small).
async fn asset(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => serve("text/javascript; charset=utf-8", APP_JS, "no-cache"),
        "pages.js" => serve("text/javascript; charset=utf-8", PAGES_JS, "no-cache"),
        "app.css" => serve("text/css; charset=utf-8", APP_CSS, "no-cache"),
        _ => not_found(),
    }
}

/// The vendored files change only with their version: cache them for a day.
async fn vendor(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "uPlot.iife.min.js" => serve(
            "text/javascript; charset=utf-8",
            UPLOT_JS,
            "public, max-age=86400",
        ),
        "uPlot.min.css" => serve(
            "text/css; charset=utf-8",
            UPLOT_CSS,
            "public, max-age=86400",
        ),
        _ => not_found(),
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "no such console file\n",
    )
        .into_response()
}
