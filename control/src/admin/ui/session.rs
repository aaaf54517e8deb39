//! Console sessions and CSRF protection.
//!
//! **Why a session and not the bearer header.** A browser cannot put
//! `Authorization: Bearer <admin key>` on a link or a form, and keeping the
//! admin key in JavaScript or in a cookie would hand it to any script or log
//! that sees them. So the admin key is posted once, to `POST /admin/ui/login`;
//! it is checked exactly like the API checks it (`Vault::is_admin_key`, and a
//! wrong key counts in `App::auth_failures`, the same per-source limiter: ten
//! failures within a minute and the login, and the API, answer 429 from that
//! source for the rest of the minute).
//!
//! **The session.** A successful login creates 32 random bytes (the OS
//! CSPRNG); their hex is the cookie `keybrake_console`, with `HttpOnly`
//! (no script reads it), `SameSite=Strict` (no other site's page sends it),
//! `Path=/admin/ui` (the API never sees it) and, when the request came over
//! https as told by `X-Forwarded-Proto` (Envoy, or a load balancer in front of
//! it, sets that header), `Secure`. The store keeps only the SHA-256 of the
//! id, with an absolute expiry of 8 hours; logout deletes it, and the sweeper
//! purges expired ones. Being in the store, a session is known to every
//! control replica on the same database (a browser may reach any of them) and
//! survives a restart.
//!
//! We chose server-side sessions over an HMAC token derived from the admin
//! key because the vault keeps only the admin key's hash and logout must
//! really end a session.
//!
//! **CSRF.** Each session has its own random CSRF token, put in a hidden
//! `csrf` field of every form the console renders; every `POST` compares it
//! (in constant time) with the session's and answers 403 when it is missing or
//! wrong. `SameSite=Strict` already keeps cross-site requests from carrying
//! the cookie; the token also covers browsers and proxies that get that wrong.

use std::time::{Duration, Instant};

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use keybrake_core::fingerprint::to_hex;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::html::{self, esc};
use super::{Console, Shared, BASE};
use crate::app::App;
use crate::store::StoreError;

/// The session cookie's name.
pub const COOKIE: &str = "keybrake_console";
/// A session's absolute lifetime.
pub const TTL: Duration = Duration::from_secs(8 * 3600);

fn random_hex() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(to_hex(&bytes))
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn now_secs(app: &App) -> i64 {
    app.clock.now_us() / 1_000_000
}

/// Starts a session; returns its id (the cookie). `None` without an entropy source or a store.
async fn create_session(app: &App) -> Option<String> {
    let (id, csrf) = (random_hex()?, random_hex()?);
    let (key, now) = (digest(&id), now_secs(app));
    let expires_at = now.saturating_add(i64::try_from(TTL.as_secs()).unwrap_or(i64::MAX));
    // Expired sessions are purged by the sweeper (serve.rs), not here.
    let stored = app.store.write(move |l| l.insert_session(&key, &csrf, expires_at));
    match stored.await {
        Ok(()) => Some(id),
        Err(e) => {
            tracing::error!(error = %e, "console session not stored");
            None
        }
    }
}

/// The live session a cookie names, if any.
async fn session(app: &App, id: &str) -> Result<Option<Authed>, StoreError> {
    let (key, now) = (digest(id), now_secs(app));
    let csrf = app.store.read(move |l| l.session(&key, now)).await?;
    Ok(csrf.map(|csrf| Authed { csrf, key }))
}

/// A request with a live session. As an extractor it refuses the rest:
/// a page (GET) redirects to the login page, anything else gets 401.
pub struct Authed {
    pub csrf: String,
    key: [u8; 32],
}

impl Authed {
    /// The refusal (403) of a form whose CSRF token is not this session's; `None` when it is.
    pub fn csrf_refusal(&self, presented: &str) -> Option<Response> {
        if bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes())) && !presented.is_empty() {
            return None;
        }
        let body = html::page(
            "Refused",
            None,
            None,
            "<h1>Refused</h1><p class=\"error\">This form did not come from this console session (missing or wrong \
             CSRF token). Reload the page and try again.</p>",
        );
        Some(html::respond(StatusCode::FORBIDDEN, body))
    }
}

/// The value of one cookie in the request.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

impl FromRequestParts<std::sync::Arc<Console>> for Authed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, c: &std::sync::Arc<Console>) -> Result<Authed, Response> {
        let api = parts.uri.path().starts_with("/admin/ui/api/");
        if let Some(id) = cookie(&parts.headers, COOKIE) {
            match session(&c.app, id).await {
                Ok(Some(a)) => return Ok(a),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "console session lookup failed");
                    let message = "The control service's storage is unavailable; try again shortly.";
                    if api {
                        let body = serde_json::json!({"error": {"message": message, "code": "storage_unavailable"}});
                        return Err((StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response());
                    }
                    return Err(unavailable(message));
                }
            }
        }
        if api {
            let body = serde_json::json!({"error": {"message": "Not logged in to the console.", "code": "no_session"}});
            return Err((StatusCode::UNAUTHORIZED, axum::Json(body)).into_response());
        }
        if parts.method == Method::GET || parts.method == Method::HEAD {
            return Err((StatusCode::SEE_OTHER, [(header::LOCATION, "/admin/ui/login")]).into_response());
        }
        let body = html::page(
            "Log in",
            None,
            None,
            "<h1>Not logged in</h1><p class=\"error\">This console session has ended or never began.</p>\
             <p><a href=\"/admin/ui/login\">Log in</a></p>",
        );
        Err(html::respond(StatusCode::UNAUTHORIZED, body))
    }
}

/// The page for a store that cannot answer: 503, never a pass.
fn unavailable(message: &str) -> Response {
    let body =
        html::page("Unavailable", None, None, &format!("<h1>Unavailable</h1><p class=\"error\">{}</p>", esc(message)));
    html::respond(StatusCode::SERVICE_UNAVAILABLE, body)
}

/// Whether the browser reached us over https (as the proxy in front says).
fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value for a session id (or, with `None`, one that deletes it).
pub fn set_cookie(id: Option<&str>, https: bool) -> String {
    let secure = if https { "; Secure" } else { "" };
    match id {
        Some(id) => format!("{COOKIE}={id}; Path={BASE}; HttpOnly; SameSite=Strict; Max-Age={}{secure}", TTL.as_secs()),
        None => format!("{COOKIE}=; Path={BASE}; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

fn login_form(message: Option<&str>) -> String {
    let error = message.map(|m| format!("<p class=\"error\" id=\"login-error\">{}</p>", esc(m))).unwrap_or_default();
    let body = format!(
        "<section class=\"login\"><h1>Keybrake console</h1>{error}\
         <form method=\"post\" action=\"/admin/ui/login\">\
         <label for=\"admin_key\">Admin key</label>\
         <input type=\"password\" id=\"admin_key\" name=\"admin_key\" autocomplete=\"off\" required autofocus>\
         <button type=\"submit\">Log in</button></form>\
         <p class=\"hint\">The admin key is checked once; the browser then holds only a session cookie \
         (8 hours, this path only).</p></section>"
    );
    html::page("Log in", None, None, &body)
}

/// `GET /admin/ui/login`: the form, or straight to the keys when already logged in.
pub async fn login_page(State(c): Shared, headers: HeaderMap) -> Response {
    let live = match cookie(&headers, COOKIE) {
        Some(id) => matches!(session(&c.app, id).await, Ok(Some(_))),
        None => false,
    };
    if live {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "/admin/ui/keys")]).into_response();
    }
    html::respond(StatusCode::OK, login_form(None))
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    admin_key: String,
}

/// `POST /admin/ui/login`: checks the admin key like the API does, then starts a session.
pub async fn login(State(c): Shared, req: Request) -> Response {
    let from = super::super::source(&req);
    let now = Instant::now();
    if c.app.auth_failures.is_blocked(&from, now) {
        let body = login_form(Some("Too many failed attempts from this address; wait a minute and try again."));
        return html::respond(StatusCode::TOO_MANY_REQUESTS, body);
    }
    let https = is_https(req.headers());
    let Ok(Form(form)) = Form::<LoginForm>::from_request(req, &()).await else {
        return html::respond(StatusCode::BAD_REQUEST, login_form(Some("Send the admin key from the form.")));
    };
    if !c.app.vault.is_admin_key(&form.admin_key) {
        c.app.auth_failures.record_failure(&from, now);
        c.app.metrics.error("admin_auth_failed");
        tracing::warn!(source = %from, "console login refused: wrong admin key");
        return html::respond(StatusCode::UNAUTHORIZED, login_form(Some("That is not the admin key.")));
    }
    let Some(id) = create_session(&c.app).await else {
        return html::respond(StatusCode::SERVICE_UNAVAILABLE, login_form(Some("Could not start a session.")));
    };
    tracing::info!(source = %from, "console login");
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, "/admin/ui/keys".to_owned()), (header::SET_COOKIE, set_cookie(Some(&id), https))],
    )
        .into_response()
}

/// A form body, or the empty form when the body is not one (no content type,
/// not urlencoded): the CSRF check then refuses it with 403, like any form
/// without the token, instead of axum's 415/422.
pub struct AnyForm<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Default> FromRequest<S> for AnyForm<T> {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Ok(AnyForm(Form::<T>::from_request(req, state).await.map(|f| f.0).unwrap_or_default()))
    }
}

#[derive(Deserialize, Default)]
pub struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// `POST /admin/ui/logout`: ends the session here and in the browser.
pub async fn logout(
    State(c): Shared,
    auth: Authed,
    headers: HeaderMap,
    AnyForm(form): AnyForm<LogoutForm>,
) -> Response {
    if let Some(refused) = auth.csrf_refusal(&form.csrf) {
        return refused;
    }
    let key = auth.key;
    if let Err(e) = c.app.store.write(move |l| l.delete_session(&key)).await {
        tracing::error!(error = %e, "console logout not stored");
        return unavailable("The session could not be ended (storage unavailable); try again.");
    }
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, "/admin/ui/login".to_owned()), (header::SET_COOKIE, set_cookie(None, is_https(&headers)))],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_must_match_exactly() {
        let csrf = random_hex().unwrap();
        let a = Authed { csrf: csrf.clone(), key: digest("session") };
        assert!(a.csrf_refusal(&csrf).is_none());
        assert!(a.csrf_refusal("").is_some());
        assert!(a.csrf_refusal(&csrf[1..]).is_some());
    }

    #[test]
    fn cookies_are_scoped_and_secure_over_https() {
        let c = set_cookie(Some("abc"), false);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Path=/admin/ui"));
        assert!(!c.contains("Secure"));
        assert!(set_cookie(Some("abc"), true).ends_with("; Secure"));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; keybrake_console=xyz; b=2".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE), Some("xyz"));
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        assert!(is_https(&h));
    }
}
