//! The audit page: the log as a table, newest first, paged with the API's
//! cursor and filtered by key, label prefix, decision, idempotency key and
//! time range (everything through `GET /admin/audit`'s handler, so the
//! filters mean and refuse exactly what they do in the API); denials and
//! replays stand out; each row links to the record in full ([`super::record`]).
//! Above the table, the activity chart (drawn by `console.js` from
//! [`super::activity`]).
//! Audit records never hold a secret: vault keys are stored only as hashes
//! and never written to the log.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::html::{self, esc, query, Nav};
use super::{json_body, Authed, Shared};
use crate::admin::error::AdminQuery;
use crate::admin::{AdminError, Principal};
use crate::app::App;

/// Rows per page.
const PAGE: usize = 50;

#[derive(Deserialize, Default, Clone)]
pub struct Filter {
    #[serde(default)]
    key_id: String,
    #[serde(default)]
    label_prefix: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    idempotency_key: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    starting_after: String,
    /// The chart's window, in hours.
    #[serde(default)]
    hours: String,
}

/// A page of audit records as the API answers it.
#[derive(Deserialize)]
pub struct Page {
    pub data: Vec<Map<String, Value>>,
    has_more: bool,
    next_cursor: Option<String>,
}

/// A time as typed: a browser's `2026-11-26T10:00` (no zone) is taken as UTC;
/// anything else goes to the API as it is (RFC 3339 or unix seconds).
fn time(text: &str) -> String {
    let t = text.trim();
    let b = t.as_bytes();
    let local = (b.len() == 16 || b.len() == 19) && b.get(10) == Some(&b'T') && !t.contains(['Z', 'z', '+']);
    match (local, b.len()) {
        (true, 16) => format!("{t}:00Z"),
        (true, _) => format!("{t}Z"),
        _ => t.to_owned(),
    }
}

/// Rows through `GET /admin/audit` with the given parameters (API names).
pub async fn fetch(app: &std::sync::Arc<App>, params: Value) -> Result<Page, AdminError> {
    let params = serde_json::from_value(params).map_err(|e| AdminError::invalid("query", e.to_string()))?;
    let response =
        crate::admin::audit::query(State(app.clone()), Extension(Principal::Admin), AdminQuery(params)).await?;
    json_body(response).await.ok_or(AdminError::Storage)
}

fn some(s: &str) -> Option<String> {
    (!s.trim().is_empty()).then(|| s.trim().to_owned())
}

pub fn s<'a>(row: &'a Map<String, Value>, name: &str) -> &'a str {
    row.get(name).and_then(Value::as_str).unwrap_or_default()
}

/// A field as text, whatever its JSON type (`""` for null).
pub fn text(row: &Map<String, Value>, name: &str) -> String {
    match row.get(name) {
        Some(Value::String(v)) => v.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

/// `2026-11-26 10:00:00.123` of an RFC 3339 time with microseconds.
fn short_time(at: &str) -> String {
    at.replacen('T', " ", 1).chars().take(23).collect()
}

/// An amount in a currency's minor units as Stripe counts them: `2999 usd` is `29.99 USD`, `500 jpy` is `500 JPY`.
fn amount_text(minor: i64, currency: &str) -> String {
    let Ok(c) = keybrake_core::currency::Currency::parse(currency) else {
        return format!("{minor} {currency} (minor units)");
    };
    let exp = c.api_exponent(false);
    let code = currency.to_ascii_uppercase();
    if exp == 0 {
        return format!("{minor} {code}");
    }
    let unit = 10_i64.pow(exp);
    let sign = if minor < 0 { "-" } else { "" };
    let (major, frac) = (minor.unsigned_abs() / unit.unsigned_abs(), minor.unsigned_abs() % unit.unsigned_abs());
    format!("{sign}{major}.{frac:0width$} {code}", width = usize::try_from(exp).unwrap_or(2))
}

pub fn row_html(r: &Map<String, Value>) -> String {
    let decision = s(r, "decision");
    let known = crate::audit::DECISIONS.contains(&decision);
    let class = if known { format!("decision-{decision}") } else { "decision-other".to_owned() };
    let usd = match r.get("usd") {
        Some(Value::Number(n)) => html::usd(html::micros(Some(n))),
        _ => String::new(),
    };
    let amount = match (r.get("amount").and_then(Value::as_i64), s(r, "currency")) {
        (Some(minor), c) if !c.is_empty() => amount_text(minor, c),
        _ => String::new(),
    };
    let idem = s(r, "idempotency_key");
    let idem_short = if idem.chars().count() > 36 {
        format!("{}…", idem.chars().take(35).collect::<String>())
    } else {
        idem.to_owned()
    };
    format!(
        "<tr class=\"{class}\" data-seq=\"{seq}\" data-stage=\"{stage}\" data-decision=\"{decision}\" \
         data-reason=\"{reason}\"><td><a href=\"/admin/ui/audit/{seq}\">{seq}</a></td>\
         <td class=\"mono\" title=\"{at}\">{at_short}</td>\
         <td>{label}<div class=\"sub mono\">{key_id}</div></td><td class=\"mono\">{method} {path}</td>\
         <td>{stage}</td><td><span class=\"badge\">{decision}</span><div class=\"sub\">{reason}</div></td>\
         <td>{outcome}<div class=\"sub\">{status}</div></td><td class=\"num\">{usd}<div class=\"sub\">{amount}</div></td>\
         <td class=\"mono\" title=\"{idem}\">{idem_short}</td></tr>",
        seq = esc(&text(r, "seq")),
        stage = esc(s(r, "stage")),
        decision = esc(decision),
        reason = esc(s(r, "reason")),
        at = esc(s(r, "at")),
        at_short = esc(&short_time(s(r, "at"))),
        label = esc(s(r, "label")),
        key_id = esc(s(r, "key_id")),
        method = esc(s(r, "method")),
        path = esc(s(r, "path")),
        outcome = esc(s(r, "outcome")),
        status = esc(&text(r, "upstream_status")),
        amount = esc(&amount),
        idem = esc(idem),
        idem_short = esc(&idem_short),
    )
}

/// `GET /admin/ui/audit`.
pub async fn table(State(c): Shared, auth: Authed, Query(f): Query<Filter>) -> Response {
    let params = serde_json::json!({
        "key_id": some(&f.key_id), "label_prefix": some(&f.label_prefix), "decision": some(&f.decision),
        "idempotency_key": some(&f.idempotency_key), "since": some(&time(&f.since)), "until": some(&time(&f.until)),
        "starting_after": some(&f.starting_after), "limit": PAGE, "order": "desc",
    });
    let (rows, paging, error) = match fetch(&c.app, params).await {
        Ok(page) => {
            let rows: String = page.data.iter().map(row_html).collect();
            let filters = |cursor: &str| {
                esc(&query(&[
                    ("key_id", &f.key_id),
                    ("label_prefix", &f.label_prefix),
                    ("decision", &f.decision),
                    ("idempotency_key", &f.idempotency_key),
                    ("since", &f.since),
                    ("until", &f.until),
                    ("hours", &f.hours),
                    ("starting_after", cursor),
                ]))
            };
            let mut paging = String::new();
            if !f.starting_after.is_empty() {
                paging.push_str(&format!("<a href=\"/admin/ui/audit{}\">← Newest</a> ", filters("")));
            }
            if let (true, Some(cursor)) = (page.has_more, page.next_cursor.as_deref()) {
                paging.push_str(&format!("<a href=\"/admin/ui/audit{}\" id=\"older\">Older →</a>", filters(cursor)));
            }
            (rows, paging, String::new())
        }
        Err(e) => {
            (String::new(), String::new(), format!("<p class=\"error\" id=\"audit-error\">{}</p>", esc(&e.to_string())))
        }
    };
    let table = if rows.is_empty() && error.is_empty() {
        "<p class=\"muted\" id=\"no-rows\">No records match.</p>".to_owned()
    } else if rows.is_empty() {
        String::new()
    } else {
        format!(
            "<table class=\"audit\" id=\"audit\"><thead><tr><th>Seq</th><th>Time (UTC)</th><th>Key</th><th>Call</th>\
             <th>Stage</th><th>Decision</th><th>Outcome</th><th class=\"num\">USD</th><th>Idempotency key</th></tr>\
             </thead><tbody>{rows}</tbody></table>"
        )
    };
    let option = |v: &str| {
        let sel = if f.decision == v { " selected" } else { "" };
        format!("<option value=\"{v}\"{sel}>{}</option>", if v.is_empty() { "any" } else { v })
    };
    let decisions: String = [""].iter().chain(crate::audit::DECISIONS.iter()).map(|v| option(v)).collect();
    let now = c.app.clock.now_us() / 1_000_000;
    let recent = |secs: i64, text: &str| {
        let q =
            query(&[("key_id", &f.key_id), ("label_prefix", &f.label_prefix), ("since", &(now - secs).to_string())]);
        format!("<a href=\"/admin/ui/audit{}\">{text}</a>", esc(&q))
    };
    let hours = match f.hours.parse::<u32>() {
        Ok(h) if (1..=24).contains(&h) => h,
        _ => 3,
    };
    let window = |h: u32| {
        let q = query(&[("key_id", &f.key_id), ("label_prefix", &f.label_prefix), ("hours", &h.to_string())]);
        let class = if h == hours { " class=\"current\"" } else { "" };
        format!("<a href=\"/admin/ui/audit{}\"{class}>{h} h</a>", esc(&q))
    };
    let body = format!(
        "<h1>Audit log</h1>\
         <section id=\"activity\" data-hours=\"{hours}\" data-key-id=\"{key_id}\" data-label-prefix=\"{prefix}\">\
         <div class=\"section-head\"><h2>Activity per minute, last {hours} h <span class=\"hint\">(UTC{scope})</span></h2>\
         <span class=\"windows\">{w1} {w3} {w6} {w24}</span></div>\
         <div class=\"chart\" id=\"chart-spend\"></div><div class=\"chart\" id=\"chart-decisions\"></div>\
         <p class=\"hint\" id=\"chart-summary\">Loading…</p></section>\
         <form method=\"get\" action=\"/admin/ui/audit\" class=\"filters\" id=\"audit-filters\">\
         <label>Key id<input name=\"key_id\" value=\"{key_id}\" size=\"18\"></label>\
         <label>Label prefix<input name=\"label_prefix\" value=\"{prefix}\" id=\"audit-prefix\" size=\"14\"></label>\
         <label>Decision<select name=\"decision\" id=\"audit-decision\">{decisions}</select></label>\
         <label>Idempotency key<input name=\"idempotency_key\" value=\"{idem}\" size=\"14\"></label>\
         <label>Since<input name=\"since\" value=\"{since}\" placeholder=\"YYYY-MM-DDTHH:MM\" size=\"16\"></label>\
         <label>Until<input name=\"until\" value=\"{until}\" placeholder=\"YYYY-MM-DDTHH:MM\" size=\"16\"></label>\
         <button type=\"submit\">Filter</button> <a href=\"/admin/ui/audit\">Clear</a></form>\
         <p class=\"hint\">Recent: {r15} · {r60} · {r1440}. Times are UTC; a time without a zone is taken as UTC.</p>\
         {error}{table}<p class=\"paging\">{paging}</p>",
        key_id = esc(&f.key_id),
        prefix = esc(&f.label_prefix),
        scope = if f.key_id.is_empty() && f.label_prefix.is_empty() { "" } else { "; the filtered keys only" },
        w1 = window(1),
        w3 = window(3),
        w6 = window(6),
        w24 = window(24),
        idem = esc(&f.idempotency_key),
        since = esc(&f.since),
        until = esc(&f.until),
        r15 = recent(900, "15 min"),
        r60 = recent(3600, "1 hour"),
        r1440 = recent(86_400, "24 hours"),
    );
    let status = if error.is_empty() { StatusCode::OK } else { StatusCode::BAD_REQUEST };
    html::respond(status, html::page("Audit", Some(Nav::Audit), Some(&auth.csrf), &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_times_are_utc_and_others_pass_through() {
        assert_eq!(time("2026-11-26T10:00"), "2026-11-26T10:00:00Z");
        assert_eq!(time("2026-11-26T10:00:05"), "2026-11-26T10:00:05Z");
        assert_eq!(time("2026-11-26T10:00:00+01:00"), "2026-11-26T10:00:00+01:00");
        assert_eq!(time("1764150000"), "1764150000");
        assert_eq!(short_time("2026-11-26T10:00:00.123456Z"), "2026-11-26 10:00:00.123");
        assert_eq!(amount_text(2999, "usd"), "29.99 USD");
        assert_eq!(amount_text(500, "jpy"), "500 JPY");
        assert_eq!(amount_text(1005, "kwd"), "1.005 KWD");
        assert_eq!(amount_text(5, "eur"), "0.05 EUR");
    }
}
