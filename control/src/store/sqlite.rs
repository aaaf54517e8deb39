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

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{params_from_iter, Connection, OpenFlags, Row, ToSql};
use tokio::sync::oneshot;

use super::ledger::{audit_entry_args, columns, SqlLedger};
use super::sql::{corrupt, to_json, Arg, Column, Conn, Dialect, EachRow, Value};
use super::{Ledger, LedgerRead, StoreError, StoreResult};
use crate::audit::chain::{self, GENESIS};
use crate::model::AuditEntry;

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
    /// Dropped with the last clone of the store: the checkpoint thread then
    /// ends and closes its connection (a process that opens many stores, like
    /// the tests and the simulator, would otherwise keep a thread and a file
    /// per store).
    _checkpoints: Arc<mpsc::Sender<()>>,
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
        let (open, closed) = mpsc::channel::<()>();
        thread::Builder::new()
            .name("keybrake-sqlite-checkpoint".into())
            .spawn(move || run_checkpoints(checkpointer, closed))
            .map_err(unavailable)?;
        Ok(SqliteStore {
            writer: tx,
            readers: Arc::new(ReaderPool { path: path.to_owned(), idle: Mutex::new(Vec::new()) }),
            _checkpoints: Arc::new(open),
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
        F: Fn(&mut dyn LedgerRead) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let readers = self.readers.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let conn = readers.take()?;
                let result = f(&mut SqlLedger(SqliteConn { conn: &conn, head: &mut None }));
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
/// PASSIVE never waits for the writer or the readers. Ends when the store is
/// dropped (`closed` disconnects).
fn run_checkpoints(conn: Connection, closed: mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = closed.recv_timeout(std::time::Duration::from_millis(500)) {
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
            let ok = job.run(&mut SqlLedger(SqliteConn { conn, head }));
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

struct SqliteConn<'c> {
    conn: &'c Connection,
    /// The writer's cached audit head (readers pass their own empty one).
    head: &'c mut Option<(i64, String)>,
}

impl ToSql for Arg<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Arg::Int(v) => v.to_sql(),
            Arg::Int4(v) => v.to_sql(),
            Arg::Bool(v) => v.to_sql(),
            Arg::Text(v) => v.to_sql(),
            Arg::Blob(v) => v.to_sql(),
        }
    }
}

impl Column for Row<'_> {
    fn value(&self, i: usize) -> StoreResult<Value> {
        Ok(match self.get_ref(i).map_err(sql_error)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(v) => Value::Int(v),
            ValueRef::Text(t) => Value::Text(String::from_utf8(t.to_vec()).map_err(|_| corrupt("text"))?),
            ValueRef::Blob(b) => Value::Blob(b.to_vec()),
            ValueRef::Real(_) => return Err(corrupt("a real number")),
        })
    }
}

impl SqliteConn<'_> {
    /// The last chained row as (position, hash), from the writer's cache when it has one.
    fn audit_head(&mut self) -> StoreResult<(i64, String)> {
        if let Some(head) = self.head.as_ref() {
            return Ok(head.clone());
        }
        let head = self
            .first("SELECT chain_seq, hash FROM audit_log ORDER BY chain_seq DESC LIMIT 1", &[], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .unwrap_or((0, GENESIS.to_owned()));
        *self.head = Some(head.clone());
        Ok(head)
    }
}

impl Conn for SqliteConn<'_> {
    const DIALECT: Dialect = Dialect::Sqlite;

    fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64> {
        let mut statement = self.conn.prepare_cached(sql).map_err(sql_error)?;
        statement.execute(params_from_iter(args)).map(|n| n as u64).map_err(sql_error)
    }

    fn query(&mut self, sql: &str, args: &[Arg<'_>], each: EachRow<'_>) -> StoreResult<()> {
        let mut statement = self.conn.prepare_cached(sql).map_err(sql_error)?;
        let mut rows = statement.query(params_from_iter(args)).map_err(sql_error)?;
        while let Some(row) = rows.next().map_err(sql_error)? {
            each(row)?;
        }
        Ok(())
    }

    fn append_audit(&mut self, e: &AuditEntry) -> StoreResult<()> {
        // One writer: the row is chained as it is inserted.
        let (pos, prev) = self.audit_head()?;
        let pos = pos + 1;
        let hash = chain::link(&prev, pos, e);
        let entry = to_json(e)?;
        let mut args = vec![Arg::from(pos), Arg::from(&prev), Arg::from(&hash)];
        args.extend(audit_entry_args(e, &entry));
        let insert = concat!(
            "INSERT INTO audit_log (seq, chain_seq, prev_hash, hash, ",
            columns!(audit_entry),
            ") VALUES (?1,?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)"
        );
        self.run(insert, &args)?;
        *self.head = Some((pos, hash));
        Ok(())
    }
}
