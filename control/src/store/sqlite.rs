//! SQLite backend: one writer thread that group-commits (the jobs waiting
//! when it wakes run in one transaction; if one fails, the transaction is
//! rolled back and the others run again without it), plus a pool of read-only
//! connections. WAL mode with `synchronous=NORMAL`, and the writer syncs the
//! WAL itself once per group before answering a durable job: when `write`
//! returns, the change is on disk.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use tokio::sync::oneshot;

use super::{
    hashes_from_text, hashes_to_text, stored_response, stored_variant, AuditQuery, Dialect, KeyQuery, Ledger,
    RevokeSelector, SqlValue, StoreError, StoreResult, BUCKETS, CALL_COLUMNS, CALL_STATES, IDEM_COLUMNS, IDEM_STATES,
    KEY_COLUMNS, KEY_INSERT_COLUMNS,
};
use crate::audit::chain::{self, GENESIS};
use crate::model::{
    AuditEntry, AuditRow, Bucket, CallRow, CallState, DedupMode, FxRate, IdemRecord, IdemState, KeyRecord,
    ObjectAmount, Spend,
};

mod migrations {
    refinery::embed_migrations!("migrations/sqlite");
}

/// Most transactions folded into one commit.
const MAX_GROUP: usize = 512;
/// Idle read connections kept (opening one parses the schema: reuse them).
const READERS: usize = 32;

/// A unit of work for the writer thread.
trait WriteJob: Send {
    /// Whether the caller waits for an fsync (else for a commit not yet flushed).
    fn durable(&self) -> bool;
    /// Runs the work (again, if its group was rolled back); false when it failed.
    fn run(&mut self, ledger: &mut dyn Ledger) -> bool;
    /// Delivers the result once the group's commit is known.
    fn finish(self: Box<Self>, commit: StoreResult<()>);
}

struct TypedJob<T, F> {
    durable: bool,
    work: F,
    result: Option<StoreResult<T>>,
    reply: oneshot::Sender<StoreResult<T>>,
}

impl<T, F> WriteJob for TypedJob<T, F>
where
    F: Fn(&mut dyn Ledger) -> StoreResult<T> + Send,
    T: Send,
{
    fn durable(&self) -> bool {
        self.durable
    }

    fn run(&mut self, ledger: &mut dyn Ledger) -> bool {
        let result = (self.work)(ledger);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, commit: StoreResult<()>) {
        let result = match (commit, self.result) {
            (Err(e), Some(Ok(_))) | (Err(e), None) => Err(e),
            (_, Some(r)) => r,
            (Ok(()), None) => Err(StoreError::Unavailable("the write was not run".into())),
        };
        let _ = self.reply.send(result);
    }
}

#[derive(Clone)]
pub struct SqliteStore {
    writer: mpsc::Sender<Box<dyn WriteJob>>,
    readers: Arc<ReaderPool>,
}

/// Read-only connections, opened on demand and kept for reuse.
struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn take(&self) -> StoreResult<Connection> {
        if let Some(conn) = self.idle.lock().map_err(unavailable)?.pop() {
            return Ok(conn);
        }
        let conn =
            Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(unavailable)?;
        conn.execute_batch("PRAGMA busy_timeout=5000;").map_err(unavailable)?;
        Ok(conn)
    }

    fn give_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < READERS {
                idle.push(conn);
            }
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn sql_error(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
            StoreError::Conflict(e.to_string())
        }
        rusqlite::Error::FromSqlConversionFailure(..) | rusqlite::Error::InvalidColumnType(..) => {
            StoreError::Corrupt(e.to_string())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        let mut conn = Connection::open(path).map_err(unavailable)?;
        conn.execute_batch(
            // Commits are NORMAL (no fsync); the writer fsyncs the WAL itself once
            // per group before anyone waiting for durability hears back (see
            // `commit_group`). Checkpoints run on their own connection and thread,
            // off the writer's path. The writer is the only writer: a busy database
            // means an outside tool holds it, and waiting long only delays the refusal.
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=0; \
             PRAGMA busy_timeout=1000; PRAGMA foreign_keys=ON; PRAGMA cache_size=-65536; \
             PRAGMA mmap_size=268435456; PRAGMA temp_store=MEMORY;",
        )
        .map_err(unavailable)?;
        migrations::migrations::runner().run(&mut conn).map_err(|e| unavailable(format!("migrations: {e}")))?;
        let wal = wal_path(path);
        // The WAL exists once a connection in WAL mode has written; make sure it does.
        conn.execute_batch("PRAGMA user_version = user_version;").map_err(unavailable)?;
        let wal_file = std::fs::OpenOptions::new()
            .read(true)
            .open(&wal)
            .map_err(|e| unavailable(format!("{}: {e}", wal.display())))?;
        let (tx, rx) = mpsc::channel::<Box<dyn WriteJob>>();
        thread::Builder::new()
            .name("keybrake-sqlite-writer".into())
            .spawn(move || run_writer(conn, wal_file, rx))
            .map_err(unavailable)?;
        let checkpointer = Connection::open(path).map_err(unavailable)?;
        checkpointer.execute_batch("PRAGMA busy_timeout=1000;").map_err(unavailable)?;
        thread::Builder::new()
            .name("keybrake-sqlite-checkpoint".into())
            .spawn(move || run_checkpoints(checkpointer))
            .map_err(unavailable)?;
        Ok(SqliteStore {
            writer: tx,
            readers: Arc::new(ReaderPool { path: path.to_owned(), idle: Mutex::new(Vec::new()) }),
        })
    }

    /// Runs `f` in the next group; `durable` callers hear back after its
    /// fsync, the others after a commit that is not yet flushed to disk.
    pub fn write<T, F>(&self, durable: bool, f: F) -> impl std::future::Future<Output = StoreResult<T>> + Send + 'static
    where
        F: Fn(&mut dyn Ledger) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let sent = self.writer.send(Box::new(TypedJob { durable, work: f, result: None, reply }));
        async move {
            sent.map_err(|_| StoreError::Unavailable("the SQLite writer stopped".into()))?;
            rx.await.map_err(|_| StoreError::Unavailable("the SQLite writer stopped".into()))?
        }
    }

    pub fn read<T, F>(&self, f: F) -> impl std::future::Future<Output = StoreResult<T>> + Send + 'static
    where
        F: Fn(&mut dyn Ledger) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let readers = self.readers.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let conn = readers.take()?;
                let result = f(&mut SqliteLedger { conn: &conn, head: &mut None });
                readers.give_back(conn);
                result
            })
            .await
            .map_err(unavailable)?
        }
    }
}

fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Copies the WAL back into the database now and then, so it stays small.
/// PASSIVE never waits for the writer or the readers.
fn run_checkpoints(conn: Connection) {
    loop {
        thread::sleep(std::time::Duration::from_millis(500));
        if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
            tracing::warn!(error = %e, "SQLite checkpoint failed; will retry");
        }
    }
}

fn run_writer(conn: Connection, wal: std::fs::File, rx: mpsc::Receiver<Box<dyn WriteJob>>) {
    // The audit chain's head, kept here so an append costs no query; restored
    // when a job rolls back, forgotten when a commit fails.
    let mut head: Option<(i64, String)> = None;
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        commit_group(&conn, &wal, jobs, &mut head);
    }
}

/// Runs one transaction-control statement from the statement cache (no re-parse).
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Runs `jobs` in one transaction and commits without an fsync: the ones that
/// only need a commit hear back at once. Then one fsync of the WAL makes the
/// group durable for the others — one fsync per group however many
/// transactions it holds. A job that fails rolls the group back; the others
/// run again without it (jobs are re-runnable), so no savepoint is needed on
/// the common path.
fn commit_group(
    conn: &Connection,
    wal: &std::fs::File,
    jobs: Vec<Box<dyn WriteJob>>,
    head: &mut Option<(i64, String)>,
) {
    let mut jobs = jobs;
    let mut failed = vec![false; jobs.len()];
    loop {
        if let Err(e) = control(conn, "BEGIN IMMEDIATE") {
            let e = unavailable(e);
            for job in jobs {
                job.finish(Err(StoreError::Unavailable(e.to_string())));
            }
            return;
        }
        let failure = jobs.iter_mut().enumerate().filter(|(i, _)| !failed[*i]).find_map(|(i, job)| {
            let ok = job.run(&mut SqliteLedger { conn, head });
            (!ok).then_some(i)
        });
        match failure {
            Some(i) => {
                let _ = conn.execute_batch("ROLLBACK");
                *head = None;
                if let Some(f) = failed.get_mut(i) {
                    *f = true;
                }
            }
            None => break,
        }
    }
    let commit = control(conn, "COMMIT").map_err(unavailable);
    if commit.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
        *head = None;
    }
    let mut durable = Vec::new();
    for (job, failed) in jobs.into_iter().zip(failed) {
        if failed {
            job.finish(Ok(())); // delivers the job's own error
        } else if job.durable() {
            durable.push(job);
        } else {
            job.finish(clone_result(&commit));
        }
    }
    if durable.is_empty() {
        return;
    }
    let synced = match &commit {
        Ok(()) => wal.sync_data().map_err(|e| unavailable(format!("fsync of the WAL: {e}"))),
        Err(e) => Err(StoreError::Unavailable(e.to_string())),
    };
    for job in durable {
        job.finish(clone_result(&synced));
    }
}

fn clone_result(r: &StoreResult<()>) -> StoreResult<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) => Err(StoreError::Unavailable(e.to_string())),
    }
}

struct SqliteLedger<'c> {
    conn: &'c Connection,
    /// The writer's cached audit head (readers pass their own empty one).
    head: &'c mut Option<(i64, String)>,
}

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<KeyRecord> {
    let hash: Vec<u8> = row.get(1)?;
    let scopes: String = row.get(4)?;
    let accounts: String = row.get(5)?;
    let vendor: String = row.get(3)?;
    let dedup: String = row.get(9)?;
    let corrupt =
        |what: &str| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, what.to_owned().into());
    Ok(KeyRecord {
        id: row.get(0)?,
        key_hash: hash.try_into().map_err(|_| corrupt("key_hash"))?,
        label: row.get(2)?,
        vendor: keybrake_core::vendor::Vendor::parse(&vendor).ok_or_else(|| corrupt("vendor"))?,
        scopes: serde_json::from_str::<Vec<String>>(&scopes)
            .map_err(|_| corrupt("allowed_endpoints"))?
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .map_err(|_| corrupt("allowed_endpoints"))?,
        allowed_accounts: serde_json::from_str(&accounts).map_err(|_| corrupt("allowed_accounts"))?,
        daily_cap: row.get::<_, Option<i64>>(6)?.map(keybrake_core::money::UsdMicros),
        max_per_call: row.get::<_, Option<i64>>(7)?.map(keybrake_core::money::UsdMicros),
        allow_unpriced: row.get(8)?,
        dedup: DedupMode::parse(&dedup).ok_or_else(|| corrupt("dedup_mode"))?,
        dedup_window_secs: row.get(10)?,
        created_at: row.get(11)?,
        expires_at: row.get(12)?,
        revoked_at: row.get(13)?,
        suspended_at: row.get(14)?,
        suspended_reason: row.get(15)?,
    })
}

/// A value that does not decode, as rusqlite reports it (`sql_error` makes it `Corrupt`).
fn decode_error(e: StoreError) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.to_string().into())
}

fn call_from_row(row: &Row<'_>) -> rusqlite::Result<CallRow> {
    let bucket: String = row.get(4)?;
    let state: String = row.get(5)?;
    let context: String = row.get(9)?;
    Ok(CallRow {
        call_id: row.get(0)?,
        key_id: row.get(1)?,
        day: row.get(2)?,
        amount_micros: row.get(3)?,
        bucket: stored_variant(&bucket, &BUCKETS, Bucket::as_str, "calls.bucket").map_err(decode_error)?,
        state: stored_variant(&state, &CALL_STATES, CallState::as_str, "calls.state").map_err(decode_error)?,
        unpriced: row.get(6)?,
        created_at: row.get(7)?,
        lease_expires_at: row.get(8)?,
        context: serde_json::from_str(&context)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(9, rusqlite::types::Type::Text, Box::new(e)))?,
    })
}

fn idem_from_row(row: &Row<'_>) -> rusqlite::Result<IdemRecord> {
    let state: String = row.get(4)?;
    let response = stored_response(row.get(10)?, row.get(11)?, row.get(12)?).map_err(decode_error)?;
    Ok(IdemRecord {
        account: row.get(0)?,
        op_key: row.get(1)?,
        fingerprint: row.get(2)?,
        endpoint: row.get(3)?,
        state: stored_variant(&state, &IDEM_STATES, IdemState::as_str, "idempotency.state").map_err(decode_error)?,
        call_id: row.get(5)?,
        forwarded_key: row.get(6)?,
        created_at: row.get(7)?,
        expires_at: row.get(8)?,
        lease_expires_at: row.get(9)?,
        response,
    })
}

const AUDIT_COLUMNS: &str = "seq, chain_seq, prev_hash, hash, entry";

fn audit_from_row(row: &Row<'_>) -> rusqlite::Result<AuditRow> {
    let entry: String = row.get(4)?;
    Ok(AuditRow {
        seq: row.get(0)?,
        chain_seq: row.get(1)?,
        prev_hash: row.get(2)?,
        hash: row.get(3)?,
        entry: serde_json::from_str::<AuditEntry>(&entry)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, Box::new(e)))?,
    })
}

impl SqliteLedger<'_> {
    /// The last chained row as (position, hash), from the writer's cache when it has one.
    fn audit_head(&mut self) -> StoreResult<(i64, String)> {
        if let Some(head) = self.head.as_ref() {
            return Ok(head.clone());
        }
        let head = self
            .conn
            .prepare_cached("SELECT chain_seq, hash FROM audit_log ORDER BY chain_seq DESC LIMIT 1")
            .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map(|head| head.unwrap_or((0, GENESIS.to_owned())))
            .map_err(sql_error)?;
        *self.head = Some(head.clone());
        Ok(head)
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl SqliteLedger<'_> {
    /// Insert and update write the same thirteen columns, in `IDEM_COLUMNS` order.
    fn write_idempotency(&mut self, sql: &str, r: &IdemRecord) -> StoreResult<()> {
        let (status, headers, body) = response_columns(r)?;
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| {
                s.execute(params![
                    r.account,
                    r.op_key,
                    r.fingerprint,
                    r.endpoint,
                    r.state.as_str(),
                    r.call_id,
                    r.forwarded_key,
                    r.created_at,
                    r.expires_at,
                    r.lease_expires_at,
                    status,
                    headers,
                    body
                ])
            })
            .map(|_| ())
            .map_err(sql_error)
    }
}

impl Ledger for SqliteLedger<'_> {
    fn insert_key(&mut self, key: &KeyRecord) -> StoreResult<()> {
        let scopes: Vec<String> = key.scopes.iter().map(ToString::to_string).collect();
        self.conn
            .prepare_cached(&format!(
                "INSERT INTO vault_keys ({KEY_INSERT_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14)"
            ))
            .and_then(|mut s| {
                s.execute(params![
                    key.id,
                    key.key_hash.as_slice(),
                    key.label,
                    key.vendor.as_str(),
                    to_json(&scopes).unwrap_or_default(),
                    to_json(&key.allowed_accounts).unwrap_or_default(),
                    key.daily_cap.map(|c| c.0),
                    key.max_per_call.map(|c| c.0),
                    key.allow_unpriced,
                    key.dedup.as_str(),
                    key.dedup_window_secs,
                    key.created_at,
                    key.expires_at,
                    key.revoked_at,
                ])
            })
            .map(|_| ())
            .map_err(sql_error)
    }

    fn key_by_hash(&mut self, hash: &[u8; 32]) -> StoreResult<Option<KeyRecord>> {
        self.conn
            .prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM vault_keys WHERE key_hash = ?1"))
            .and_then(|mut s| s.query_row(params![hash.as_slice()], key_from_row).optional())
            .map_err(sql_error)
    }

    fn key_by_id(&mut self, id: &str) -> StoreResult<Option<KeyRecord>> {
        self.conn
            .prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM vault_keys WHERE id = ?1"))
            .and_then(|mut s| s.query_row(params![id], key_from_row).optional())
            .map_err(sql_error)
    }

    fn list_keys(&mut self, query: &KeyQuery) -> StoreResult<Vec<KeyRecord>> {
        let prefix = query.label_prefix.clone().unwrap_or_default();
        let after = query.after_id.clone().unwrap_or_default();
        self.conn
            .prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM vault_keys WHERE substr(label, 1, length(?1)) = ?1 AND id > ?2 \
                 ORDER BY id LIMIT ?3"
            ))
            .and_then(|mut s| {
                s.query_map(params![prefix, after, query.limit as i64], key_from_row)?.collect::<Result<Vec<_>, _>>()
            })
            .map_err(sql_error)
    }

    fn revoke_keys(&mut self, selector: &RevokeSelector, at: i64) -> StoreResult<Vec<(String, [u8; 32])>> {
        let (sql, arg) = match selector {
            RevokeSelector::Id(id) => (
                "UPDATE vault_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL RETURNING id, key_hash",
                id,
            ),
            RevokeSelector::LabelPrefix(p) => (
                "UPDATE vault_keys SET revoked_at = ?2 WHERE substr(label, 1, length(?1)) = ?1 AND revoked_at IS NULL \
                 RETURNING id, key_hash",
                p,
            ),
        };
        let rows = self
            .conn
            .prepare_cached(sql)
            .and_then(|mut s| {
                s.query_map(params![arg, at], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(sql_error)?;
        rows.into_iter()
            .map(|(id, h)| Ok((id, h.try_into().map_err(|_| StoreError::Corrupt("key_hash".into()))?)))
            .collect()
    }

    fn suspend_key(&mut self, key_id: &str, at: i64, reason: &str) -> StoreResult<Option<[u8; 32]>> {
        let hash: Option<Vec<u8>> = self
            .conn
            .prepare_cached(
                "UPDATE vault_keys SET suspended_at = ?2, suspended_reason = ?3 \
                 WHERE id = ?1 AND suspended_at IS NULL AND revoked_at IS NULL RETURNING key_hash",
            )
            .and_then(|mut s| s.query_row(params![key_id, at, reason], |r| r.get(0)).optional())
            .map_err(sql_error)?;
        hash.map(|h| h.try_into().map_err(|_| StoreError::Corrupt("key_hash".into()))).transpose()
    }

    fn reinstate_key(&mut self, key_id: &str) -> StoreResult<Option<[u8; 32]>> {
        let hash: Option<Vec<u8>> = self
            .conn
            .prepare_cached(
                "UPDATE vault_keys SET suspended_at = NULL, suspended_reason = '' \
                 WHERE id = ?1 AND suspended_at IS NOT NULL RETURNING key_hash",
            )
            .and_then(|mut s| s.query_row(params![key_id], |r| r.get(0)).optional())
            .map_err(sql_error)?;
        hash.map(|h| h.try_into().map_err(|_| StoreError::Corrupt("key_hash".into()))).transpose()
    }

    fn record_revocation(&mut self, hashes: &[[u8; 32]], at: i64) -> StoreResult<i64> {
        self.conn
            .prepare_cached("INSERT INTO revocations (key_hashes, at) VALUES (?1, ?2) RETURNING generation")
            .and_then(|mut s| s.query_row(params![hashes_to_text(hashes), at], |r| r.get(0)))
            .map_err(sql_error)
    }

    fn latest_revocation(&mut self) -> StoreResult<i64> {
        self.conn.query_row("SELECT COALESCE(MAX(generation), 0) FROM revocations", [], |r| r.get(0)).map_err(sql_error)
    }

    fn revocations_after(&mut self, generation: i64, limit: usize) -> StoreResult<Vec<(i64, Vec<[u8; 32]>)>> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT generation, key_hashes FROM revocations WHERE generation > ?1 ORDER BY generation LIMIT ?2",
            )
            .and_then(|mut s| {
                s.query_map(params![generation, limit as i64], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(sql_error)?;
        rows.into_iter().map(|(g, text)| Ok((g, hashes_from_text(&text)?))).collect()
    }

    fn heartbeat(&mut self, replica: &str, acked: i64, now_ms: i64) -> StoreResult<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO replicas (replica_id, acked_generation, heartbeat_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (replica_id) DO UPDATE SET acked_generation = excluded.acked_generation, \
                 heartbeat_at = excluded.heartbeat_at",
            )
            .and_then(|mut s| s.execute(params![replica, acked, now_ms]))
            .map(|_| ())
            .map_err(sql_error)
    }

    fn live_replicas(&mut self, since_ms: i64) -> StoreResult<Vec<(String, i64)>> {
        self.conn
            .prepare_cached("SELECT replica_id, acked_generation FROM replicas WHERE heartbeat_at >= ?1")
            .and_then(|mut s| {
                s.query_map(params![since_ms], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<Vec<_>, _>>()
            })
            .map_err(sql_error)
    }

    fn spend(&mut self, key_id: &str, day: i64) -> StoreResult<Spend> {
        self.conn
            .prepare_cached(
                "SELECT committed_micros, reserved_micros, uncertain_micros FROM daily_spend WHERE key_id = ?1 AND day = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![key_id, day], |r| {
                    Ok(Spend { committed: r.get(0)?, reserved: r.get(1)?, uncertain: r.get(2)? })
                })
                .optional()
            })
            .map(Option::unwrap_or_default)
            .map_err(sql_error)
    }

    fn spend_by_key(&mut self, day: i64) -> StoreResult<Vec<(String, Spend)>> {
        self.conn
            .prepare_cached(
                "SELECT key_id, committed_micros, reserved_micros, uncertain_micros FROM daily_spend WHERE day = ?1",
            )
            .and_then(|mut s| {
                s.query_map(params![day], |r| {
                    Ok((r.get(0)?, Spend { committed: r.get(1)?, reserved: r.get(2)?, uncertain: r.get(3)? }))
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(sql_error)
    }

    fn reserve(&mut self, key_id: &str, day: i64, amount: i64, cap: Option<i64>) -> StoreResult<bool> {
        // One statement: the row is created if missing and the amount added only
        // if the cap holds; the WHERE of the upsert is the check.
        let changed = self
            .conn
            .prepare_cached(
                "INSERT INTO daily_spend (key_id, day, reserved_micros) SELECT ?1, ?2, ?3 WHERE ?4 IS NULL OR ?3 <= ?4 \
                 ON CONFLICT (key_id, day) DO UPDATE SET reserved_micros = reserved_micros + excluded.reserved_micros \
                 WHERE ?4 IS NULL OR committed_micros + reserved_micros + uncertain_micros + excluded.reserved_micros <= ?4",
            )
            .and_then(|mut s| s.execute(params![key_id, day, amount, cap]))
            .map_err(sql_error)?;
        Ok(changed == 1)
    }

    fn move_spend(&mut self, key_id: &str, day: i64, amount: i64, from: Bucket, to: Option<Bucket>) -> StoreResult<()> {
        let sql = match to {
            Some(to) => format!(
                "UPDATE daily_spend SET {f} = {f} - ?3, {t} = {t} + ?3 WHERE key_id = ?1 AND day = ?2",
                f = from.column(),
                t = to.column()
            ),
            None => format!("UPDATE daily_spend SET {f} = {f} - ?3 WHERE key_id = ?1 AND day = ?2", f = from.column()),
        };
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.execute(params![key_id, day, amount]))
            .map(|_| ())
            .map_err(sql_error)
    }

    fn insert_call(&mut self, call: &CallRow) -> StoreResult<()> {
        let context = to_json(&call.context)?;
        self.conn
            .prepare_cached(&format!("INSERT INTO calls ({CALL_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)"))
            .and_then(|mut s| {
                s.execute(params![
                    call.call_id,
                    call.key_id,
                    call.day,
                    call.amount_micros,
                    call.bucket.as_str(),
                    call.state.as_str(),
                    call.unpriced,
                    call.created_at,
                    call.lease_expires_at,
                    context,
                ])
            })
            .map(|_| ())
            .map_err(sql_error)
    }

    fn call(&mut self, call_id: &str) -> StoreResult<Option<CallRow>> {
        self.conn
            .prepare_cached(&format!("SELECT {CALL_COLUMNS} FROM calls WHERE call_id = ?1"))
            .and_then(|mut s| s.query_row(params![call_id], call_from_row).optional())
            .map_err(sql_error)
    }

    fn set_call_state(&mut self, call_id: &str, state: CallState, bucket: Bucket, at: i64) -> StoreResult<()> {
        self.conn
            .prepare_cached("UPDATE calls SET state = ?2, bucket = ?3, settled_at = ?4 WHERE call_id = ?1")
            .and_then(|mut s| s.execute(params![call_id, state.as_str(), bucket.as_str(), at]))
            .map(|_| ())
            .map_err(sql_error)
    }

    fn expired_pending_calls(&mut self, now: i64, limit: usize) -> StoreResult<Vec<CallRow>> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {CALL_COLUMNS} FROM calls WHERE state = 'pending' AND lease_expires_at < ?1 LIMIT ?2"
            ))
            .and_then(|mut s| s.query_map(params![now, limit as i64], call_from_row)?.collect::<Result<Vec<_>, _>>())
            .map_err(sql_error)
    }

    fn idempotency(&mut self, account: &str, op_key: &str) -> StoreResult<Option<IdemRecord>> {
        self.conn
            .prepare_cached(&format!("SELECT {IDEM_COLUMNS} FROM idempotency WHERE account = ?1 AND op_key = ?2"))
            .and_then(|mut s| s.query_row(params![account, op_key], idem_from_row).optional())
            .map_err(sql_error)
    }

    fn insert_idempotency(&mut self, r: &IdemRecord) -> StoreResult<()> {
        self.write_idempotency(
            &format!("INSERT INTO idempotency ({IDEM_COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)"),
            r,
        )
    }

    fn update_idempotency(&mut self, r: &IdemRecord) -> StoreResult<()> {
        self.write_idempotency(
            "UPDATE idempotency SET fingerprint = ?3, endpoint = ?4, state = ?5, call_id = ?6, forwarded_key = ?7, \
             created_at = ?8, expires_at = ?9, lease_expires_at = ?10, status = ?11, headers = ?12, body = ?13 \
             WHERE account = ?1 AND op_key = ?2",
            r,
        )
    }

    fn delete_idempotency(&mut self, account: &str, op_key: &str) -> StoreResult<()> {
        self.conn
            .prepare_cached("DELETE FROM idempotency WHERE account = ?1 AND op_key = ?2")
            .and_then(|mut s| s.execute(params![account, op_key]))
            .map(|_| ())
            .map_err(sql_error)
    }

    fn idempotency_for_call(&mut self, call_id: &str) -> StoreResult<Vec<IdemRecord>> {
        self.conn
            .prepare_cached(&format!("SELECT {IDEM_COLUMNS} FROM idempotency WHERE call_id = ?1"))
            .and_then(|mut s| s.query_map(params![call_id], idem_from_row)?.collect::<Result<Vec<_>, _>>())
            .map_err(sql_error)
    }

    fn purge_idempotency(&mut self, now: i64) -> StoreResult<u64> {
        self.conn
            .prepare_cached("DELETE FROM idempotency WHERE expires_at < ?1 AND state = 'done'")
            .and_then(|mut s| s.execute(params![now]))
            .map(|n| n as u64)
            .map_err(sql_error)
    }

    fn object(&mut self, object_id: &str) -> StoreResult<Option<ObjectAmount>> {
        self.conn
            .prepare_cached("SELECT object_id, currency, amount_minor, seen_at FROM objects WHERE object_id = ?1")
            .and_then(|mut s| {
                s.query_row(params![object_id], |r| {
                    Ok(ObjectAmount {
                        object_id: r.get(0)?,
                        currency: r.get(1)?,
                        amount_minor: r.get(2)?,
                        seen_at: r.get(3)?,
                    })
                })
                .optional()
            })
            .map_err(sql_error)
    }

    fn put_object(&mut self, o: &ObjectAmount) -> StoreResult<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO objects (object_id, currency, amount_minor, seen_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (object_id) DO UPDATE SET currency = excluded.currency, amount_minor = excluded.amount_minor, \
                 seen_at = excluded.seen_at",
            )
            .and_then(|mut s| s.execute(params![o.object_id, o.currency, o.amount_minor, o.seen_at]))
            .map(|_| ())
            .map_err(sql_error)
    }

    fn fx_rates(&mut self) -> StoreResult<Vec<FxRate>> {
        self.conn
            .prepare_cached("SELECT currency, usd_per_unit, as_of FROM fx_rates ORDER BY currency")
            .and_then(|mut s| {
                s.query_map([], |r| Ok(FxRate { currency: r.get(0)?, usd_per_unit: r.get(1)?, as_of: r.get(2)? }))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(sql_error)
    }

    fn put_fx_rate(&mut self, rate: &FxRate, at: i64) -> StoreResult<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO fx_rates (currency, usd_per_unit, as_of, updated_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (currency) DO UPDATE SET usd_per_unit = excluded.usd_per_unit, as_of = excluded.as_of, \
                 updated_at = excluded.updated_at",
            )
            .and_then(|mut s| s.execute(params![rate.currency, rate.usd_per_unit, rate.as_of, at]))
            .map(|_| ())
            .map_err(sql_error)
    }

    fn append_audit(&mut self, e: &AuditEntry) -> StoreResult<()> {
        // One writer: the row is chained as it is inserted.
        let (pos, prev) = self.audit_head()?;
        let pos = pos + 1;
        let hash = chain::link(&prev, pos, e);
        let entry = to_json(e)?;
        self.conn
            .prepare_cached(
                "INSERT INTO audit_log (seq, chain_seq, prev_hash, hash, at_us, call_id, key_id, label, decision, \
                 idempotency_key, forwarded_idempotency_key, fingerprint, object_id, entry) \
                 VALUES (?1,?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    pos,
                    prev,
                    hash,
                    e.at_us,
                    e.call_id,
                    e.key_id,
                    e.label,
                    e.decision,
                    e.idempotency_key,
                    e.forwarded_idempotency_key,
                    e.fingerprint,
                    e.object_id,
                    entry
                ])
            })
            .map_err(sql_error)?;
        *self.head = Some((pos, hash));
        Ok(())
    }

    fn query_audit(&mut self, q: &AuditQuery) -> StoreResult<Vec<AuditRow>> {
        let (sql, values) = q.to_sql(AUDIT_COLUMNS, Dialect::Sqlite);
        let values = values.into_iter().map(|v| match v {
            SqlValue::Text(t) => rusqlite::types::Value::Text(t),
            SqlValue::Int(i) => rusqlite::types::Value::Integer(i),
        });
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_map(rusqlite::params_from_iter(values), audit_from_row)?.collect::<Result<Vec<_>, _>>()
            })
            .map_err(sql_error)
    }

    fn audit_rows(&mut self, after: i64, limit: usize) -> StoreResult<Vec<AuditRow>> {
        self.conn
            .prepare_cached(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE chain_seq > ?1 ORDER BY chain_seq LIMIT ?2"
            ))
            .and_then(|mut s| s.query_map(params![after, limit as i64], audit_from_row)?.collect::<Result<Vec<_>, _>>())
            .map_err(sql_error)
    }

    fn insert_session(&mut self, id_hash: &[u8; 32], csrf: &str, expires_at: i64) -> StoreResult<()> {
        self.conn
            .prepare_cached("INSERT INTO console_sessions (id_hash, csrf, expires_at) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(params![id_hash.as_slice(), csrf, expires_at]))
            .map(|_| ())
            .map_err(sql_error)
    }

    fn session(&mut self, id_hash: &[u8; 32], now: i64) -> StoreResult<Option<String>> {
        self.conn
            .prepare_cached("SELECT csrf FROM console_sessions WHERE id_hash = ?1 AND expires_at > ?2")
            .and_then(|mut s| s.query_row(params![id_hash.as_slice(), now], |r| r.get(0)).optional())
            .map_err(sql_error)
    }

    fn delete_session(&mut self, id_hash: &[u8; 32]) -> StoreResult<()> {
        self.conn
            .prepare_cached("DELETE FROM console_sessions WHERE id_hash = ?1")
            .and_then(|mut s| s.execute(params![id_hash.as_slice()]))
            .map(|_| ())
            .map_err(sql_error)
    }

    fn purge_sessions(&mut self, now: i64) -> StoreResult<u64> {
        self.conn
            .prepare_cached("DELETE FROM console_sessions WHERE expires_at <= ?1")
            .and_then(|mut s| s.execute(params![now]))
            .map(|n| n as u64)
            .map_err(sql_error)
    }

    fn ping(&mut self) -> StoreResult<()> {
        self.conn.query_row("SELECT 1", [], |_| Ok(())).map_err(sql_error)
    }
}

type ResponseColumns = (Option<u32>, Option<String>, Option<Vec<u8>>);

fn response_columns(r: &IdemRecord) -> StoreResult<ResponseColumns> {
    Ok(match &r.response {
        Some(resp) => (Some(resp.status), Some(to_json(&resp.headers)?), Some(resp.body.clone())),
        None => (None, None, None),
    })
}
