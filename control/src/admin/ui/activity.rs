//! `GET /admin/ui/api/activity?hours=N`: spend and decisions per minute over
//! the last N hours (1 to 24), aggregated here from the audit rows (the
//! store's `query_audit` with `since`), for the chart `console.js` draws.
//!
//! A call's decision is its first row (`intent` or `call`); its spend is the
//! `outcome` row whose verdict is `committed`, counted in the minute the
//! upstream answered. Money stays integer micro-dollars.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{Authed, Shared};
use crate::model::AuditRow;
use crate::store::AuditQuery;

const MINUTE_US: i64 = 60_000_000;
/// Rows read per store call, and at most in all (beyond, the answer says `truncated`).
const BATCH: usize = 5000;
const MAX_ROWS: usize = 200_000;

#[derive(Deserialize)]
pub struct Params {
    #[serde(default)]
    hours: Option<String>,
    #[serde(default)]
    key_id: Option<String>,
    #[serde(default)]
    label_prefix: Option<String>,
}

/// Per-minute series, oldest minute first; the last one is the current minute.
#[derive(Serialize, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// Start of the first minute, unix milliseconds.
    pub start_ms: i64,
    pub minutes: usize,
    pub spend_micros: Vec<i64>,
    pub allowed: Vec<u32>,
    pub denied: Vec<u32>,
    pub replayed: Vec<u32>,
    pub abandoned: Vec<u32>,
    /// Rows read.
    pub rows: usize,
    /// More rows than [`MAX_ROWS`] fell in the window; the newest are missing.
    pub truncated: bool,
}

impl Activity {
    pub fn new(start_us: i64, minutes: usize) -> Activity {
        Activity {
            start_ms: start_us / 1000,
            minutes,
            spend_micros: vec![0; minutes],
            allowed: vec![0; minutes],
            denied: vec![0; minutes],
            replayed: vec![0; minutes],
            abandoned: vec![0; minutes],
            ..Activity::default()
        }
    }

    /// Counts rows into their minutes (rows outside the window are ignored).
    pub fn add(&mut self, rows: &[AuditRow]) {
        let start_us = self.start_ms * 1000;
        for r in rows {
            self.rows += 1;
            let e = &r.entry;
            let Ok(i) = usize::try_from((e.at_us - start_us).div_euclid(MINUTE_US)) else { continue };
            if i >= self.minutes || e.at_us < start_us {
                continue;
            }
            if e.stage == "outcome" {
                if e.reason == "committed" {
                    self.spend_micros[i] = self.spend_micros[i].saturating_add(e.usd_micros.unwrap_or(0));
                }
                continue;
            }
            let series = match e.decision.as_str() {
                "allowed" => &mut self.allowed,
                "denied" => &mut self.denied,
                "replayed" => &mut self.replayed,
                "abandoned" => &mut self.abandoned,
                _ => continue,
            };
            series[i] = series[i].saturating_add(1);
        }
    }
}

/// The chart's data; JSON, behind the session like every console route.
pub async fn activity(State(c): Shared, _auth: Authed, Query(p): Query<Params>) -> Response {
    let hours: i64 = match p.hours.as_deref().map(str::parse) {
        None => 3,
        Some(Ok(h)) if (1..=24).contains(&h) => h,
        Some(_) => {
            let message = serde_json::json!({"error": {"message": "hours must be between 1 and 24", "param": "hours"}});
            return (StatusCode::BAD_REQUEST, Json(message)).into_response();
        }
    };
    let minutes = usize::try_from(hours * 60).unwrap_or(180);
    let now_us = c.app.clock.now_us();
    let start_us = (now_us.div_euclid(MINUTE_US) - (hours * 60 - 1)) * MINUTE_US;
    let mut out = Activity::new(start_us, minutes);
    let mut q = AuditQuery {
        key_id: p.key_id.filter(|k| !k.is_empty()),
        label_prefix: p.label_prefix.filter(|k| !k.is_empty()),
        since_us: Some(start_us),
        ascending: true,
        limit: BATCH,
        ..AuditQuery::default()
    };
    loop {
        let page = q.clone();
        let rows = match c.app.store.read(move |l| l.query_audit(&page)).await {
            Ok(rows) => rows,
            Err(e) => return crate::admin::AdminError::from(e).into_response(),
        };
        out.add(&rows);
        match rows.last() {
            Some(last) if rows.len() == BATCH && out.rows < MAX_ROWS => q.cursor = Some(last.seq),
            Some(_) if rows.len() == BATCH => {
                out.truncated = true;
                break;
            }
            _ => break,
        }
    }
    Json(out).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AuditEntry;

    fn row(at_us: i64, stage: &str, decision: &str, reason: &str, usd: Option<i64>) -> AuditRow {
        AuditRow {
            seq: 0,
            chain_seq: None,
            entry: AuditEntry {
                at_us,
                stage: stage.into(),
                decision: decision.into(),
                reason: reason.into(),
                usd_micros: usd,
                ..Default::default()
            },
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    #[test]
    fn counts_decisions_once_and_committed_spend_per_minute() {
        let start = 1_000 * MINUTE_US;
        let mut a = Activity::new(start, 3);
        a.add(&[
            row(start + 1, "intent", "allowed", "", Some(29_990_000)),
            row(start + 2_000_000, "outcome", "allowed", "committed", Some(29_990_000)),
            row(start + MINUTE_US, "call", "denied", "spend_cap_exceeded", Some(50_000_000)),
            row(start + MINUTE_US + 5, "call", "replayed", "", Some(29_990_000)),
            row(start + 2 * MINUTE_US, "intent", "allowed", "", Some(1_000_000)),
            row(start + 2 * MINUTE_US + 1, "outcome", "allowed", "refused_upstream", Some(1_000_000)),
            row(start - 1, "call", "denied", "", None),
            row(start + 3 * MINUTE_US, "call", "denied", "", None),
        ]);
        assert_eq!(a.spend_micros, vec![29_990_000, 0, 0]);
        assert_eq!(a.allowed, vec![1, 0, 1]);
        assert_eq!(a.denied, vec![0, 1, 0]);
        assert_eq!(a.replayed, vec![0, 1, 0]);
        assert_eq!(a.rows, 8);
    }
}
