//! The admin HTTP API (axum), reached through Envoy at `/admin/`. Every route
//! needs the admin key, except `GET /admin/audit`, which an audit-scoped vault
//! key (`vendor: "keybrake"`) may also call. Errors use Stripe's shape.

mod audit;
mod error;
mod fx;
mod openapi;
mod ui;
mod vault_keys;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::Method as HttpMethod;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keybrake_core::scope::{any_matches, Method};
use keybrake_core::vault_key::VaultKey;
use keybrake_core::vendor::Vendor;

pub use error::AdminError;
/// The store-side halves of two admin operations, for callers that drive the
/// control service without HTTP (the deterministic simulator, `sim/`).
pub use fx::set_rates;
pub use vault_keys::revoke_in_store;

use crate::app::App;
use crate::model::KeyState;

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    Admin,
    /// An audit-scoped vault key, allowed only the endpoints in its scope.
    AuditKey {
        key_id: String,
    },
}

impl Principal {
    /// Everything but reading the audit log is the admin's alone.
    pub fn require_admin(&self) -> Result<(), AdminError> {
        match self {
            Principal::Admin => Ok(()),
            Principal::AuditKey { .. } => Err(AdminError::Forbidden),
        }
    }
}

pub fn router(app: Arc<App>) -> Router {
    let admin = Router::new()
        .route("/admin/vault_keys", post(vault_keys::create).get(vault_keys::list))
        .route("/admin/vault_keys/revoke", post(vault_keys::revoke_prefix))
        .route("/admin/vault_keys/{id}", get(vault_keys::show).delete(vault_keys::revoke))
        .route("/admin/vault_keys/{id}/reinstate", post(vault_keys::reinstate))
        .route("/admin/usage", get(vault_keys::usage))
        .route("/admin/audit", get(audit::query))
        .route("/admin/audit/verify", get(audit::verify))
        .route("/admin/fx_rates", get(fx::list).put(fx::set))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), authenticate));
    Router::new()
        .route("/admin/openapi.json", get(openapi::document))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(admin)
        .merge(ui::router(app.clone()))
        .with_state(app)
}

async fn not_found() -> AdminError {
    AdminError::NotFound("Unrecognized request URL.".into())
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    ([("content-type", "text/plain; version=0.0.4")], app.metrics.render()).into_response()
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    match app.store.read(|l| l.ping()).await {
        Ok(()) => Json(serde_json::json!({"status": "ready", "storage": app.store.backend_name()})).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: storage unreachable");
            AdminError::Storage.into_response()
        }
    }
}

fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

/// Where a request came from, for the failure limiter and the logs: the
/// client address a trusted proxy reported, else the connection's peer
/// (`crate::peer::client_address`, the one place this is decided).
fn source(req: &Request) -> String {
    crate::peer::client_address(req.extensions(), req.headers())
}

/// A refusal of a request whose body was not read (see [`crate::drain`]).
async fn refuse(error: AdminError, body: axum::body::Body) -> Response {
    crate::drain::refuse_with(error.into_response(), body).await
}

async fn authenticate(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    let from = source(&req);
    let now = std::time::Instant::now();
    if app.auth_failures.is_blocked(&from, now) {
        return refuse(AdminError::TooManyAttempts, req.into_body()).await;
    }
    let (token, method, path) = (bearer(&req).map(str::to_owned), req.method().clone(), req.uri().path().to_owned());
    match principal(&app, token, &method, &path).await {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => {
            if matches!(e, AdminError::Unauthorized) {
                app.auth_failures.record_failure(&from, now);
                app.metrics.error("admin_auth_failed");
            }
            refuse(e, req.into_body()).await
        }
    }
}

/// Who presents the request's bearer token: the admin, or an audit-scoped
/// vault key allowed this method and path.
async fn principal(app: &App, token: Option<String>, method: &HttpMethod, path: &str) -> Result<Principal, AdminError> {
    let token = token.ok_or(AdminError::Unauthorized)?;
    if app.vault.is_admin_key(&token) {
        return Ok(Principal::Admin);
    }
    let vault_key = VaultKey::parse(&token).map_err(|_| AdminError::Unauthorized)?;
    let hash = vault_key.hash();
    let key = app.store.read(move |l| l.key_by_hash(&hash)).await?.ok_or(AdminError::Unauthorized)?;
    let now = app.clock.now_us() / 1_000_000;
    let method = match *method {
        HttpMethod::GET => Some(Method::Get),
        _ => None,
    };
    let allowed = key.vendor == Vendor::Keybrake
        && key.state(now) == KeyState::Active
        && method.is_some_and(|m| any_matches(&key.scopes, m, path));
    if !allowed {
        return Err(AdminError::Forbidden);
    }
    Ok(Principal::AuditKey { key_id: key.id })
}
