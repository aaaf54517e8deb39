//! The keys page: every vault key with its scope, cap and spend today (a bar
//! against the cap), expiry countdown and state; a label-prefix filter; the
//! form that issues a key (in [`super::create`]); revoking one key, or every
//! key under a label prefix after a confirmation page that says how many keys
//! it will stop. Listing and revoking go through the admin API's handlers.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;

use super::html::{self, csrf_field, esc, micros, query, usd, Nav};
use super::key_form::{self, CreateForm};
use super::session::AnyForm;
use super::{Authed, Shared};
use crate::admin::error::AdminQuery;
use crate::admin::vault_keys::{self as api, KeyList};
use crate::admin::{AdminError, Principal};
use crate::app::App;
use crate::clock::parse_rfc3339_us;
use crate::issuing::KeyView;
use crate::model::KeyState;

/// Keys shown on one page (the API's cursor pages beyond).
const PAGE: usize = 500;

#[derive(Deserialize, Default)]
pub struct KeysQuery {
    #[serde(default)]
    pub label_prefix: String,
    #[serde(default)]
    starting_after: String,
    /// `active` hides expired, revoked and suspended keys.
    #[serde(default)]
    show: String,
    /// The id of a key just revoked, for the notice.
    #[serde(default)]
    revoked: String,
    /// The id of a key just reinstated, for the notice.
    #[serde(default)]
    reinstated: String,
}

/// One page of keys through `GET /admin/vault_keys`.
pub async fn fetch(app: &std::sync::Arc<App>, prefix: &str, after: &str, limit: usize) -> Result<KeyList, AdminError> {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let params = serde_json::json!({"label_prefix": some(prefix), "limit": limit, "starting_after": some(after)});
    let params = serde_json::from_value(params).map_err(|e| AdminError::invalid("query", e.to_string()))?;
    Ok(api::list(State(app.clone()), Extension(Principal::Admin), AdminQuery(params)).await?.0)
}

pub fn state_text(s: KeyState) -> &'static str {
    match s {
        KeyState::Active => "active",
        KeyState::Expired => "expired",
        KeyState::Revoked => "revoked",
        KeyState::Suspended => "suspended",
    }
}

fn is_key_id(id: &str) -> bool {
    id.starts_with("key_") && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `GET /admin/ui/keys`.
pub async fn list(State(c): Shared, auth: Authed, Query(q): Query<KeysQuery>) -> Response {
    render(&c.app, &auth, &q, &CreateForm::defaults(), None, StatusCode::OK).await
}

/// The keys page, with the create form holding `form` and, after a refused create, its error.
pub async fn render(
    app: &std::sync::Arc<App>,
    auth: &Authed,
    q: &KeysQuery,
    form: &CreateForm,
    error: Option<&crate::model::Invalid>,
    status: StatusCode,
) -> Response {
    let list = match fetch(app, &q.label_prefix, &q.starting_after, PAGE).await {
        Ok(list) => list,
        Err(e) => return html::error_page(html::status_of(&e), &auth.csrf, Nav::Keys, &e.to_string()),
    };
    let now = app.clock.now_us() / 1_000_000;
    let mut keys: Vec<&KeyView> =
        list.data.iter().filter(|k| q.show != "active" || k.state == KeyState::Active).collect();
    // The API pages in id order; within a page, newest first reads better.
    keys.sort_by(|a, b| b.created_at.cmp(&a.created_at));
    let rows: String = keys.iter().map(|k| row(k, now, &auth.csrf, &q.label_prefix)).collect();
    let table = if rows.is_empty() {
        let none = if q.label_prefix.is_empty() && q.show.is_empty() { "No keys yet." } else { "No keys match." };
        format!("<p class=\"muted\" id=\"no-keys\">{none}</p>")
    } else {
        format!(
            "<table class=\"keys\" id=\"keys\"><thead><tr><th>Label</th><th>Vendor</th><th>Scope</th><th>Cap / day</th>\
             <th>Spend today</th><th>Expires</th><th>State</th><th></th></tr></thead><tbody>{rows}</tbody></table>"
        )
    };
    let more = match (list.has_more, list.data.last()) {
        (true, Some(last)) => format!(
            "<p><a href=\"/admin/ui/keys{}\">Next page →</a></p>",
            esc(&query(&[("label_prefix", &q.label_prefix), ("show", &q.show), ("starting_after", &last.id)]))
        ),
        _ => String::new(),
    };
    let notice = if is_key_id(&q.revoked) {
        format!(
            "<p class=\"notice\" id=\"notice\">Revoked {}. Calls with it are refused from now on.</p>",
            esc(&q.revoked)
        )
    } else if is_key_id(&q.reinstated) {
        format!(
            "<p class=\"notice\" id=\"notice\">Reinstated {}. Calls with it are decided as before the suspension.</p>",
            esc(&q.reinstated)
        )
    } else {
        String::new()
    };
    let active = if q.show == "active" { " selected" } else { "" };
    let body = format!(
        "<div class=\"columns\"><section class=\"wide\"><h1>Vault keys</h1>{notice}\
         <form method=\"get\" action=\"/admin/ui/keys\" class=\"filters\" id=\"filter-form\">\
         <label>Label prefix <input name=\"label_prefix\" id=\"filter-prefix\" value=\"{prefix}\"></label>\
         <label>Show <select name=\"show\"><option value=\"\">all</option><option value=\"active\"{active}>active only\
         </option></select></label><button type=\"submit\">Filter</button></form>\
         <form method=\"get\" action=\"/admin/ui/keys/revoke\" class=\"filters danger-zone\" id=\"revoke-prefix-form\">\
         <label>Revoke every key whose label starts with <input name=\"label_prefix\" id=\"revoke-prefix\" \
         value=\"{prefix}\" required></label><button type=\"submit\" class=\"danger\">Revoke…</button></form>\
         {table}{more}</section><aside>{form}</aside></div>",
        prefix = esc(&q.label_prefix),
        form = key_form::form_html(form, error, &auth.csrf),
    );
    html::respond(status, html::page("Keys", Some(Nav::Keys), Some(&auth.csrf), &body))
}

fn row(k: &KeyView, now: i64, csrf: &str, prefix: &str) -> String {
    let state = state_text(k.state);
    let cap = k.daily_usd_cap.as_ref().map(|_| micros(k.daily_usd_cap.as_ref()));
    let (spent, reserved, uncertain) =
        (micros(Some(&k.spent_today_usd)), micros(Some(&k.reserved_usd)), micros(Some(&k.uncertain_usd)));
    let expires = parse_rfc3339_us(&k.expires_at).map(|us| us / 1_000_000).unwrap_or(now);
    let countdown = match k.state {
        KeyState::Revoked => "—".to_owned(),
        _ if expires <= now => "expired".to_owned(),
        _ => format!("in {}", html::duration(expires - now)),
    };
    let per_call = k
        .max_amount_per_call_usd
        .as_ref()
        .map(|m| format!("<div class=\"sub\">max {} per call</div>", usd(micros(Some(m)))))
        .unwrap_or_default();
    let reinstate = if k.state == KeyState::Suspended {
        format!(
            "<form method=\"post\" action=\"/admin/ui/keys/{id}/reinstate\" class=\"inline\" \
             data-confirm=\"Reinstate {label}? Read the audit row that suspended it first.\">{}\
             <input type=\"hidden\" name=\"label_prefix\" value=\"{}\">\
             <button type=\"submit\" class=\"small\">Reinstate</button></form>",
            csrf_field(csrf),
            esc(prefix),
            id = esc(&k.id),
            label = esc(&k.label),
        )
    } else {
        String::new()
    };
    let suspension = if k.state == KeyState::Suspended {
        format!("<div class=\"sub suspension\">{}</div>", esc(&k.suspended_reason))
    } else {
        String::new()
    };
    let revoke = if k.state == KeyState::Revoked {
        String::new()
    } else {
        format!(
            "<form method=\"post\" action=\"/admin/ui/keys/{id}/revoke\" class=\"inline\" \
             data-confirm=\"Revoke {label}? Calls with it are refused at once.\">{}\
             <input type=\"hidden\" name=\"label_prefix\" value=\"{}\">\
             <button type=\"submit\" class=\"danger small\">Revoke</button></form>",
            csrf_field(csrf),
            esc(prefix),
            id = esc(&k.id),
            label = esc(&k.label),
        )
    };
    format!(
        "<tr data-key-id=\"{id}\" data-label=\"{label}\" data-state=\"{state}\">\
         <td><a href=\"/admin/ui/audit{audit}\">{label}</a><div class=\"sub mono\">{id}</div></td>\
         <td>{vendor}</td><td class=\"mono\">{scope}</td><td>{cap}{per_call}</td>\
         <td>{bar}<div class=\"sub\">{spend}</div></td>\
         <td class=\"nowrap\"><span data-expires=\"{expires}\" title=\"{expires_at}\">{countdown}</span></td>\
         <td><span class=\"badge state-{state}\">{state}</span>{suspension}</td><td>{reinstate}{revoke}</td></tr>",
        id = esc(&k.id),
        label = esc(&k.label),
        audit = esc(&query(&[("key_id", &k.id)])),
        vendor = esc(k.vendor),
        scope =
            k.allowed_endpoints.iter().map(|e| format!("<div class=\"nowrap\">{}</div>", esc(e))).collect::<String>(),
        cap = cap.map(usd).unwrap_or_else(|| "none".to_owned()),
        bar = html::spend_bar(spent, reserved, uncertain, cap),
        spend = spend_text(spent, reserved, uncertain, cap),
        expires_at = esc(&k.expires_at),
    )
}

/// `$29.99 spent of $50.00 (59%)`, then what is reserved or uncertain, when anything is.
fn spend_text(spent: i64, reserved: i64, uncertain: i64, cap: Option<i64>) -> String {
    let mut text = format!("{} spent", usd(spent));
    if let Some(cap) = cap.filter(|c| *c > 0) {
        let used = i128::from(spent) + i128::from(reserved) + i128::from(uncertain);
        text.push_str(&format!(" of {} ({}%)", usd(cap), used * 100 / i128::from(cap)));
    }
    for (amount, what) in [(reserved, "reserved"), (uncertain, "uncertain")] {
        if amount != 0 {
            text.push_str(&format!(" · {} {what}", usd(amount)));
        }
    }
    text
}

#[derive(Deserialize, Default)]
pub struct RevokeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    label_prefix: String,
}

/// `POST /admin/ui/keys/{id}/reinstate`: `POST /admin/vault_keys/{id}/reinstate`, then back to the list.
pub async fn reinstate_one(
    State(c): Shared,
    auth: Authed,
    Path(id): Path<String>,
    AnyForm(f): AnyForm<RevokeForm>,
) -> Response {
    if let Some(refused) = auth.csrf_refusal(&f.csrf) {
        return refused;
    }
    let done = api::reinstate(State(c.app.clone()), Extension(Principal::Admin), Path(id.clone())).await;
    back_to_list(done.map(|_| ()), &auth, &f, ("reinstated", &id))
}

/// `POST /admin/ui/keys/{id}/revoke`: `DELETE /admin/vault_keys/{id}`, then back to the list.
pub async fn revoke_one(
    State(c): Shared,
    auth: Authed,
    Path(id): Path<String>,
    AnyForm(f): AnyForm<RevokeForm>,
) -> Response {
    if let Some(refused) = auth.csrf_refusal(&f.csrf) {
        return refused;
    }
    let done = api::revoke(State(c.app.clone()), Extension(Principal::Admin), Path(id.clone())).await;
    back_to_list(done.map(|_| ()), &auth, &f, ("revoked", &id))
}

/// After acting on one key: back to the list (filtered as it was, saying what
/// was done), or the API's error as a page.
fn back_to_list(done: Result<(), AdminError>, auth: &Authed, f: &RevokeForm, what: (&str, &str)) -> Response {
    match done {
        Ok(()) => {
            let to = format!("/admin/ui/keys{}", query(&[("label_prefix", &f.label_prefix), what]));
            (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
        }
        Err(e) => html::error_page(html::status_of(&e), &auth.csrf, Nav::Keys, &e.to_string()),
    }
}

/// `GET /admin/ui/keys/revoke?label_prefix=`: says how many keys a revoke by
/// prefix would stop (every key under it not revoked yet, as the API counts)
/// and asks to confirm.
pub async fn confirm_revoke_prefix(State(c): Shared, auth: Authed, Query(q): Query<KeysQuery>) -> Response {
    let prefix = q.label_prefix;
    if prefix.is_empty() {
        return html::error_page(StatusCode::BAD_REQUEST, &auth.csrf, Nav::Keys, "label_prefix must not be empty");
    }
    let mut live: Vec<KeyView> = Vec::new();
    let mut after = String::new();
    loop {
        let page = match fetch(&c.app, &prefix, &after, 1000).await {
            Ok(p) => p,
            Err(e) => return html::error_page(html::status_of(&e), &auth.csrf, Nav::Keys, &e.to_string()),
        };
        after = page.data.last().map(|k| k.id.clone()).unwrap_or_default();
        live.extend(page.data.into_iter().filter(|k| k.state != KeyState::Revoked));
        if !page.has_more || after.is_empty() {
            break;
        }
    }
    let back = format!("/admin/ui/keys{}", esc(&query(&[("label_prefix", &prefix)])));
    let n = live.len();
    let body = if n == 0 {
        format!(
            "<h1>Revoke by label prefix</h1><p class=\"notice\" id=\"revoke-count\" data-count=\"0\">No key under \
             “{}” is left to revoke.</p><p><a href=\"{back}\">Back to the keys</a></p>",
            esc(&prefix)
        )
    } else {
        let active = live.iter().filter(|k| k.state == KeyState::Active).count();
        let plural = if n == 1 { "key" } else { "keys" };
        let labels: String = live
            .iter()
            .take(20)
            .map(|k| format!("<li>{} <span class=\"sub mono\">{}</span></li>", esc(&k.label), esc(&k.id)))
            .collect();
        let more = if n > 20 { format!("<li class=\"muted\">and {} more</li>", n - 20) } else { String::new() };
        format!(
            "<h1>Revoke by label prefix</h1><p class=\"warning\" id=\"revoke-count\" data-count=\"{n}\">This will stop \
             <strong>{n} {plural}</strong> whose label starts with “{p}” ({active} active, {expired} expired). Calls \
             with them are refused at once; this cannot be undone.</p><ul class=\"labels\">{labels}{more}</ul>\
             <form method=\"post\" action=\"/admin/ui/keys/revoke\">{csrf}\
             <input type=\"hidden\" name=\"label_prefix\" value=\"{p}\">\
             <button type=\"submit\" class=\"danger\" id=\"confirm-revoke\">Revoke {n} {plural}</button> \
             <a href=\"{back}\">Cancel</a></form>",
            p = esc(&prefix),
            expired = n - active,
            csrf = csrf_field(&auth.csrf),
        )
    };
    html::respond(StatusCode::OK, html::page("Revoke by prefix", Some(Nav::Keys), Some(&auth.csrf), &body))
}

/// `POST /admin/ui/keys/revoke`: `POST /admin/vault_keys/revoke`, then what it stopped.
pub async fn revoke_prefix(State(c): Shared, auth: Authed, AnyForm(f): AnyForm<RevokeForm>) -> Response {
    if let Some(refused) = auth.csrf_refusal(&f.csrf) {
        return refused;
    }
    let body = serde_json::json!({"label_prefix": f.label_prefix}).to_string();
    let revoked = match api::revoke_prefix(State(c.app.clone()), Extension(Principal::Admin), Bytes::from(body)).await {
        Ok(r) => serde_json::to_value(&r.0).unwrap_or_default(),
        Err(e) => return html::error_page(html::status_of(&e), &auth.csrf, Nav::Keys, &e.to_string()),
    };
    let n = revoked["revoked"].as_u64().unwrap_or(0);
    let propagated = if revoked["propagated"].as_bool() == Some(true) {
        "Every gateway worker has dropped them from its cache."
    } else {
        "Not every gateway worker acknowledged in time; a worker's cache drops them when it reconnects."
    };
    let ids: String = revoked["ids"]
        .as_array()
        .map(|ids| {
            ids.iter().filter_map(|i| i.as_str()).map(|i| format!("<li class=\"mono\">{}</li>", esc(i))).collect()
        })
        .unwrap_or_default();
    let body = format!(
        "<h1>Keys revoked</h1><p class=\"notice\" id=\"revoked-count\" data-count=\"{n}\">Revoked {n} {} under “{}”. \
         {propagated}</p><ul>{ids}</ul><p><a href=\"/admin/ui/keys{}\">Back to the keys</a></p>",
        if n == 1 { "key" } else { "keys" },
        esc(&f.label_prefix),
        esc(&query(&[("label_prefix", &f.label_prefix)])),
    );
    html::respond(StatusCode::OK, html::page("Keys revoked", Some(Nav::Keys), Some(&auth.csrf), &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_reads_against_the_cap() {
        assert_eq!(spend_text(29_990_000, 0, 0, Some(50_000_000)), "$29.99 spent of $50.00 (59%)");
        assert_eq!(spend_text(0, 1_000_000, 0, None), "$0.00 spent · $1.00 reserved");
        assert!(!is_key_id("key_<script>") && is_key_id("key_aabbc33dbe7ff86866ea0ef2"));
    }
}
