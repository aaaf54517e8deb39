//! The web console, under `/admin/ui/`: the vault keys with their spend, the
//! audit log with a per-minute activity chart, and the service's health.
//!
//! Server-rendered HTML with a little vanilla JavaScript (countdowns, the
//! chart): no front-end build, no CDN, no external fonts. The CSS and the
//! script are compiled into the binary (`assets/`), because the machines the
//! gateway runs on often have no egress at all.
//!
//! Authentication is a session, not the API's `Authorization: Bearer` header
//! (a browser cannot send that on a link or a form): the operator posts the
//! admin key once to the login page, which sets an `HttpOnly`,
//! `SameSite=Strict` cookie holding a random session id (see [`session`]).
//! Every page and every action needs that session; every state-changing
//! request (all are `POST` forms) also needs the session's CSRF token.
//!
//! The console reaches the domain through the admin API's own handlers
//! (`admin::vault_keys`, `admin::audit`), called as functions with the admin
//! principal: creating a key runs the same `CreateKey::validate()` with the
//! same messages, revoking runs the same propagation to Envoy's workers, and
//! the audit table pages with the same cursor.
//!
//! `keybrake serve --envoy-admin-url` (`KEYBRAKE_ENVOY_ADMIN_URL`, e.g.
//! `http://127.0.0.1:9901`) lets the health page show the filter's counters
//! from Envoy's admin interface; unset, the page says they are not configured.

mod activity;
mod audit;
mod create;
mod health;
mod html;
mod key_form;
mod keys;
mod record;
mod session;

use std::sync::Arc;

use axum::body::to_bytes;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::app::App;
use html::Nav;
pub use session::Authed;

/// Where the console lives; the session cookie is scoped to this path.
pub const BASE: &str = "/admin/ui";

/// The console's state: the application (whose store keeps the sessions), and where Envoy's admin interface is.
pub struct Console {
    pub app: Arc<App>,
    /// From `KEYBRAKE_ENVOY_ADMIN_URL`; `None` when unset or empty.
    pub envoy_admin_url: Option<String>,
}

/// The console's routes, to be merged into the admin router. It carries its
/// own state, so it fits a router of any state type.
pub fn router<S: Clone + Send + Sync + 'static>(app: Arc<App>) -> Router<S> {
    let envoy_admin_url = app.envoy_admin_url.clone();
    let console = Arc::new(Console { app, envoy_admin_url });
    Router::new()
        .route(BASE, get(|| async { Redirect::to("/admin/ui/") }))
        .route("/admin/ui/", get(index))
        .route("/admin/ui/login", get(session::login_page).post(session::login))
        .route("/admin/ui/logout", post(session::logout))
        .route("/admin/ui/keys", get(keys::list).post(create::create))
        .route("/admin/ui/keys/revoke", get(keys::confirm_revoke_prefix).post(keys::revoke_prefix))
        .route("/admin/ui/keys/{id}/revoke", post(keys::revoke_one))
        .route("/admin/ui/keys/{id}/reinstate", post(keys::reinstate_one))
        .route("/admin/ui/audit", get(audit::table))
        .route("/admin/ui/audit/{seq}", get(record::record))
        .route("/admin/ui/api/activity", get(activity::activity))
        .route("/admin/ui/health", get(health::page))
        .route("/admin/ui/assets/console.css", get(css))
        .route("/admin/ui/assets/console.js", get(js))
        .route("/admin/ui/{*rest}", get(not_found).post(not_found))
        .layer(axum::middleware::map_response(security_headers))
        .layer(axum::middleware::from_fn(read_body_first))
        .with_state(console)
}

async fn index(_: Authed) -> Redirect {
    Redirect::to("/admin/ui/keys")
}

/// Unknown console paths: still behind the session, so nothing about the
/// console's shape is told to a stranger.
async fn not_found(auth: Authed) -> Response {
    let body = html::page("Not found", Some(Nav::None), Some(&auth.csrf), "<h1>Not found</h1><p>No such page.</p>");
    html::respond(StatusCode::NOT_FOUND, body)
}

// The assets are served without a session: they are the same static files in
// every build, hold no data, and the login page needs the stylesheet.
async fn css() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/console.css"))
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("assets/console.js"))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// Largest request body the console reads (its forms are a few hundred bytes).
const MAX_BODY: usize = 64 * 1024;

/// Reads the whole request body before any handler or extractor runs.
///
/// A refusal that comes before the body is read (no session: 401) would
/// otherwise make hyper close the connection with the body still unread, and
/// Envoy, which pools connections to this service, can race that close with
/// the next request and answer it 503. With the body read first, every
/// connection stays reusable.
async fn read_body_first(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (parts, body) = req.into_parts();
    match to_bytes(body, MAX_BODY).await {
        Ok(bytes) => next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await,
        Err(_) => {
            (StatusCode::PAYLOAD_TOO_LARGE, [(header::CONNECTION, "close")], "request body too large").into_response()
        }
    }
}

/// Headers every console response carries: a strict Content-Security-Policy
/// (only this origin's script and stylesheet, no inline code, no framing),
/// and `no-store` so pages (one of them shows a new vault key) stay out of caches.
async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    let csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
               form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The JSON body of an admin API handler's response (the console calls the
/// handlers as functions, so it gets exactly what the API would answer).
async fn json_body<T: serde::de::DeserializeOwned>(response: Response) -> Option<T> {
    let bytes = to_bytes(response.into_body(), 16 * 1024 * 1024).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The state handlers share.
type Shared = State<Arc<Console>>;
