//! Beginning and settling calls that hold durable state: the atomic
//! check-and-reserve of spend, the idempotency records that make retries
//! safe, and the audit rows of both. Each function runs inside one store
//! transaction (`Store::write`), so what it decides is what is stored.

use keybrake_core::fingerprint::derived_idempotency_key;
use keybrake_core::money::UsdMicros;

use crate::denial::Denial;
use crate::model::{
    AuditEntry, Bucket, CallRow, CallState, IdemRecord, IdemState, KeyRecord, ObjectAmount, StoredResponse,
};
use crate::reconcile::{self, at_highest_known_rate, Mismatch};
use crate::store::{Ledger, StoreError, StoreResult};
use crate::usd::{resolve, to_usd, FxTable, Quote, QuoteCurrency, Resolved};
use crate::wire::Outcome;

/// Everything `begin_call` needs, gathered before the transaction.
#[derive(Debug, Clone)]
pub struct CallPlan {
    pub key: KeyRecord,
    pub call_id: String,
    pub now: i64,
    pub day: i64,
    pub price: Quote,
    pub fx: std::sync::Arc<FxTable>,
    /// Hash of the upstream credential and `Stripe-Account`: idempotency is per upstream account.
    pub account: String,
    /// "POST /v1/charges".
    pub endpoint: String,
    pub fingerprint: String,
    pub caller_key: String,
    /// Whether money-moving calls of this key deduplicate by content.
    pub record_ttl_secs: i64,
    pub lease_secs: i64,
    /// The decision's audit entry, without decision and amounts.
    pub context: AuditEntry,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begun {
    /// `reserved` is the new reservation in micro-dollars (0 for a retry that took over one).
    Allowed {
        call_id: String,
        forwarded_key: String,
        reserved: i64,
    },
    Replayed(StoredResponse),
    Denied(Denial),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Caller,
    Content,
}

/// What the existing idempotency records say about this call (its precedent), worst first.
enum Precedent {
    Mismatch,
    InFlight,
    Replay(StoredResponse),
    Unreplayable,
    Retry(IdemRecord),
}

/// Begins a call: prices it, applies idempotency, reserves its spend and
/// writes its intent, all or nothing.
pub fn begin_call(ledger: &mut dyn Ledger, plan: &CallPlan) -> StoreResult<Begun> {
    // Another currency is priced at the rates in the store as this transaction
    // reads them, not at this replica's copy: a rate set through another
    // replica is in force for every reservation made after it.
    let in_usd = match &plan.price {
        Quote::Free => true,
        Quote::Amount { currency: QuoteCurrency::Given(c), .. } => c.eq_ignore_ascii_case("usd"),
        _ => false,
    };
    let fx = if in_usd {
        plan.fx.clone()
    } else {
        std::sync::Arc::new(ledger.fx_rates()?.into_iter().map(|r| (r.currency.clone(), r)).collect())
    };
    let resolved = match resolve(ledger, &plan.price, &fx)? {
        Ok(r) => r,
        Err(denial) => return deny(ledger, plan, None, denial),
    };
    let usd = resolved.usd();
    if let Resolved::Unpriced { reason } = &resolved {
        if plan.key.daily_cap.is_some() && !plan.key.allow_unpriced {
            return deny(ledger, plan, Some(&resolved), Denial::UnpricedNotAllowed { reason: reason.clone() });
        }
    }
    if let Some(limit) = plan.key.max_per_call {
        if usd > limit {
            return deny(ledger, plan, Some(&resolved), Denial::PerCallLimit { limit, amount: usd });
        }
    }

    let moves_money = !matches!(&resolved, Resolved::Free);
    let ops = op_keys(plan, moves_money);
    let mut existing: Vec<(OpKind, String, Option<IdemRecord>)> = Vec::new();
    let mut precedent: Option<Precedent> = None;
    for (kind, op_key) in ops {
        let record = ledger.idempotency(&plan.account, &op_key)?.filter(|r| still_binding(r, kind, plan));
        if let Some(r) = &record {
            let verdict = judge(r, kind, plan);
            if precedent.as_ref().is_none_or(|s| rank(&verdict) < rank(s)) {
                precedent = Some(verdict);
            }
        }
        existing.push((kind, op_key, record));
    }

    let mut retry: Option<IdemRecord> = None;
    match precedent {
        Some(Precedent::Mismatch) => return deny(ledger, plan, Some(&resolved), Denial::IdempotencyMismatch),
        Some(Precedent::InFlight) => return deny(ledger, plan, Some(&resolved), Denial::IdempotencyInUse),
        Some(Precedent::Unreplayable) => return deny(ledger, plan, Some(&resolved), Denial::ReplayUnavailable),
        Some(Precedent::Replay(response)) => {
            // The caller's key now names this completed operation too, as it would at Stripe.
            for (kind, op_key, record) in &existing {
                if *kind == OpKind::Caller && record.is_none() {
                    let bound = IdemRecord {
                        account: plan.account.clone(),
                        op_key: op_key.clone(),
                        fingerprint: plan.fingerprint.clone(),
                        endpoint: plan.endpoint.clone(),
                        state: IdemState::Done,
                        call_id: plan.call_id.clone(),
                        forwarded_key: String::new(),
                        created_at: plan.now,
                        expires_at: plan.now + plan.record_ttl_secs,
                        lease_expires_at: 0,
                        response: Some(response.clone()),
                    };
                    match ledger.idempotency(&plan.account, op_key)? {
                        Some(_) => ledger.update_idempotency(&bound)?,
                        None => ledger.insert_idempotency(&bound)?,
                    }
                }
            }
            let mut entry = entry_for(plan, Some(&resolved), "replayed", "");
            entry.stage = "call".into();
            entry.upstream_status = Some(response.status);
            ledger.append_audit(&entry)?;
            return Ok(Begun::Replayed(response));
        }
        Some(Precedent::Retry(record)) => retry = Some(record),
        None => {}
    }

    // A retry of an operation whose outcome is uncertain goes out with the same
    // upstream idempotency key and takes over the amount already counted for it.
    let earlier = match &retry {
        Some(record) => ledger.call(&record.call_id)?,
        None => None,
    };
    let (key_id, day, amount, bucket) = match &earlier {
        Some(old) => {
            ledger.set_call_state(&old.call_id, CallState::Superseded, old.bucket, plan.now)?;
            (old.key_id.clone(), old.day, old.amount_micros, old.bucket)
        }
        None => {
            if usd.0 > 0 && !ledger.reserve(&plan.key.id, plan.day, usd.0, plan.key.daily_cap.map(|c| c.0))? {
                let spend = ledger.spend(&plan.key.id, plan.day)?;
                let cap = plan.key.daily_cap.unwrap_or(UsdMicros(0));
                return deny(ledger, plan, Some(&resolved), Denial::CapExceeded { cap, spend, amount: usd });
            }
            (plan.key.id.clone(), plan.day, usd.0, Bucket::Reserved)
        }
    };
    let forwarded_key = match &retry {
        Some(record) => record.forwarded_key.clone(),
        None if existing.iter().any(|(k, _, _)| *k == OpKind::Content) => {
            derived_idempotency_key(&plan.fingerprint, &plan.call_id)
        }
        None => plan.caller_key.clone(),
    };

    for (_, op_key, record) in &existing {
        let fresh = IdemRecord {
            account: plan.account.clone(),
            op_key: op_key.clone(),
            fingerprint: plan.fingerprint.clone(),
            endpoint: plan.endpoint.clone(),
            state: IdemState::InFlight,
            call_id: plan.call_id.clone(),
            forwarded_key: forwarded_key.clone(),
            created_at: plan.now,
            expires_at: plan.now + plan.record_ttl_secs.max(plan.key.dedup_window_secs),
            lease_expires_at: plan.now + plan.lease_secs,
            response: None,
        };
        match record {
            Some(old) if old.state == IdemState::Uncertain || old.state == IdemState::InFlight => ledger
                .update_idempotency(&IdemRecord { created_at: old.created_at, expires_at: old.expires_at, ..fresh })?,
            // A record that no longer binds (expired, outside the dedup window) is replaced.
            _ => match ledger.idempotency(&plan.account, op_key)? {
                Some(_) => ledger.update_idempotency(&fresh)?,
                None => ledger.insert_idempotency(&fresh)?,
            },
        }
    }

    let mut entry = entry_for(plan, Some(&resolved), "allowed", "");
    entry.stage = "intent".into();
    entry.forwarded_idempotency_key = forwarded_key.clone();
    if retry.is_some() {
        entry.reason = RETRY_OF_UNCERTAIN.into();
    }
    ledger.insert_call(&CallRow {
        call_id: plan.call_id.clone(),
        key_id,
        day,
        amount_micros: amount,
        bucket,
        state: CallState::Pending,
        unpriced: matches!(resolved, Resolved::Unpriced { .. }),
        created_at: plan.now,
        lease_expires_at: plan.now + plan.lease_secs,
        context: entry.clone(),
    })?;
    ledger.append_audit(&entry)?;
    Ok(Begun::Allowed {
        call_id: plan.call_id.clone(),
        forwarded_key,
        reserved: if earlier.is_some() { 0 } else { amount },
    })
}

/// The reason on the intent (and call) of a retry that took over an
/// operation whose outcome is uncertain, under its upstream key.
const RETRY_OF_UNCERTAIN: &str = "retry_of_uncertain_call";

/// The records a call is identified by: the caller's key (Stripe's
/// semantics) and, for money-moving calls of content-dedup keys, its content.
fn op_keys(plan: &CallPlan, moves_money: bool) -> Vec<(OpKind, String)> {
    let mut ops = Vec::new();
    if !plan.caller_key.is_empty() {
        ops.push((OpKind::Caller, format!("idem:{}", plan.caller_key)));
    }
    if moves_money && plan.key.dedup == crate::model::DedupMode::Content {
        ops.push((OpKind::Content, format!("content:{}", plan.fingerprint)));
    }
    ops
}

/// Whether a stored record still decides this call. Finished records end:
/// caller keys after their time to live, content after the key's dedup window.
fn still_binding(r: &IdemRecord, kind: OpKind, plan: &CallPlan) -> bool {
    if r.state != IdemState::Done {
        return true;
    }
    match kind {
        OpKind::Caller => r.expires_at > plan.now,
        OpKind::Content => r.created_at + plan.key.dedup_window_secs > plan.now,
    }
}

fn judge(r: &IdemRecord, kind: OpKind, plan: &CallPlan) -> Precedent {
    if kind == OpKind::Caller && (r.fingerprint != plan.fingerprint || r.endpoint != plan.endpoint) {
        return Precedent::Mismatch;
    }
    match (r.state, &r.response) {
        (IdemState::InFlight, _) if r.lease_expires_at > plan.now => Precedent::InFlight,
        // A lapsed lease means the gateway that held it never settled: the outcome is unknown.
        (IdemState::InFlight | IdemState::Uncertain, _) => Precedent::Retry(r.clone()),
        (IdemState::Done, Some(resp)) => Precedent::Replay(resp.clone()),
        (IdemState::Done, None) => Precedent::Unreplayable,
    }
}

fn rank(s: &Precedent) -> u8 {
    match s {
        Precedent::Mismatch => 0,
        Precedent::InFlight => 1,
        Precedent::Replay(_) => 2,
        Precedent::Unreplayable => 3,
        Precedent::Retry(_) => 4,
    }
}

fn deny(ledger: &mut dyn Ledger, plan: &CallPlan, resolved: Option<&Resolved>, denial: Denial) -> StoreResult<Begun> {
    let mut entry = entry_for(plan, resolved, "denied", denial.code().as_str());
    entry.stage = "call".into();
    entry.outcome = "not_sent".into();
    ledger.append_audit(&entry)?;
    Ok(Begun::Denied(denial))
}

fn entry_for(plan: &CallPlan, resolved: Option<&Resolved>, decision: &str, reason: &str) -> AuditEntry {
    let mut e = plan.context.clone();
    e.call_id = plan.call_id.clone();
    e.decision = decision.into();
    e.reason = reason.into();
    match resolved {
        Some(Resolved::Priced { usd, minor, currency, basis }) => {
            e.usd_micros = Some(usd.0);
            if !currency.is_empty() {
                e.amount_minor = Some(*minor);
                e.currency = currency.clone();
            }
            e.price_basis = basis.clone();
        }
        Some(Resolved::Unpriced { reason }) => e.price_basis = format!("unpriced: {reason}"),
        Some(Resolved::Free) => {
            e.usd_micros = Some(0);
            e.price_basis = "free".into();
        }
        None => {}
    }
    e
}

/// The outcome of a call as the gateway saw it.
#[derive(Debug, Clone, Default)]
pub struct Settlement {
    pub call_id: String,
    pub outcome: Outcome,
    pub http_status: u32,
    pub request_id: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub body_truncated: bool,
    pub latency_us: u64,
    pub detail: String,
    pub now_us: i64,
    /// The rates in force, for what an answer says moved in another currency.
    pub fx: std::sync::Arc<FxTable>,
}

/// What a settlement does to the money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The upstream did it (2xx): the amount is spent.
    Committed,
    /// The upstream refused it (4xx): nothing moved, the response stands.
    Refused,
    /// Never executed (not sent, rate limited, idempotency conflict upstream): as if it never happened.
    NotExecuted,
    /// Unknown (reset, timeout, 5xx): stays counted, marked uncertain.
    Uncertain,
}

fn verdict(s: &Settlement) -> Verdict {
    match s.outcome {
        Outcome::NotSent => Verdict::NotExecuted,
        Outcome::Uncertain | Outcome::Unspecified => Verdict::Uncertain,
        Outcome::Responded => match s.http_status {
            200..=299 => Verdict::Committed,
            409 | 429 => Verdict::NotExecuted,
            400..=499 => Verdict::Refused,
            _ => Verdict::Uncertain,
        },
    }
}

/// What a settlement did, for the metrics and the key caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub verdict: &'static str,
    pub committed_micros: i64,
    /// The answer moved more than was priced (see `reconcile.rs`).
    pub price_mismatch: bool,
    /// The key this settlement suspended for it (none if it already was).
    pub suspended: Option<Suspended>,
}

/// A key suspended by a settlement: the caches must drop it before the caller hears back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspended {
    pub key_id: String,
    pub key_hash: [u8; 32],
    /// The revocation-log generation that tells every cache to drop it.
    pub generation: i64,
}

/// Settles a call. Settling twice (a retried or orphaned settlement) changes
/// nothing and reports `None`.
pub fn settle_call(ledger: &mut dyn Ledger, s: &Settlement) -> StoreResult<Option<Settled>> {
    let Some(call) = ledger.call(&s.call_id)? else {
        return Ok(None);
    };
    if call.state != CallState::Pending {
        return Ok(None);
    }
    let mut v = verdict(s);
    if v == Verdict::NotExecuted && call.context.reason == RETRY_OF_UNCERTAIN {
        // This retry went out under an earlier attempt's upstream key, and was
        // not executed (not sent, or the upstream says another request with
        // that key is in flight): the earlier attempt may still have been. The
        // operation stays uncertain (counted, its record kept for the next
        // retry under the same key), never released.
        v = Verdict::Uncertain;
    }
    let object = if v == Verdict::Committed { parse_object(&s.body, s.now_us / 1_000_000) } else { None };
    let mut amount = call.amount_micros;
    let mut mismatch: Option<Mismatch> = None;
    let (state, bucket) = match v {
        Verdict::Committed => {
            // An unpriced call is counted after the fact, from what Stripe says it moved.
            if call.unpriced {
                if let Some((extra, known)) = object.as_ref().map(|o| object_usd(o, &s.fx)) {
                    let to = if known { Bucket::Committed } else { Bucket::Uncertain };
                    ledger.reserve(&call.key_id, call.day, extra, None)?;
                    ledger.move_spend(&call.key_id, call.day, extra, Bucket::Reserved, Some(to))?;
                    amount += extra;
                }
            } else if let Some(m) = reconcile::compare(&call, &s.body, &s.fx) {
                mismatch = Some(m);
            }
            ledger.move_spend(&call.key_id, call.day, call.amount_micros, call.bucket, Some(Bucket::Committed))?;
            (CallState::Committed, Bucket::Committed)
        }
        Verdict::Refused | Verdict::NotExecuted => {
            ledger.move_spend(&call.key_id, call.day, call.amount_micros, call.bucket, None)?;
            (CallState::Released, call.bucket)
        }
        Verdict::Uncertain => {
            if call.bucket != Bucket::Uncertain {
                ledger.move_spend(&call.key_id, call.day, call.amount_micros, call.bucket, Some(Bucket::Uncertain))?;
            }
            (CallState::Uncertain, Bucket::Uncertain)
        }
    };
    ledger.set_call_state(&call.call_id, state, bucket, s.now_us / 1_000_000)?;

    let response = (!s.body_truncated).then(|| StoredResponse {
        status: s.http_status,
        headers: s.headers.clone(),
        body: s.body.clone(),
    });
    for mut record in ledger.idempotency_for_call(&call.call_id)? {
        let is_content = record.op_key.starts_with("content:");
        match v {
            Verdict::Committed => {
                record.state = IdemState::Done;
                record.response = response.clone();
                ledger.update_idempotency(&record)?;
            }
            // Stripe keeps a refusal under the caller's key; a content record is
            // dropped so the same request can be tried again (say, with a new card).
            Verdict::Refused if !is_content => {
                record.state = IdemState::Done;
                record.response = response.clone();
                ledger.update_idempotency(&record)?;
            }
            Verdict::Refused | Verdict::NotExecuted => ledger.delete_idempotency(&record.account, &record.op_key)?,
            Verdict::Uncertain => {
                record.state = IdemState::Uncertain;
                record.lease_expires_at = 0;
                ledger.update_idempotency(&record)?;
            }
        }
    }
    if let Some(o) = &object {
        ledger.put_object(o)?;
    }

    let mut entry = call.context.clone();
    entry.stage = "outcome".into();
    entry.at_us = s.now_us;
    let verdict = match v {
        Verdict::Committed => "committed",
        Verdict::Refused => "refused_upstream",
        Verdict::NotExecuted => "not_executed",
        Verdict::Uncertain => "outcome_uncertain",
    };
    entry.reason = verdict.into();
    entry.outcome = match s.outcome {
        Outcome::Responded => "responded",
        Outcome::NotSent => "not_sent",
        _ => "uncertain",
    }
    .into();
    entry.upstream_status = (s.http_status != 0).then_some(s.http_status);
    entry.request_id = s.request_id.clone();
    entry.object_id = object.as_ref().map(|o| o.object_id.clone()).or_else(|| object_id(&s.body)).unwrap_or_default();
    entry.latency_us = Some(s.latency_us);
    entry.detail = s.detail.clone();
    if call.unpriced {
        entry.usd_micros = Some(amount);
    }
    ledger.append_audit(&entry)?;
    let suspended = match &mismatch {
        Some(m) => suspend_for(ledger, &call, &entry, m, s.now_us)?,
        None => None,
    };
    let committed_micros = if v == Verdict::Committed { amount } else { 0 };
    Ok(Some(Settled { verdict, committed_micros, price_mismatch: mismatch.is_some(), suspended }))
}

/// A call moved more than it was priced at: counts the difference (as
/// spent, or as uncertain when the rate is unknown), records both readings,
/// and suspends the key.
fn suspend_for(
    ledger: &mut dyn Ledger,
    call: &CallRow,
    outcome: &AuditEntry,
    m: &Mismatch,
    now_us: i64,
) -> StoreResult<Option<Suspended>> {
    let extra = (m.counted_usd.0 - call.amount_micros).max(0);
    if extra > 0 {
        let to = if m.rate_known { Bucket::Committed } else { Bucket::Uncertain };
        ledger.reserve(&call.key_id, call.day, extra, None)?;
        ledger.move_spend(&call.key_id, call.day, extra, Bucket::Reserved, Some(to))?;
    }
    let mut entry = outcome.clone();
    entry.stage = "reconcile".into();
    entry.decision = "price_mismatch".into();
    entry.reason = "moved_more_than_priced".into();
    entry.amount_minor = Some(m.moved_minor);
    entry.currency = m.moved_currency.clone();
    entry.usd_micros = Some(m.counted_usd.0);
    entry.detail = m.detail.clone();
    ledger.append_audit(&entry)?;
    let now = now_us / 1_000_000;
    let Some(key_hash) = ledger.suspend_key(&call.key_id, now, &m.detail)? else {
        return Ok(None); // already suspended (or revoked): the caches dropped it then
    };
    let generation = ledger.record_revocation(&[key_hash], now)?;
    Ok(Some(Suspended { key_id: call.key_id.clone(), key_hash, generation }))
}

/// Pending calls whose gateway never settled them become uncertain: the
/// money may have moved, so it stays counted.
pub fn expire_leases(ledger: &mut dyn Ledger, now_us: i64) -> StoreResult<usize> {
    let stale = ledger.expired_pending_calls(now_us / 1_000_000, 1000)?;
    for call in &stale {
        settle_call(
            ledger,
            &Settlement {
                call_id: call.call_id.clone(),
                outcome: Outcome::Uncertain,
                detail: "lease_expired".into(),
                now_us,
                ..Default::default()
            },
        )?;
    }
    Ok(stale.len())
}

/// `id`, `currency` and the amount of a Stripe object in a JSON response.
fn parse_object(body: &[u8], now: i64) -> Option<ObjectAmount> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let id = v.get("id")?.as_str()?.to_owned();
    let currency = v.get("currency")?.as_str()?.to_ascii_lowercase();
    let amount = ["amount", "amount_due", "amount_remaining"].iter().find_map(|k| v.get(*k)?.as_i64())?;
    Some(ObjectAmount { object_id: id, currency, amount_minor: amount, seen_at: now })
}

fn object_id(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("id")?.as_str().map(str::to_owned)
}

/// USD value of an object, and whether its currency had a rate: without one
/// it is counted at the highest rate known (an upper bound, counted as uncertain).
fn object_usd(o: &ObjectAmount, fx: &FxTable) -> (i64, bool) {
    match to_usd(o.amount_minor.max(0), &o.currency, false, fx) {
        Ok(usd) => (usd.0, true),
        Err(_) => (at_highest_known_rate(o.amount_minor.max(0), &o.currency, false, fx).0, false),
    }
}

impl From<StoreError> for Denial {
    fn from(_: StoreError) -> Denial {
        Denial::StorageUnavailable
    }
}
