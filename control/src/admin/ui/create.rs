//! Issuing a key from the console: the request goes through
//! `POST /admin/vault_keys`'s own handler, and the page that answers shows
//! the new vault key, the one time it is ever shown (or the form again, with
//! the API's message next to the field it names).

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::Value;

use super::html::{self, esc, query, Nav};
use super::key_form::CreateForm;
use super::keys::{render, KeysQuery};
use super::session::AnyForm;
use super::{json_body, Authed, Shared};
use crate::admin::vault_keys as api;
use crate::admin::{AdminError, Principal};

/// `POST /admin/ui/keys`: issues a key through the API's handler.
pub async fn create(
    State(c): Shared,
    auth: Authed,
    Query(q): Query<KeysQuery>,
    AnyForm(f): AnyForm<CreateForm>,
) -> Response {
    if let Some(refused) = auth.csrf_refusal(&f.csrf) {
        return refused;
    }
    let body = Bytes::from(f.to_json().to_string());
    let created = match api::create(State(c.app.clone()), Extension(Principal::Admin), body).await {
        Ok(r) => json_body::<Value>(r.into_response()).await,
        Err(AdminError::Invalid(invalid)) => {
            return render(&c.app, &auth, &q, &f, Some(&invalid), StatusCode::BAD_REQUEST).await;
        }
        Err(e) => return html::error_page(html::status_of(&e), &auth.csrf, Nav::Keys, &e.to_string()),
    };
    let Some(k) = created else {
        return html::error_page(StatusCode::INTERNAL_SERVER_ERROR, &auth.csrf, Nav::Keys, "unreadable answer");
    };
    let text = |name: &str| k[name].as_str().unwrap_or_default().to_owned();
    let endpoints: Vec<String> =
        k["allowed_endpoints"].as_array().into_iter().flatten().filter_map(|e| e.as_str()).map(esc).collect();
    let cap = match &k["daily_usd_cap"] {
        Value::Number(n) => html::usd(html::micros(Some(n))),
        _ => "none".to_owned(),
    };
    // The one page that carries a secret: the new vault key, shown once
    // (only its SHA-256 is stored) and, like every console page, `no-store`.
    let body = format!(
        "<h1>Key issued</h1><p class=\"warning\">Copy the vault key now: it is shown only this once, and Keybrake \
         stores only its hash.</p><div class=\"secret\"><code id=\"vault-key\">{vault_key}</code>\
         <button type=\"button\" class=\"small\" data-copy=\"vault-key\">Copy</button></div>\
         <dl class=\"record\"><dt>Id</dt><dd class=\"mono\" id=\"created-id\">{id}</dd><dt>Label</dt><dd>{label}</dd>\
         <dt>Vendor</dt><dd>{vendor}</dd><dt>Scope</dt><dd class=\"mono\">{endpoints}</dd><dt>Cap / day</dt>\
         <dd>{cap}</dd><dt>Expires</dt><dd>{expires}</dd></dl><p><a href=\"/admin/ui/keys{back}\" id=\"back-to-keys\">\
         Back to the keys</a></p>",
        vault_key = esc(&text("vault_key")),
        id = esc(&text("id")),
        label = esc(&text("label")),
        vendor = esc(&text("vendor")),
        endpoints = endpoints.join("<br>"),
        expires = esc(&text("expires_at")),
        back = esc(&query(&[("label_prefix", &text("label"))])),
    );
    html::respond(StatusCode::CREATED, html::page("Key issued", Some(Nav::Keys), Some(&auth.csrf), &body))
}
