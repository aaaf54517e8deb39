//! The audit log: its hash chain, its verification, and how a row is shown.

pub mod chain;

use serde::Serialize;

use crate::clock::rfc3339_us;
use crate::model::AuditRow;
use crate::store::{Store, StoreResult};
use crate::usd::usd_number;
use keybrake_core::money::UsdMicros;

/// Every decision an audit row records: a call allowed, denied, replayed or
/// abandoned (the stream ended first), and a settled call whose answer moved
/// more than was priced (`price_mismatch`, with both readings in `detail`).
pub const DECISIONS: [&str; 5] = ["allowed", "denied", "replayed", "abandoned", "price_mismatch"];

/// One audit row as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditView {
    pub seq: i64,
    /// Place in the hash chain (absent until linked).
    pub chain_seq: Option<i64>,
    pub object: &'static str,
    pub at: String,
    pub call_id: String,
    pub stage: String,
    pub key_id: String,
    pub label: String,
    pub vendor: String,
    pub method: String,
    pub path: String,
    pub decision: String,
    pub reason: String,
    pub outcome: String,
    pub upstream_status: Option<u32>,
    pub amount: Option<i64>,
    pub currency: String,
    #[schema(value_type = Option<f64>)]
    pub usd: Option<serde_json::Number>,
    pub price_basis: String,
    pub idempotency_key: String,
    pub forwarded_idempotency_key: String,
    pub fingerprint: String,
    pub stripe_account: String,
    pub request_id: String,
    pub object_id: String,
    pub latency_us: Option<u64>,
    pub detail: String,
    /// The MCP tool that made the call through Keybrake's MCP endpoint (empty otherwise).
    pub mcp_tool: String,
    pub prev_hash: String,
    pub hash: String,
}

impl From<&AuditRow> for AuditView {
    fn from(r: &AuditRow) -> AuditView {
        let e = &r.entry;
        AuditView {
            seq: r.seq,
            chain_seq: r.chain_seq,
            object: "audit_record",
            at: rfc3339_us(e.at_us),
            call_id: e.call_id.clone(),
            stage: e.stage.clone(),
            key_id: e.key_id.clone(),
            label: e.label.clone(),
            vendor: e.vendor.clone(),
            method: e.method.clone(),
            path: e.path.clone(),
            decision: e.decision.clone(),
            reason: e.reason.clone(),
            outcome: e.outcome.clone(),
            upstream_status: e.upstream_status,
            amount: e.amount_minor,
            currency: e.currency.clone(),
            usd: e.usd_micros.map(|m| usd_number(UsdMicros(m))),
            price_basis: e.price_basis.clone(),
            idempotency_key: e.idempotency_key.clone(),
            forwarded_idempotency_key: e.forwarded_idempotency_key.clone(),
            fingerprint: e.fingerprint.clone(),
            stripe_account: e.stripe_account.clone(),
            mcp_tool: e.mcp_tool.clone(),
            request_id: e.request_id.clone(),
            object_id: e.object_id.clone(),
            latency_us: e.latency_us,
            detail: e.detail.clone(),
            prev_hash: r.prev_hash.clone(),
            hash: r.hash.clone(),
        }
    }
}

/// Result of walking the whole chain.
#[derive(Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ChainReport {
    pub ok: bool,
    /// Rows verified.
    pub rows: i64,
    /// Rows written but not linked into the chain yet (PostgreSQL links them within a second).
    pub pending: i64,
    pub head_hash: String,
    pub broken_at_seq: Option<i64>,
    pub reason: Option<String>,
}

/// Links every unchained row (PostgreSQL; nothing to do on SQLite).
pub async fn chain_pending(store: &Store) -> StoreResult<usize> {
    const BATCH: usize = 2000;
    let mut total = 0;
    loop {
        let n = store.write_applied(|l| l.chain_audit(BATCH)).await?;
        total += n;
        if n < BATCH {
            return Ok(total);
        }
    }
}

/// Links what is pending, then verifies the whole chain from the first row.
pub async fn verify(store: &Store) -> StoreResult<ChainReport> {
    chain_pending(store).await?;
    const PAGE: usize = 5000;
    let mut seq = 0;
    let mut hash = chain::GENESIS.to_owned();
    loop {
        let rows = store.read(move |l| l.audit_rows(seq, PAGE)).await?;
        if rows.is_empty() {
            let pending = store.read(|l| l.unchained_audit_rows()).await?;
            return Ok(ChainReport {
                ok: true,
                rows: seq,
                pending,
                head_hash: hash,
                broken_at_seq: None,
                reason: None,
            });
        }
        match chain::verify_rows(seq, &hash, &rows) {
            Ok((s, h)) => {
                seq = s;
                hash = h;
            }
            Err(b) => {
                return Ok(ChainReport {
                    ok: false,
                    rows: seq,
                    pending: 0,
                    head_hash: hash,
                    broken_at_seq: Some(b.seq),
                    reason: Some(b.reason.into()),
                })
            }
        }
    }
}
