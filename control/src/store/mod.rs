//! Storage: one trait, [`Ledger`], with the operations the domain needs inside
//! one transaction, implemented by each backend. The domain code (calls,
//! keys, audit) is written once against `&mut dyn Ledger`; [`Store`] runs it
//! on the right connection: [`Store::write`] in a durable transaction,
//! [`Store::read`] on a read-only connection.

pub mod postgres;
pub mod sqlite;

use std::future::Future;

use futures_util::future::Either;

use crate::model::{
    AuditEntry, AuditRow, Bucket, CallRow, CallState, FxRate, IdemRecord, IdemState, KeyRecord, ObjectAmount, Spend,
    StoredResponse,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or refused the operation (disk full, read-only, gone).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Two replicas raced on the same row; the operation may be retried.
    #[error("storage conflict: {0}")]
    Conflict(String),
    /// Stored data that does not decode (a bug or a tampered row).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

// The columns each backend reads and writes, in the order of its row decoders.
macro_rules! key_insert_columns {
    () => {
        "id, key_hash, label, vendor, allowed_endpoints, allowed_accounts, daily_cap_micros, \
        max_per_call_micros, allow_unpriced, dedup_mode, dedup_window_secs, created_at, expires_at, revoked_at"
    };
}
/// What a new key is written with (a new key is never suspended).
pub(crate) const KEY_INSERT_COLUMNS: &str = key_insert_columns!();
pub(crate) const KEY_COLUMNS: &str = concat!(key_insert_columns!(), ", suspended_at, suspended_reason");

pub(crate) const CALL_COLUMNS: &str =
    "call_id, key_id, day, amount_micros, bucket, state, unpriced, created_at, lease_expires_at, context";

pub(crate) const IDEM_COLUMNS: &str =
    "account, op_key, fingerprint, endpoint, state, call_id, forwarded_key, created_at, \
    expires_at, lease_expires_at, status, headers, body";

/// Every stored `calls.bucket`, `calls.state` and `idempotency.state`.
pub(crate) const BUCKETS: [Bucket; 3] = [Bucket::Reserved, Bucket::Committed, Bucket::Uncertain];
pub(crate) const CALL_STATES: [CallState; 5] =
    [CallState::Pending, CallState::Committed, CallState::Released, CallState::Uncertain, CallState::Superseded];
pub(crate) const IDEM_STATES: [IdemState; 3] = [IdemState::InFlight, IdemState::Done, IdemState::Uncertain];

/// Which keys to list.
#[derive(Debug, Clone, Default)]
pub struct KeyQuery {
    pub label_prefix: Option<String>,
    pub limit: usize,
    /// Keyset cursor: ids after this one, in id order.
    pub after_id: Option<String>,
}

/// Which keys to revoke.
#[derive(Debug, Clone)]
pub enum RevokeSelector {
    Id(String),
    LabelPrefix(String),
}

/// Filters of the audit log. Empty fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub key_id: Option<String>,
    pub label_prefix: Option<String>,
    /// Matches the caller's or the forwarded idempotency key.
    pub idempotency_key: Option<String>,
    pub fingerprint: Option<String>,
    pub object_id: Option<String>,
    pub decision: Option<String>,
    pub call_id: Option<String>,
    pub since_us: Option<i64>,
    pub until_us: Option<i64>,
    /// Keyset cursor: rows strictly after (ascending) or before (descending) this sequence number.
    pub cursor: Option<i64>,
    pub ascending: bool,
    pub limit: usize,
}

/// The operations on stored state, all inside the caller's transaction.
pub trait Ledger {
    fn insert_key(&mut self, key: &KeyRecord) -> StoreResult<()>;
    fn key_by_hash(&mut self, hash: &[u8; 32]) -> StoreResult<Option<KeyRecord>>;
    fn key_by_id(&mut self, id: &str) -> StoreResult<Option<KeyRecord>>;
    fn list_keys(&mut self, query: &KeyQuery) -> StoreResult<Vec<KeyRecord>>;
    /// Revokes the selected active keys; returns the (id, key hash) of each revoked now.
    fn revoke_keys(&mut self, selector: &RevokeSelector, at: i64) -> StoreResult<Vec<(String, [u8; 32])>>;
    /// Suspends an active key that is not suspended; returns its hash if it was suspended now.
    fn suspend_key(&mut self, key_id: &str, at: i64, reason: &str) -> StoreResult<Option<[u8; 32]>>;
    /// Lifts a key's suspension; returns its hash if it was suspended.
    fn reinstate_key(&mut self, key_id: &str) -> StoreResult<Option<[u8; 32]>>;
    /// Appends a revocation for the workers' key caches; returns its generation.
    /// (Any change to what a key may do is one: the caches drop the key.)
    fn record_revocation(&mut self, hashes: &[[u8; 32]], at: i64) -> StoreResult<i64>;
    /// The newest revocation's generation (0 when none).
    fn latest_revocation(&mut self) -> StoreResult<i64>;
    /// Revocations after `generation`, oldest first.
    fn revocations_after(&mut self, generation: i64, limit: usize) -> StoreResult<Vec<(i64, Vec<[u8; 32]>)>>;
    /// Records that every watcher of `replica` applied revocations up to `acked`.
    fn heartbeat(&mut self, replica: &str, acked: i64, now_ms: i64) -> StoreResult<()>;
    /// Replicas heard from since `since_ms`, with the generation each acked.
    fn live_replicas(&mut self, since_ms: i64) -> StoreResult<Vec<(String, i64)>>;

    fn spend(&mut self, key_id: &str, day: i64) -> StoreResult<Spend>;
    fn spend_by_key(&mut self, day: i64) -> StoreResult<Vec<(String, Spend)>>;
    /// Check-and-reserve in one atomic statement: adds `amount` to the day's
    /// reserved spend only if committed + reserved + uncertain + amount <= cap.
    fn reserve(&mut self, key_id: &str, day: i64, amount: i64, cap: Option<i64>) -> StoreResult<bool>;
    /// Moves `amount` out of `from` into `to` (`None` releases it).
    fn move_spend(&mut self, key_id: &str, day: i64, amount: i64, from: Bucket, to: Option<Bucket>) -> StoreResult<()>;

    fn insert_call(&mut self, call: &CallRow) -> StoreResult<()>;
    fn call(&mut self, call_id: &str) -> StoreResult<Option<CallRow>>;
    fn set_call_state(&mut self, call_id: &str, state: CallState, bucket: Bucket, at: i64) -> StoreResult<()>;
    /// Pending calls whose lease ran out (their gateway never settled them).
    fn expired_pending_calls(&mut self, now: i64, limit: usize) -> StoreResult<Vec<CallRow>>;

    fn idempotency(&mut self, account: &str, op_key: &str) -> StoreResult<Option<IdemRecord>>;
    /// Inserts a new record; `Conflict` if one exists (another replica won the race).
    fn insert_idempotency(&mut self, record: &IdemRecord) -> StoreResult<()>;
    /// Replaces an existing record (after reading it in this transaction).
    fn update_idempotency(&mut self, record: &IdemRecord) -> StoreResult<()>;
    fn delete_idempotency(&mut self, account: &str, op_key: &str) -> StoreResult<()>;
    fn idempotency_for_call(&mut self, call_id: &str) -> StoreResult<Vec<IdemRecord>>;
    fn purge_idempotency(&mut self, now: i64) -> StoreResult<u64>;

    fn object(&mut self, object_id: &str) -> StoreResult<Option<ObjectAmount>>;
    fn put_object(&mut self, object: &ObjectAmount) -> StoreResult<()>;

    fn fx_rates(&mut self) -> StoreResult<Vec<FxRate>>;
    fn put_fx_rate(&mut self, rate: &FxRate, at: i64) -> StoreResult<()>;

    /// Appends an entry to the audit log, in the caller's transaction.
    /// SQLite links it into the hash chain at once; PostgreSQL leaves that to
    /// [`Ledger::chain_audit`], so that replicas do not queue on one lock.
    fn append_audit(&mut self, entry: &AuditEntry) -> StoreResult<()>;
    /// Links up to `limit` unchained rows into the hash chain, in insertion
    /// order; returns how many. A no-op where rows are chained as inserted.
    fn chain_audit(&mut self, limit: usize) -> StoreResult<usize> {
        let _ = limit;
        Ok(0)
    }
    /// Rows not yet chained.
    fn unchained_audit_rows(&mut self) -> StoreResult<i64> {
        Ok(0)
    }
    fn query_audit(&mut self, query: &AuditQuery) -> StoreResult<Vec<AuditRow>>;
    /// Chained rows in chain order after chain position `after`.
    fn audit_rows(&mut self, after: i64, limit: usize) -> StoreResult<Vec<AuditRow>>;

    /// Starts a console session (by the SHA-256 of its id) with its CSRF token.
    fn insert_session(&mut self, id_hash: &[u8; 32], csrf: &str, expires_at: i64) -> StoreResult<()>;
    /// The CSRF token of a session still live at `now`.
    fn session(&mut self, id_hash: &[u8; 32], now: i64) -> StoreResult<Option<String>>;
    fn delete_session(&mut self, id_hash: &[u8; 32]) -> StoreResult<()>;
    fn purge_sessions(&mut self, now: i64) -> StoreResult<u64>;

    fn ping(&mut self) -> StoreResult<()>;
}

/// A value bound to a query built at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlValue {
    Text(String),
    Int(i64),
}

/// How a backend numbers its placeholders and spells a label-prefix match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl AuditQuery {
    /// `SELECT ... FROM audit_log` with only the filters given, so the
    /// planner can use the index of each (the sparse columns' partial indexes
    /// apply because the clause repeats their condition).
    pub fn to_sql(&self, columns: &str, dialect: Dialect) -> (String, Vec<SqlValue>) {
        let mut clauses: Vec<String> = Vec::new();
        let mut values: Vec<SqlValue> = Vec::new();
        let bind = |v: SqlValue, values: &mut Vec<SqlValue>| {
            values.push(v);
            match dialect {
                Dialect::Sqlite => format!("?{}", values.len()),
                Dialect::Postgres => format!("${}", values.len()),
            }
        };
        let text = |s: &String| SqlValue::Text(s.clone());
        if let Some(v) = &self.key_id {
            clauses.push(format!("key_id = {}", bind(text(v), &mut values)));
        }
        if let Some(p) = &self.label_prefix {
            // Through the keys' labels: audit rows copy their key's (immutable) label.
            let labels = match dialect {
                Dialect::Sqlite => {
                    let lo = bind(text(p), &mut values);
                    let hi = bind(text(p), &mut values);
                    format!("label >= {lo} AND label < {hi} || char(1114111)")
                }
                Dialect::Postgres => format!("starts_with(label, {})", bind(text(p), &mut values)),
            };
            clauses.push(format!("key_id IN (SELECT id FROM vault_keys WHERE {labels})"));
        }
        if let Some(v) = &self.idempotency_key {
            let a = bind(text(v), &mut values);
            let b = bind(text(v), &mut values);
            clauses.push(format!(
                "((idempotency_key = {a} AND idempotency_key != '') OR \
                 (forwarded_idempotency_key = {b} AND forwarded_idempotency_key != ''))"
            ));
        }
        for (column, value) in [("fingerprint", &self.fingerprint), ("object_id", &self.object_id)] {
            if let Some(v) = value {
                clauses.push(format!("{column} = {} AND {column} != ''", bind(text(v), &mut values)));
            }
        }
        for (column, value) in [("decision", &self.decision), ("call_id", &self.call_id)] {
            if let Some(v) = value {
                clauses.push(format!("{column} = {}", bind(text(v), &mut values)));
            }
        }
        if let Some(v) = self.since_us {
            clauses.push(format!("at_us >= {}", bind(SqlValue::Int(v), &mut values)));
        }
        if let Some(v) = self.until_us {
            clauses.push(format!("at_us < {}", bind(SqlValue::Int(v), &mut values)));
        }
        if let Some(v) = self.cursor {
            let cmp = if self.ascending { ">" } else { "<" };
            clauses.push(format!("seq {cmp} {}", bind(SqlValue::Int(v), &mut values)));
        }
        let filter = if clauses.is_empty() { String::new() } else { format!(" WHERE {}", clauses.join(" AND ")) };
        let order = if self.ascending { "ASC" } else { "DESC" };
        let limit = bind(SqlValue::Int(self.limit as i64), &mut values);
        (format!("SELECT {columns} FROM audit_log{filter} ORDER BY seq {order} LIMIT {limit}"), values)
    }
}

/// Hex list of key hashes, as the revocations table stores them.
pub fn hashes_to_text(hashes: &[[u8; 32]]) -> String {
    hashes.iter().map(|h| keybrake_core::fingerprint::to_hex(h)).collect::<Vec<_>>().join(",")
}

/// The inverse of [`hashes_to_text`].
pub fn hashes_from_text(text: &str) -> StoreResult<Vec<[u8; 32]>> {
    text.split(',')
        .filter(|h| !h.is_empty())
        .map(|h| {
            let bytes: Option<Vec<u8>> =
                (0..h.len()).step_by(2).map(|i| h.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect();
            bytes
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| StoreError::Corrupt("revocations.key_hashes".into()))
        })
        .collect()
}

/// The variant of `all` stored as `text`. Unknown text is corrupt, never read
/// as some default (a live state would let a corrupt row be settled again).
pub(crate) fn stored_variant<T: Copy>(
    text: &str,
    all: &[T],
    name: fn(T) -> &'static str,
    column: &str,
) -> StoreResult<T> {
    all.iter().copied().find(|v| name(*v) == text).ok_or_else(|| StoreError::Corrupt(column.to_owned()))
}

/// An idempotency record's stored response: a status comes with its headers
/// and body, and headers that do not decode are corrupt, not empty.
pub(crate) fn stored_response(
    status: Option<i64>,
    headers: Option<String>,
    body: Option<Vec<u8>>,
) -> StoreResult<Option<StoredResponse>> {
    let Some(status) = status else { return Ok(None) };
    let corrupt = |what: &str| StoreError::Corrupt(format!("idempotency.{what}"));
    Ok(Some(StoredResponse {
        status: u32::try_from(status).map_err(|_| corrupt("status"))?,
        headers: headers.and_then(|h| serde_json::from_str(&h).ok()).ok_or_else(|| corrupt("headers"))?,
        body: body.ok_or_else(|| corrupt("body"))?,
    }))
}

/// The configured backend. Clones share the same connections.
#[derive(Clone)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

impl Store {
    /// Runs `f` in a transaction that is durable (fsync'd) before the result is returned.
    /// If `f` fails, its changes are rolled back.
    pub fn write<T, F>(&self, f: F) -> impl Future<Output = StoreResult<T>> + Send + 'static
    where
        F: Fn(&mut dyn Ledger) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        self.write_with(true, f)
    }

    /// Like [`Store::write`], but returns once the change is committed and
    /// visible, before it is flushed to disk. For settlements and audit
    /// records only: if a machine crash loses one, the call stays pending, its
    /// lease runs out and it is counted as uncertain — never less than it was.
    pub fn write_applied<T, F>(&self, f: F) -> impl Future<Output = StoreResult<T>> + Send + 'static
    where
        F: Fn(&mut dyn Ledger) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        self.write_with(false, f)
    }

    fn write_with<T, F>(&self, durable: bool, f: F) -> impl Future<Output = StoreResult<T>> + Send + 'static
    where
        F: Fn(&mut dyn Ledger) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        match self {
            Store::Sqlite(s) => Either::Left(s.write(durable, f)),
            Store::Postgres(p) => Either::Right(p.write(durable, f)),
        }
    }

    /// Runs `f` on a read-only connection.
    pub fn read<T, F>(&self, f: F) -> impl Future<Output = StoreResult<T>> + Send + 'static
    where
        F: Fn(&mut dyn Ledger) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        match self {
            Store::Sqlite(s) => Either::Left(s.read(f)),
            Store::Postgres(p) => Either::Right(p.read(f)),
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }
}
