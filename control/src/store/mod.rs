//! Storage: two traits with the operations the domain needs inside one
//! transaction: [`LedgerRead`], what a read-only connection may do, and
//! [`Ledger`] on top of it, the writes and the reads that lock. The domain
//! code (calls, keys, audit) is written once against them; [`Store`] runs it
//! on the right connection: [`Store::write`] in a durable transaction with a
//! `&mut dyn Ledger`, [`Store::read`] on a read-only connection with a
//! `&mut dyn LedgerRead`. The operations themselves are written once too
//! (`ledger.rs`, over `sql.rs`), on what each backend provides (`sqlite.rs`,
//! `postgres.rs`).

mod ledger;
pub mod postgres;
mod sql;
pub mod sqlite;

use std::future::Future;

use futures_util::future::Either;

use crate::model::{
    AuditEntry, AuditRow, Bucket, CallRow, CallState, FxRate, IdemRecord, KeyRecord, ObjectAmount, Spend,
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

/// What a read-only connection may do: the reads that lock nothing.
pub trait LedgerRead {
    fn key_by_hash(&mut self, hash: &[u8; 32]) -> StoreResult<Option<KeyRecord>>;
    fn key_by_id(&mut self, id: &str) -> StoreResult<Option<KeyRecord>>;
    fn list_keys(&mut self, query: &KeyQuery) -> StoreResult<Vec<KeyRecord>>;
    /// The newest revocation's generation (0 when none).
    fn latest_revocation(&mut self) -> StoreResult<i64>;
    /// Revocations after `generation`, oldest first.
    fn revocations_after(&mut self, generation: i64, limit: usize) -> StoreResult<Vec<(i64, Vec<[u8; 32]>)>>;
    /// Replicas heard from since `since_ms`, with the generation each acked.
    fn live_replicas(&mut self, since_ms: i64) -> StoreResult<Vec<(String, i64)>>;

    fn spend(&mut self, key_id: &str, day: i64) -> StoreResult<Spend>;
    fn spend_by_key(&mut self, day: i64) -> StoreResult<Vec<(String, Spend)>>;

    fn object(&mut self, object_id: &str) -> StoreResult<Option<ObjectAmount>>;
    fn fx_rates(&mut self) -> StoreResult<Vec<FxRate>>;

    /// Rows not yet chained (always 0 where rows are chained as inserted).
    fn unchained_audit_rows(&mut self) -> StoreResult<i64>;
    fn query_audit(&mut self, query: &AuditQuery) -> StoreResult<Vec<AuditRow>>;
    /// Chained rows in chain order after chain position `after`.
    fn audit_rows(&mut self, after: i64, limit: usize) -> StoreResult<Vec<AuditRow>>;

    /// The CSRF token of a console session (by the SHA-256 of its id) still live at `now`.
    fn session(&mut self, id_hash: &[u8; 32], now: i64) -> StoreResult<Option<String>>;

    fn ping(&mut self) -> StoreResult<()>;
}

/// The operations of a write transaction: every read, the writes, and the
/// reads that lock what they read until the transaction ends.
pub trait Ledger: LedgerRead {
    fn insert_key(&mut self, key: &KeyRecord) -> StoreResult<()>;
    /// Revokes the selected active keys; returns the (id, key hash) of each revoked now.
    fn revoke_keys(&mut self, selector: &RevokeSelector, at: i64) -> StoreResult<Vec<(String, [u8; 32])>>;
    /// Suspends an active key that is not suspended; returns its hash if it was suspended now.
    fn suspend_key(&mut self, key_id: &str, at: i64, reason: &str) -> StoreResult<Option<[u8; 32]>>;
    /// Lifts a key's suspension; returns its hash if it was suspended.
    fn reinstate_key(&mut self, key_id: &str) -> StoreResult<Option<[u8; 32]>>;
    /// Appends a revocation for the workers' key caches; returns its generation.
    /// (Any change to what a key may do is one: the caches drop the key.)
    fn record_revocation(&mut self, hashes: &[[u8; 32]], at: i64) -> StoreResult<i64>;
    /// Records that every watcher of `replica` applied revocations up to `acked`.
    fn heartbeat(&mut self, replica: &str, acked: i64, now_ms: i64) -> StoreResult<()>;

    /// Check-and-reserve in one atomic statement: adds `amount` to the day's
    /// reserved spend only if committed + reserved + uncertain + amount <= cap.
    fn reserve(&mut self, key_id: &str, day: i64, amount: i64, cap: Option<i64>) -> StoreResult<bool>;
    /// Moves `amount` out of `from` into `to` (`None` releases it).
    fn move_spend(&mut self, key_id: &str, day: i64, amount: i64, from: Bucket, to: Option<Bucket>) -> StoreResult<()>;

    fn insert_call(&mut self, call: &CallRow) -> StoreResult<()>;
    /// The call, locked: two settlements of one call run one after the other.
    fn call(&mut self, call_id: &str) -> StoreResult<Option<CallRow>>;
    fn set_call_state(&mut self, call_id: &str, state: CallState, bucket: Bucket, at: i64) -> StoreResult<()>;
    /// Pending calls whose lease ran out (their gateway never settled them),
    /// locked (PostgreSQL skips those another sweeper holds).
    fn expired_pending_calls(&mut self, now: i64, limit: usize) -> StoreResult<Vec<CallRow>>;

    /// The operation's record, locked, and the operation with it even while
    /// it has no record: replicas deciding on it take turns.
    fn idempotency(&mut self, account: &str, op_key: &str) -> StoreResult<Option<IdemRecord>>;
    /// Inserts a new record; `Conflict` if one exists (another replica won the race).
    fn insert_idempotency(&mut self, record: &IdemRecord) -> StoreResult<()>;
    /// Replaces an existing record (after reading it in this transaction).
    fn update_idempotency(&mut self, record: &IdemRecord) -> StoreResult<()>;
    fn delete_idempotency(&mut self, account: &str, op_key: &str) -> StoreResult<()>;
    /// The records of a call, locked.
    fn idempotency_for_call(&mut self, call_id: &str) -> StoreResult<Vec<IdemRecord>>;
    fn purge_idempotency(&mut self, now: i64) -> StoreResult<u64>;

    fn put_object(&mut self, object: &ObjectAmount) -> StoreResult<()>;
    fn put_fx_rate(&mut self, rate: &FxRate, at: i64) -> StoreResult<()>;

    /// Appends an entry to the audit log, in the caller's transaction.
    /// SQLite links it into the hash chain at once; PostgreSQL leaves that to
    /// [`Ledger::chain_audit`], so that replicas do not queue on one lock.
    fn append_audit(&mut self, entry: &AuditEntry) -> StoreResult<()>;
    /// Links up to `limit` unchained rows into the hash chain, in insertion
    /// order; returns how many. A no-op where rows are chained as inserted.
    fn chain_audit(&mut self, limit: usize) -> StoreResult<usize>;

    /// Starts a console session (by the SHA-256 of its id) with its CSRF token.
    fn insert_session(&mut self, id_hash: &[u8; 32], csrf: &str, expires_at: i64) -> StoreResult<()>;
    fn delete_session(&mut self, id_hash: &[u8; 32]) -> StoreResult<()>;
    fn purge_sessions(&mut self, now: i64) -> StoreResult<u64>;
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

    /// Runs `f` on a read-only connection: it can call no writer.
    ///
    /// ```compile_fail,E0599
    /// # async fn f(store: keybrake_control::store::Store) {
    /// let _ = store.read(|l| l.reserve("key_1", 20_000, 1, None)).await;
    /// # }
    /// ```
    pub fn read<T, F>(&self, f: F) -> impl Future<Output = StoreResult<T>> + Send + 'static
    where
        F: Fn(&mut dyn LedgerRead) -> StoreResult<T> + Send + 'static,
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
