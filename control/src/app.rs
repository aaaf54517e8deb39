//! The control service's application state and the gateway operations the
//! filter calls: authorize, settle, record. The gRPC layer (`grpc.rs`) is a
//! thin translation onto these.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use keybrake_core::permission::{permits, CallShape, Refused};
use keybrake_core::pricing;
use keybrake_core::scope::Method;

use crate::auth_limit::FailureLimiter;
use crate::calls::{begin_call, settle_call, Begun, CallPlan, Settled, Settlement};
use crate::clock::{day_of, Clock};
use crate::denial::Denial;
use crate::ids::new_id;
use crate::metrics::Metrics;
use crate::model::{AuditEntry, KeyRecord};
use crate::replica_cache::ReplicaCache;
use crate::revocation::Revocations;
use crate::secrets::Vault;
use crate::store::{Ledger, Store, StoreError, StoreResult};
use crate::usd::{FxTable, Quote, QuoteCurrency};
use crate::wire::{self, authorize_response::Verdict};

/// Tunables of the gateway's bookkeeping.
#[derive(Debug, Clone)]
pub struct Limits {
    /// How long idempotency records of completed calls are kept (Stripe keeps 24 hours).
    pub record_ttl_secs: i64,
    /// How long a forwarded call may stay unsettled before it counts as uncertain.
    pub lease_secs: i64,
    /// How long a decision may wait for its durable write; past it the call is
    /// refused with a storage error (well before the filter's own timeout).
    pub store_deadline: std::time::Duration,
}

/// How long a settlement that suspended a key waits for every worker to drop it.
const SUSPENSION_PROPAGATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Default for Limits {
    fn default() -> Limits {
        Limits { record_ttl_secs: 86_400, lease_secs: 300, store_deadline: std::time::Duration::from_secs(5) }
    }
}

pub struct App {
    pub store: Store,
    pub metrics: Metrics,
    pub revocations: Arc<Revocations>,
    /// Keys by hash, so deciding a call reads nothing (see replica_cache.rs).
    pub keys: Arc<ReplicaCache>,
    /// Failed admin authentications per source.
    pub auth_failures: FailureLimiter,
    /// Envoy's admin address, for the console's gateway counters (`--envoy-admin-url`).
    pub envoy_admin_url: Option<String>,
    /// The MCP endpoint's gateway and accepted hosts (`--gateway-url`, `--mcp-allowed-hosts`).
    pub mcp: crate::mcp::Settings,
    pub vault: Vault,
    pub clock: Arc<dyn Clock>,
    pub limits: Limits,
    fx: RwLock<Arc<FxTable>>,
}

impl App {
    pub fn new(store: Store, vault: Vault, clock: Arc<dyn Clock>, limits: Limits) -> App {
        App {
            store,
            metrics: Metrics::new(),
            revocations: Arc::new(Revocations::new(new_id("replica"), 0)),
            keys: Arc::new(ReplicaCache::default()),
            auth_failures: FailureLimiter::default(),
            envoy_admin_url: None,
            mcp: crate::mcp::Settings::default(),
            vault,
            clock,
            limits,
            fx: RwLock::new(Arc::new(HashMap::new())),
        }
    }

    /// Reloads the FX table from storage.
    pub async fn refresh_fx(&self) -> StoreResult<()> {
        let rates = self.store.read(|l| l.fx_rates()).await?;
        let table: FxTable = rates.into_iter().map(|r| (r.currency.clone(), r)).collect();
        if let Ok(mut fx) = self.fx.write() {
            *fx = Arc::new(table);
        }
        Ok(())
    }

    pub fn fx(&self) -> Arc<FxTable> {
        self.fx.read().map(|f| f.clone()).unwrap_or_default()
    }

    /// Decides one call. Storage failures deny (fail closed).
    pub async fn authorize(&self, req: wire::AuthorizeRequest) -> wire::AuthorizeResponse {
        let response = self.decide(req).await;
        match &response.verdict {
            Some(Verdict::Allow(_)) => self.metrics.decision("allowed", ""),
            Some(Verdict::Deny(d)) => self.metrics.decision("denied", d.denial_code().map_or("", |c| c.as_str())),
            Some(Verdict::Replay(_)) => self.metrics.decision("replayed", ""),
            None => {}
        }
        response
    }

    async fn decide(&self, req: wire::AuthorizeRequest) -> wire::AuthorizeResponse {
        let now_us = self.clock.now_us();
        let mut context = AuditEntry {
            at_us: now_us,
            vendor: req.vendor.clone(),
            method: req.method.clone(),
            path: req.path.clone(),
            idempotency_key: req.idempotency_key.clone(),
            fingerprint: req.fingerprint.clone(),
            mcp_tool: req.mcp_tool.clone(),
            // The account the call acts on (Stripe-Account or Stripe-Context; checked below).
            stripe_account: if req.stripe_account.is_empty() {
                req.stripe_context.clone()
            } else {
                req.stripe_account.clone()
            },
            ..Default::default()
        };
        let Ok(hash) = <[u8; 32]>::try_from(req.vault_key_hash.as_slice()) else {
            return self.refuse(context, None, Denial::BadRequest("vault key hash must be 32 bytes".into())).await;
        };
        // Read before the key: a worker caches the answer only if it saw no later revocation.
        let generation = self.revocations.generation();
        let key = match self.key(hash).await {
            Ok(Some(key)) => key,
            Ok(None) => return self.refuse(context, None, Denial::KeyUnknown).await,
            Err(e) => {
                tracing::error!(error = %e, "authorize: key lookup failed");
                return deny(&Denial::StorageUnavailable, None);
            }
        };
        context.key_id = key.id.clone();
        context.label = key.label.clone();
        let mut metadata = metadata(&key);
        metadata.generation = u64::try_from(generation).unwrap_or(0);
        if let Err(denial) = check_key(&key, &req, now_us / 1_000_000) {
            return self.refuse(context, Some(metadata), denial).await;
        }
        let Some(method) = Method::parse(&req.method) else {
            return self.refuse(context, Some(metadata), Denial::BadRequest("unknown method".into())).await;
        };
        // The wire's price becomes the domain's here, at the edge.
        let price = match Quote::try_from(req.price.clone().unwrap_or_default()) {
            Ok(quote) => quote,
            Err(denial) => return self.refuse(context, Some(metadata), denial).await,
        };
        let stateful = pricing::holds_state(method, &req.path, price == Quote::Free, !req.idempotency_key.is_empty());
        if !stateful {
            // Reads and free calls without a caller key hold no state: the
            // filter records them in its audit batches.
            let allow = wire::Allow {
                upstream_authorization: self.vault.upstream_authorization(),
                forwarded_idempotency_key: String::new(),
                call_id: chosen_call_id(&req.call_id),
                settle: false,
            };
            // The worker may decide the key's next reads itself (see revocation.rs),
            // with the credential of this Allow.
            return wire::AuthorizeResponse { verdict: Some(Verdict::Allow(allow)), key: Some(metadata) };
        }
        let plan = CallPlan {
            call_id: chosen_call_id(&req.call_id),
            now: now_us / 1_000_000,
            day: day_of(now_us),
            price,
            fx: self.fx(),
            account: self.vault.account_scope(&context.stripe_account),
            endpoint: format!("{} {}", req.method, req.path),
            fingerprint: req.fingerprint.clone(),
            caller_key: req.idempotency_key.clone(),
            record_ttl_secs: self.limits.record_ttl_secs,
            lease_secs: self.limits.lease_secs,
            context,
            key,
        };
        let begun = {
            let _timer = self.metrics.time_store("write");
            self.begin_within_deadline(plan).await
        };
        match &begun {
            Ok(Begun::Allowed { reserved, .. }) if *reserved > 0 => {
                self.metrics.reservations.with_label_values(&["reserved"]).inc()
            }
            Ok(Begun::Denied(Denial::CapExceeded { .. })) => {
                self.metrics.reservations.with_label_values(&["cap_exceeded"]).inc()
            }
            Err(_) => self.metrics.error("storage"),
            _ => {}
        }
        match begun {
            Ok(Begun::Allowed { call_id, forwarded_key, .. }) => {
                let allow = wire::Allow {
                    upstream_authorization: self.vault.upstream_authorization(),
                    forwarded_idempotency_key: forwarded_key,
                    call_id,
                    settle: true,
                };
                wire::AuthorizeResponse { verdict: Some(Verdict::Allow(allow)), key: Some(metadata) }
            }
            Ok(Begun::Replayed(r)) => {
                let replay = wire::Replay {
                    http_status: r.status,
                    headers: r.headers.into_iter().map(|(name, value)| wire::Header { name, value }).collect(),
                    body: r.body,
                };
                wire::AuthorizeResponse { verdict: Some(Verdict::Replay(replay)), key: Some(metadata) }
            }
            Ok(Begun::Denied(d)) => deny(&d, Some(metadata)),
            Err(e) => {
                tracing::error!(error = %e, "authorize: storage failed; refusing the call");
                deny(&Denial::StorageUnavailable, Some(metadata))
            }
        }
    }

    /// Begins a call, or gives up after the store deadline. A write that still
    /// commits after we gave up is released at once: nothing was forwarded.
    async fn begin_within_deadline(&self, plan: CallPlan) -> StoreResult<Begun> {
        let mut write = tokio::spawn(self.store.write(move |l| begin_call(l, &plan)));
        match tokio::time::timeout(self.limits.store_deadline, &mut write).await {
            Ok(joined) => joined.map_err(|e| StoreError::Unavailable(e.to_string()))?,
            Err(_) => {
                let (store, now_us) = (self.store.clone(), self.clock.now_us());
                tokio::spawn(async move {
                    if let Ok(Ok(Begun::Allowed { call_id, .. })) = write.await {
                        let release = Settlement {
                            call_id,
                            outcome: wire::Outcome::NotSent,
                            detail: "decided_after_the_deadline".into(),
                            now_us,
                            ..Default::default()
                        };
                        if let Err(e) = store.write_applied(move |l| settle_call(l, &release)).await {
                            tracing::error!(error = %e, "could not release a late reservation");
                        }
                    }
                });
                Err(StoreError::Unavailable("the store did not decide within the deadline".into()))
            }
        }
    }

    /// A key by hash: from the cache, else from the store (then cached).
    /// Cached only while this replica keeps up with the revocation log
    /// ([`crate::revocation::CACHE_TRUST`]): a replica that was paused past
    /// the revokers' patience must not decide from what it cached before.
    async fn key(&self, hash: [u8; 32]) -> StoreResult<Option<KeyRecord>> {
        if self.revocations.in_sync(self.clock.monotonic(), crate::revocation::CACHE_TRUST) {
            if let Some(key) = self.keys.get(&hash) {
                return Ok(Some(key));
            }
        }
        let key = self.store.read(move |l| l.key_by_hash(&hash)).await?;
        if let Some(k) = &key {
            self.keys.insert(k.clone());
        }
        Ok(key)
    }

    /// Records a refusal made before any state was touched, then answers it.
    async fn refuse(
        &self,
        mut entry: AuditEntry,
        key: Option<wire::KeyMetadata>,
        denial: Denial,
    ) -> wire::AuthorizeResponse {
        entry.call_id = new_id("call");
        entry.stage = "call".into();
        entry.decision = "denied".into();
        entry.reason = denial.code().as_str().into();
        entry.outcome = "not_sent".into();
        if let Err(e) = self.store.write_applied(move |l| l.append_audit(&entry).map(|_| ())).await {
            tracing::error!(error = %e, "could not record a denial");
        }
        deny(&denial, key)
    }

    pub async fn settle(&self, s: wire::SettleRequest) -> StoreResult<()> {
        let settlement = settlement_from_wire(s, self.clock.now_us(), self.fx());
        let settled = {
            let _timer = self.metrics.time_store("write");
            self.store.write_applied(move |l| settle_call(l, &settlement)).await
        };
        match settled {
            Ok(report) => {
                self.after_settlements(report.into_iter()).await;
                Ok(())
            }
            Err(e) => {
                self.metrics.error("storage");
                Err(e)
            }
        }
    }

    /// Counts settlements; a key one of them suspended is dropped from every
    /// cache before the settlement is answered (and so before the caller hears
    /// back), so its next call is refused through any replica and worker.
    async fn after_settlements(&self, reports: impl Iterator<Item = Settled>) {
        for r in reports {
            self.metrics.settlements.with_label_values(&[r.verdict]).inc();
            self.metrics.spend_committed_micros.inc_by(u64::try_from(r.committed_micros).unwrap_or(0));
            if r.price_mismatch {
                self.metrics.price_mismatches.inc();
            }
            let Some(suspended) = r.suspended else { continue };
            self.metrics.keys_suspended.inc();
            tracing::error!(key_id = %suspended.key_id, "a call moved more than was priced: vault key suspended");
            self.keys.evict(&[suspended.key_hash]);
            let now_ms = self.clock.now_us() / 1000;
            let propagated = crate::revocation::wait_propagated(
                &self.store,
                &self.revocations,
                suspended.generation,
                now_ms,
                SUSPENSION_PROPAGATION_TIMEOUT,
            )
            .await;
            if !matches!(propagated, Ok(true)) {
                tracing::warn!(key_id = %suspended.key_id, "suspension not acknowledged by every worker in time");
            }
        }
    }

    /// Appends the filter's batched records (and settles orphaned calls).
    pub async fn record_calls(&self, batch: wire::CallRecordBatch) -> StoreResult<()> {
        let now_us = self.clock.now_us();
        let fx = self.fx();
        let settlements: Vec<Settlement> =
            batch.orphaned_settlements.into_iter().map(|s| settlement_from_wire(s, now_us, fx.clone())).collect();
        let records: Vec<wire::CallRecord> = batch
            .records
            .into_iter()
            .map(|mut r| {
                if r.call_id.is_empty() {
                    r.call_id = new_id("call");
                }
                r
            })
            .collect();
        let reports = self
            .store
            .write_applied(move |l| {
                let mut reports = Vec::new();
                for s in &settlements {
                    reports.extend(settle_call(l, s)?);
                }
                let mut labels: HashMap<String, String> = HashMap::new();
                for r in &records {
                    let entry = entry_from_record(l, &mut labels, r.clone(), now_us)?;
                    l.append_audit(&entry)?;
                }
                Ok(reports)
            })
            .await?;
        self.after_settlements(reports.into_iter()).await;
        Ok(())
    }
}

/// The filter's call id when it is well formed, else a fresh one.
fn chosen_call_id(proposed: &str) -> String {
    let ok = proposed.starts_with("call_")
        && proposed.len() <= 64
        && proposed.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        proposed.to_owned()
    } else {
        new_id("call")
    }
}

fn check_key(key: &KeyRecord, req: &wire::AuthorizeRequest, now: i64) -> Result<(), Denial> {
    let Some(method) = Method::parse(&req.method) else {
        return Err(Denial::BadRequest("unknown method".into()));
    };
    let call = CallShape {
        vendor: &req.vendor,
        method,
        path: &req.path,
        stripe_account: &req.stripe_account,
        stripe_context: &req.stripe_context,
    };
    permits(&key.terms(), &call, now).map_err(|refused| match refused {
        Refused::Revoked => Denial::KeyRevoked,
        Refused::Expired => Denial::KeyExpired,
        Refused::Suspended => Denial::KeySuspended,
        Refused::WrongVendor { key_vendor } => {
            Denial::WrongVendor { key_vendor: key_vendor.as_str().into(), route_vendor: req.vendor.clone() }
        }
        Refused::OutOfScope => Denial::OutOfScope { method: req.method.clone(), path: req.path.clone() },
        Refused::Account(e) => Denial::Account(e),
    })
}

fn deny(denial: &Denial, key: Option<wire::KeyMetadata>) -> wire::AuthorizeResponse {
    wire::AuthorizeResponse { verdict: Some(Verdict::Deny(denial.into())), key }
}

fn metadata(key: &KeyRecord) -> wire::KeyMetadata {
    wire::KeyMetadata {
        key_id: key.id.clone(),
        label: key.label.clone(),
        vendor: key.vendor.as_str().into(),
        allowed_endpoints: key.scopes.iter().map(ToString::to_string).collect(),
        expires_at: key.expires_at,
        revoked: key.revoked_at.is_some(),
        allowed_accounts: key.allowed_accounts.clone(),
        generation: 0,
    }
}

fn settlement_from_wire(s: wire::SettleRequest, now_us: i64, fx: Arc<FxTable>) -> Settlement {
    Settlement {
        fx,
        outcome: wire::Outcome::try_from(s.outcome).unwrap_or(wire::Outcome::Uncertain),
        call_id: s.call_id,
        http_status: s.http_status,
        request_id: s.request_id,
        headers: s.headers.into_iter().map(|h| (h.name, h.value)).collect(),
        body: s.body,
        body_truncated: s.body_truncated,
        latency_us: s.latency_us,
        detail: s.detail,
        now_us,
    }
}

/// An audit entry from a record the filter sent, with the key's label filled in.
fn entry_from_record(
    ledger: &mut dyn Ledger,
    labels: &mut HashMap<String, String>,
    r: wire::CallRecord,
    now_us: i64,
) -> StoreResult<AuditEntry> {
    // A call the filter refused before asking names its key by hash only.
    let mut r = r;
    if r.key_id.is_empty() {
        if let Ok(hash) = <[u8; 32]>::try_from(r.vault_key_hash.as_slice()) {
            if let Some(k) = ledger.key_by_hash(&hash)? {
                labels.insert(k.id.clone(), k.label);
                r.key_id = k.id;
            }
        }
    }
    let label = match (r.key_id.is_empty(), labels.get(&r.key_id)) {
        (true, _) => String::new(),
        (false, Some(l)) => l.clone(),
        (false, None) => {
            let l = ledger.key_by_id(&r.key_id)?.map(|k| k.label).unwrap_or_default();
            labels.insert(r.key_id.clone(), l.clone());
            l
        }
    };
    // A record's price is for the audit trail only: one the filter could not have sent reads as none.
    let quote = r.price.and_then(|p| Quote::try_from(p).ok());
    let (amount_minor, currency, usd_micros, price_basis) = match quote {
        Some(Quote::Free) => (None, String::new(), Some(0), "free".to_owned()),
        Some(Quote::Amount { minor, currency: QuoteCurrency::Given(c), basis, .. }) => (Some(minor), c, None, basis),
        Some(Quote::Amount { basis, .. } | Quote::ObjectAmount { basis, .. }) => (None, String::new(), None, basis),
        Some(Quote::Unpriced { reason }) => (None, String::new(), None, reason),
        None => (None, String::new(), None, String::new()),
    };
    let outcome = match wire::Outcome::try_from(r.outcome).unwrap_or(wire::Outcome::Unspecified) {
        wire::Outcome::Responded => "responded",
        wire::Outcome::NotSent => "not_sent",
        wire::Outcome::Uncertain => "uncertain",
        wire::Outcome::Unspecified => "",
    };
    Ok(AuditEntry {
        at_us: if r.at_us > 0 { r.at_us } else { now_us },
        call_id: r.call_id,
        stage: "call".into(),
        key_id: r.key_id,
        label,
        vendor: r.vendor,
        method: r.method,
        path: r.path,
        decision: r.decision,
        reason: r.reason,
        outcome: outcome.into(),
        upstream_status: (r.http_status != 0).then_some(r.http_status),
        amount_minor,
        currency,
        usd_micros,
        price_basis,
        idempotency_key: r.idempotency_key,
        forwarded_idempotency_key: String::new(),
        fingerprint: r.fingerprint,
        stripe_account: if r.stripe_account.is_empty() { r.stripe_context } else { r.stripe_account },
        request_id: r.request_id,
        object_id: String::new(),
        latency_us: Some(r.latency_us),
        detail: r.detail,
        mcp_tool: r.mcp_tool,
    })
}
