//! `/admin/audit`: query (cursor-paged JSON or a JSON Lines export) and chain verification.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::error::{AdminErrors, AdminQuery};
use super::{AdminError, Principal};
use crate::app::App;
use crate::audit::{verify as verify_chain, AuditView};
use crate::clock::parse_rfc3339_us;
use crate::store::AuditQuery;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Params {
    key_id: Option<String>,
    label_prefix: Option<String>,
    idempotency_key: Option<String>,
    fingerprint: Option<String>,
    object_id: Option<String>,
    #[param(pattern = "^(allowed|denied|replayed|abandoned)$")]
    decision: Option<String>,
    call_id: Option<String>,
    /// RFC 3339 time or unix seconds; inclusive.
    since: Option<String>,
    /// RFC 3339 time or unix seconds; exclusive.
    until: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// Cursor from a previous page's `next_cursor`.
    starting_after: Option<String>,
    /// `desc` (newest first, default) or `asc`.
    #[param(pattern = "^(asc|desc)$")]
    order: Option<String>,
    /// `json` (default) or `jsonl` (every matching row, one per line).
    #[param(pattern = "^(json|jsonl)$")]
    format: Option<String>,
}

/// A page of audit records.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Page {
    object: &'static str,
    data: Vec<AuditView>,
    has_more: bool,
    next_cursor: Option<String>,
}

fn time(param: &str, text: &Option<String>) -> Result<Option<i64>, AdminError> {
    let Some(t) = text else { return Ok(None) };
    if let Ok(secs) = t.parse::<i64>() {
        return secs.checked_mul(1_000_000).map(Some).ok_or_else(|| AdminError::invalid(param, "time out of range"));
    }
    parse_rfc3339_us(t).map(Some).ok_or_else(|| {
        AdminError::invalid(param, format!("{param} must be RFC 3339 (2026-11-26T10:00:00Z) or unix seconds"))
    })
}

impl Params {
    fn to_query(&self) -> Result<AuditQuery, AdminError> {
        let limit = self.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(AdminError::invalid("limit", "limit must be between 1 and 1000"));
        }
        let ascending = match self.order.as_deref() {
            None | Some("desc") => false,
            Some("asc") => true,
            Some(_) => return Err(AdminError::invalid("order", "order must be \"asc\" or \"desc\"")),
        };
        if let Some(d) = &self.decision {
            if !crate::audit::DECISIONS.contains(&d.as_str()) {
                let known = crate::audit::DECISIONS.join(", ");
                return Err(AdminError::invalid("decision", format!("decision must be one of {known}")));
            }
        }
        let cursor = match &self.starting_after {
            None => None,
            Some(c) => Some(
                c.parse::<i64>().map_err(|_| AdminError::invalid("starting_after", "not a cursor from this API"))?,
            ),
        };
        Ok(AuditQuery {
            key_id: self.key_id.clone(),
            label_prefix: self.label_prefix.clone(),
            idempotency_key: self.idempotency_key.clone(),
            fingerprint: self.fingerprint.clone(),
            object_id: self.object_id.clone(),
            decision: self.decision.clone(),
            call_id: self.call_id.clone(),
            since_us: time("since", &self.since)?,
            until_us: time("until", &self.until)?,
            cursor,
            ascending,
            limit,
        })
    }
}

#[utoipa::path(get, path = "/admin/audit", tag = "audit", params(Params),
    responses((status = 200, description = "A page of records (JSON), or every matching record as JSON Lines with format=jsonl",
            content((Page = "application/json"), (String = "application/x-ndjson"))),
        AdminErrors))]
/// Query the audit log (admin key, or an audit-scoped vault key).
pub async fn query(
    State(app): State<Arc<App>>,
    Extension(_p): Extension<Principal>,
    AdminQuery(params): AdminQuery<Params>,
) -> Result<Response, AdminError> {
    let mut q = params.to_query()?;
    match params.format.as_deref() {
        None | Some("json") => {}
        Some("jsonl") => return Ok(export(app, q)),
        Some(_) => return Err(AdminError::invalid("format", "format must be \"json\" or \"jsonl\"")),
    }
    let limit = q.limit;
    q.limit = limit + 1;
    let mut rows = app.store.read(move |l| l.query_audit(&q)).await?;
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = if has_more { rows.last().map(|r| r.seq.to_string()) } else { None };
    Ok(Json(Page { object: "list", data: rows.iter().map(AuditView::from).collect(), has_more, next_cursor })
        .into_response())
}

/// Streams every matching row as JSON Lines, in chain order.
fn export(app: Arc<App>, mut q: AuditQuery) -> Response {
    const PAGE: usize = 1000;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    q.ascending = true;
    q.limit = PAGE;
    tokio::spawn(async move {
        loop {
            let page = q.clone();
            let rows = match app.store.read(move |l| l.query_audit(&page)).await {
                Ok(rows) => rows,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
            let mut chunk = String::new();
            for r in &rows {
                if let Ok(line) = serde_json::to_string(&AuditView::from(r)) {
                    chunk.push_str(&line);
                    chunk.push('\n');
                }
            }
            if !chunk.is_empty() && tx.send(Ok(chunk)).await.is_err() {
                return;
            }
            match rows.last() {
                Some(last) if rows.len() == PAGE => q.cursor = Some(last.seq),
                _ => return,
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(body)
        .unwrap_or_else(|_| AdminError::Storage.into_response())
}

#[utoipa::path(get, path = "/admin/audit/verify", tag = "audit",
    responses((status = 200, description = "The chain walked from the first row", body = crate::audit::ChainReport),
        AdminErrors))]
/// Walk the hash chain and report the first broken row.
pub async fn verify(State(app): State<Arc<App>>, Extension(p): Extension<Principal>) -> Result<Response, AdminError> {
    if !matches!(p, Principal::Admin) {
        return Err(AdminError::Forbidden);
    }
    Ok(Json(verify_chain(&app.store).await?).into_response())
}
