//! One audit record in full, `GET /admin/ui/audit/{seq}`, with the other rows
//! of its call. Every field of the API's view is shown: audit records hold no
//! secret (vault keys are stored only as hashes and never logged).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::audit::{fetch, row_html, s, text};
use super::html::{self, esc, Nav};
use super::{Authed, Shared};

/// The order fields are shown in on a record's page (any other field follows).
const FIELDS: [&str; 28] = [
    "seq",
    "chain_seq",
    "at",
    "call_id",
    "stage",
    "decision",
    "reason",
    "outcome",
    "upstream_status",
    "key_id",
    "label",
    "vendor",
    "method",
    "path",
    "amount",
    "currency",
    "usd",
    "price_basis",
    "idempotency_key",
    "forwarded_idempotency_key",
    "fingerprint",
    "stripe_account",
    "request_id",
    "object_id",
    "latency_us",
    "detail",
    "prev_hash",
    "hash",
];

/// `GET /admin/ui/audit/{seq}`: one record in full, and the other rows of its call.
pub async fn record(State(c): Shared, auth: Authed, Path(seq): Path<String>) -> Response {
    let not_found = || html::error_page(StatusCode::NOT_FOUND, &auth.csrf, Nav::Audit, "No such audit record.");
    let Some(next) = seq.parse::<i64>().ok().and_then(|s| s.checked_add(1)) else { return not_found() };
    // The API has no lookup by sequence number; its cursor gives the row just before `seq + 1`.
    let params = serde_json::json!({"starting_after": next.to_string(), "limit": 1, "order": "desc"});
    let row = match fetch(&c.app, params).await {
        Ok(page) => page.data.into_iter().next().filter(|r| text(r, "seq") == seq),
        Err(e) => return html::error_page(html::status_of(&e), &auth.csrf, Nav::Audit, &e.to_string()),
    };
    let Some(row) = row else { return not_found() };
    let mut fields: Vec<&str> = FIELDS.to_vec();
    fields.extend(row.keys().map(String::as_str).filter(|k| !FIELDS.contains(k) && *k != "object"));
    let dl: String =
        fields.iter().map(|k| format!("<dt>{}</dt><dd class=\"mono\">{}</dd>", esc(k), esc(&text(&row, k)))).collect();
    let call = s(&row, "call_id");
    let related = match fetch(&c.app, serde_json::json!({"call_id": call, "order": "asc", "limit": 100})).await {
        // The record itself is marked among its call's rows.
        Ok(page) if !call.is_empty() => page
            .data
            .iter()
            .map(|r| {
                row_html(r).replacen(
                    "<tr class=\"",
                    if text(r, "seq") == seq { "<tr class=\"current " } else { "<tr class=\"" },
                    1,
                )
            })
            .collect::<String>(),
        _ => String::new(),
    };
    let class = format!("decision-{}", s(&row, "decision"));
    let body = format!(
        "<h1>Audit record {seq}</h1><p><a href=\"/admin/ui/audit\">← Audit log</a></p>\
         <dl class=\"record {class}\" id=\"record\">{dl}</dl><h2>Rows of this call</h2>\
         <table class=\"audit\"><thead><tr><th>Seq</th><th>Time (UTC)</th><th>Key</th><th>Call</th><th>Stage</th>\
         <th>Decision</th><th>Outcome</th><th class=\"num\">USD</th><th>Idempotency key</th></tr></thead><tbody>{related}</tbody>\
         </table>",
        seq = esc(&seq),
        class = esc(&class),
    );
    html::respond(StatusCode::OK, html::page("Audit record", Some(Nav::Audit), Some(&auth.csrf), &body))
}
