//! The control service's domain records: vault keys, spend, calls,
//! idempotency records, objects, FX rates and audit entries.

use keybrake_core::money::UsdMicros;
use keybrake_core::scope::Scope;
use keybrake_core::vendor::Vendor;
use serde::Serialize;

/// How a vault key deduplicates money-moving calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupMode {
    /// Identical method, path, body and account within the window are one operation.
    Content,
    /// Only the caller's `Idempotency-Key` identifies an operation.
    IdempotencyKey,
}

impl DedupMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DedupMode::Content => "content",
            DedupMode::IdempotencyKey => "idempotency_key",
        }
    }

    pub fn parse(text: &str) -> Option<DedupMode> {
        match text {
            "content" => Some(DedupMode::Content),
            "idempotency_key" => Some(DedupMode::IdempotencyKey),
            _ => None,
        }
    }
}

/// A vault key as stored: never the key itself, only its SHA-256.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub id: String,
    pub key_hash: [u8; 32],
    pub label: String,
    pub vendor: Vendor,
    pub scopes: Vec<Scope>,
    pub allowed_accounts: Vec<String>,
    pub daily_cap: Option<UsdMicros>,
    pub max_per_call: Option<UsdMicros>,
    pub allow_unpriced: bool,
    pub dedup: DedupMode,
    pub dedup_window_secs: i64,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    /// Set when a call moved more money than was priced; refused until reinstated.
    pub suspended_at: Option<i64>,
    pub suspended_reason: String,
}

/// Lifecycle state of a key at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Active,
    Expired,
    Revoked,
    Suspended,
}

impl KeyRecord {
    /// What the key allows, for the one rule both sides apply (`keybrake_core::permission`).
    pub fn terms(&self) -> keybrake_core::permission::KeyTerms<'_> {
        keybrake_core::permission::KeyTerms {
            vendor: self.vendor,
            scopes: &self.scopes,
            allowed_accounts: &self.allowed_accounts,
            expires_at: self.expires_at,
            revoked: self.revoked_at.is_some(),
            suspended: self.suspended_at.is_some(),
        }
    }

    pub fn state(&self, now: i64) -> KeyState {
        if self.revoked_at.is_some() {
            KeyState::Revoked
        } else if now >= self.expires_at {
            KeyState::Expired
        } else if self.suspended_at.is_some() {
            KeyState::Suspended
        } else {
            KeyState::Active
        }
    }
}

/// One key's spend on one UTC day, in micro-dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    pub committed: i64,
    pub reserved: i64,
    pub uncertain: i64,
}

impl Spend {
    /// Everything that counts against the cap.
    pub fn total(&self) -> i64 {
        self.committed + self.reserved + self.uncertain
    }
}

/// Where a call's amount currently sits in the day's spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Reserved,
    Committed,
    Uncertain,
}

impl Bucket {
    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Reserved => "reserved",
            Bucket::Committed => "committed",
            Bucket::Uncertain => "uncertain",
        }
    }

    pub fn column(self) -> &'static str {
        match self {
            Bucket::Reserved => "reserved_micros",
            Bucket::Committed => "committed_micros",
            Bucket::Uncertain => "uncertain_micros",
        }
    }
}

/// State of an authorised call that holds durable state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// Forwarded (or about to be); outcome not known yet.
    Pending,
    Committed,
    Released,
    Uncertain,
    /// Its uncertain amount was taken over by a retry of the same operation.
    Superseded,
}

impl CallState {
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Pending => "pending",
            CallState::Committed => "committed",
            CallState::Released => "released",
            CallState::Uncertain => "uncertain",
            CallState::Superseded => "superseded",
        }
    }
}

/// An authorised call with a reservation and/or idempotency records.
#[derive(Debug, Clone)]
pub struct CallRow {
    pub call_id: String,
    pub key_id: String,
    pub day: i64,
    pub amount_micros: i64,
    pub bucket: Bucket,
    pub state: CallState,
    pub unpriced: bool,
    pub created_at: i64,
    pub lease_expires_at: i64,
    /// The audit entry of the decision, reused for the outcome row.
    pub context: AuditEntry,
}

/// State of an idempotency record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdemState {
    InFlight,
    Done,
    Uncertain,
}

impl IdemState {
    pub fn as_str(self) -> &'static str {
        match self {
            IdemState::InFlight => "in_flight",
            IdemState::Done => "done",
            IdemState::Uncertain => "uncertain",
        }
    }
}

/// An operation seen by the gateway, per upstream account.
#[derive(Debug, Clone)]
pub struct IdemRecord {
    /// Hex SHA-256 of the upstream credential and `Stripe-Account`.
    pub account: String,
    /// `idem:<caller key>` or `content:<fingerprint>`.
    pub op_key: String,
    pub fingerprint: String,
    pub endpoint: String,
    pub state: IdemState,
    pub call_id: String,
    pub forwarded_key: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub lease_expires_at: i64,
    pub response: Option<StoredResponse>,
}

/// A completed upstream response kept for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The amount and currency of an object created through the gateway
/// (`ch_...`, `pi_...`), so later calls on it can be priced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectAmount {
    pub object_id: String,
    pub currency: String,
    pub amount_minor: i64,
    pub seen_at: i64,
}

/// USD per one major unit of a currency, as decimal text, with the date it holds for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FxRate {
    pub currency: String,
    pub usd_per_unit: String,
    pub as_of: String,
}

/// One audit event. Field order is the hashing order: do not reorder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct AuditEntry {
    pub at_us: i64,
    pub call_id: String,
    /// `intent` (durable before forwarding), `outcome` (after the upstream answered), or `call` (both in one).
    pub stage: String,
    pub key_id: String,
    pub label: String,
    pub vendor: String,
    pub method: String,
    pub path: String,
    /// `allowed`, `denied`, `replayed` or `abandoned`.
    pub decision: String,
    pub reason: String,
    /// `responded`, `uncertain`, `not_sent` or empty while pending.
    pub outcome: String,
    pub upstream_status: Option<u32>,
    pub amount_minor: Option<i64>,
    pub currency: String,
    pub usd_micros: Option<i64>,
    pub price_basis: String,
    pub idempotency_key: String,
    pub forwarded_idempotency_key: String,
    pub fingerprint: String,
    pub stripe_account: String,
    pub request_id: String,
    pub object_id: String,
    pub latency_us: Option<u64>,
    pub detail: String,
    /// The MCP tool that made the call, when Keybrake's MCP endpoint did. Added
    /// after the chain began: left out of the JSON (and so of the hash) when
    /// empty, so rows written before it still verify.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mcp_tool: String,
}

/// An audit entry as stored, with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// Insertion order (the API's cursor).
    pub seq: i64,
    /// Place in the hash chain; `None` until the chainer linked it (PostgreSQL).
    pub chain_seq: Option<i64>,
    /// Empty until chained.
    pub prev_hash: String,
    pub hash: String,
    pub entry: AuditEntry,
}

/// A rejected field of a request (a key to issue, FX rates to set).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub param: String,
    pub message: String,
}

pub(crate) fn invalid(param: &str, message: impl Into<String>) -> Invalid {
    Invalid { param: param.into(), message: message.into() }
}
