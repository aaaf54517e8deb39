//! PostgreSQL backend, for many control replicas and gateways sharing one
//! state. Correctness across replicas comes from the database, not from a
//! lock in this process: the cap check is one conditional upsert (a row
//! lock), idempotency records and calls are read `FOR UPDATE` and inserted
//! under unique keys, and the audit chain's head row serialises appends. A
//! transaction that loses a race (unique violation, serialisation failure,
//! deadlock) is rolled back and run again from the start.

use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, GenericClient, NoTls, Row};
use r2d2_postgres::PostgresConnectionManager;

use super::ledger::{audit_entry_args, columns, SqlLedger};
use super::sql::{args, corrupt, from_json, to_json, Arg, Column, Conn, Dialect, EachRow, Value};
use super::{Ledger, LedgerRead, StoreError, StoreResult};
use crate::audit::chain;
use crate::model::AuditEntry;

mod migrations {
    refinery::embed_migrations!("migrations/postgres");
}

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// How often a transaction that lost a race is run again.
const MAX_ATTEMPTS: u32 = 20;
/// Serialises schema migrations of replicas starting together.
const MIGRATION_LOCK: i64 = 0x6b65_7962_7261_6b65;
/// Makes one replica at a time the audit chainer.
const CHAIN_LOCK: i64 = 0x6b65_7962_6368_6169;
/// The class of the per-operation advisory locks (the two-key form, whose key
/// space does not overlap the single-key locks above).
const OPERATION_LOCKS: i32 = 0x6b62_6f70;

#[derive(Clone)]
pub struct PgStore {
    /// Always `Some` until dropped.
    pool: Option<Pool>,
}

impl Drop for PgStore {
    /// A `postgres::Client` blocks on its own runtime when it closes, which
    /// panics on an async thread: the pool is let go on a plain thread.
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            let _ = std::thread::Builder::new().name("keybrake-pg-close".into()).spawn(move || drop(pool));
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn pg(e: postgres::Error) -> StoreError {
    match e.code() {
        Some(c)
            if *c == SqlState::UNIQUE_VIOLATION
                || *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            StoreError::Conflict(e.to_string())
        }
        _ => StoreError::Unavailable(e.to_string()),
    }
}

impl PgStore {
    /// Connects (e.g. `postgres://user@host:5432/keybrake`) and applies migrations.
    pub fn open(url: &str) -> StoreResult<PgStore> {
        let config: postgres::Config = url.parse().map_err(|e| unavailable(format!("database url: {e}")))?;
        let manager = PostgresConnectionManager::new(config, NoTls);
        let pool = r2d2::Pool::builder()
            .max_size(16)
            .connection_timeout(Duration::from_secs(5))
            .build(manager)
            .map_err(unavailable)?;
        let mut client = pool.get().map_err(unavailable)?;
        client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).map_err(pg)?;
        let migrated = migrations::migrations::runner().run(&mut *client);
        client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).map_err(pg)?;
        migrated.map_err(|e| unavailable(format!("migrations: {e}")))?;
        Ok(PgStore { pool: Some(pool) })
    }

    fn pool(&self) -> StoreResult<Pool> {
        self.pool.clone().ok_or_else(|| StoreError::Unavailable("the PostgreSQL store is closed".into()))
    }

    /// Runs `f` on a pooled connection, on a thread that may block.
    fn on_connection<T, F>(&self, f: F) -> impl std::future::Future<Output = StoreResult<T>> + Send + 'static
    where
        F: FnOnce(&mut Client) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.pool();
        async move {
            let pool = pool?;
            tokio::task::spawn_blocking(move || f(&mut *pool.get().map_err(unavailable)?)).await.map_err(unavailable)?
        }
    }

    /// Runs `f` in a transaction, again from the start if it loses a race.
    /// `durable: false` commits without waiting for the WAL flush.
    pub fn write<T, F>(&self, durable: bool, f: F) -> impl std::future::Future<Output = StoreResult<T>> + Send + 'static
    where
        F: Fn(&mut dyn Ledger) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        self.on_connection(move |conn| {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let mut tx = conn.transaction().map_err(pg)?;
                if !durable {
                    tx.batch_execute("SET LOCAL synchronous_commit TO OFF").map_err(pg)?;
                }
                let result = f(&mut SqlLedger(PgConn { c: &mut tx }));
                let outcome = match result {
                    Ok(v) => tx.commit().map(|()| v).map_err(pg),
                    Err(e) => Err(e), // dropping `tx` rolls it back
                };
                match outcome {
                    Err(StoreError::Conflict(_)) if attempt < MAX_ATTEMPTS => {
                        std::thread::sleep(Duration::from_millis(u64::from(attempt)));
                    }
                    other => return other,
                }
            }
        })
    }

    pub fn read<T, F>(&self, f: F) -> impl std::future::Future<Output = StoreResult<T>> + Send + 'static
    where
        F: Fn(&mut dyn LedgerRead) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        self.on_connection(move |conn| f(&mut SqlLedger(PgConn { c: conn })))
    }
}

struct PgConn<'c, C: GenericClient> {
    c: &'c mut C,
}

fn pg_args<'a>(args: &'a [Arg<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    args.iter()
        .map(|arg| -> &(dyn ToSql + Sync) {
            match arg {
                Arg::Int(v) => v,
                Arg::Int4(v) => v,
                Arg::Bool(v) => v,
                Arg::Text(v) => v,
                Arg::Blob(v) => v,
            }
        })
        .collect()
}

impl Column for Row {
    fn value(&self, i: usize) -> StoreResult<Value> {
        let decode = |e: postgres::Error| StoreError::Corrupt(e.to_string());
        let kind = self.columns().get(i).map(|c| c.type_().name()).unwrap_or_default();
        let value = match kind {
            "int8" => self.try_get::<_, Option<i64>>(i).map(|v| v.map(Value::Int)),
            "int4" => self.try_get::<_, Option<i32>>(i).map(|v| v.map(|v| Value::Int(v.into()))),
            "bool" => self.try_get::<_, Option<bool>>(i).map(|v| v.map(|v| Value::Int(v.into()))),
            "bytea" => self.try_get::<_, Option<Vec<u8>>>(i).map(|v| v.map(Value::Blob)),
            _ => self.try_get::<_, Option<String>>(i).map(|v| v.map(Value::Text)),
        };
        Ok(value.map_err(decode)?.unwrap_or(Value::Null))
    }
}

impl<C: GenericClient> Conn for PgConn<'_, C> {
    const DIALECT: Dialect = Dialect::Postgres;

    fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64> {
        self.c.execute(sql, &pg_args(args)).map_err(pg)
    }

    fn query(&mut self, sql: &str, args: &[Arg<'_>], each: EachRow<'_>) -> StoreResult<()> {
        for row in self.c.query(sql, &pg_args(args)).map_err(pg)? {
            each(&row)?;
        }
        Ok(())
    }

    fn lock_operation(&mut self, account: &str, op_key: &str) -> StoreResult<()> {
        // Replicas deciding on the same operation take turns: the operation's
        // key is locked until the transaction ends, whether or not its record
        // exists yet (`FOR UPDATE` alone locks no absent row, and two first
        // calls would both see "none" and both go out). A hash collision only
        // makes two operations take turns.
        let lock = "SELECT pg_advisory_xact_lock(?1, hashtext(?2 || '|' || ?3))";
        self.run(lock, args![Arg::Int4(Some(OPERATION_LOCKS)), account, op_key]).map(|_| ())
    }

    fn append_audit(&mut self, e: &AuditEntry) -> StoreResult<()> {
        // Unchained: no lock shared by every transaction; `chain_audit` links it shortly.
        let entry = to_json(e)?;
        let insert =
            concat!("INSERT INTO audit_log (", columns!(audit_entry), ") VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)");
        self.run(insert, &audit_entry_args(e, &entry)).map(|_| ())
    }

    fn chain_audit(&mut self, limit: usize) -> StoreResult<usize> {
        // One chainer at a time across replicas; the others skip this round.
        if self.first("SELECT pg_try_advisory_xact_lock(?1)", args![CHAIN_LOCK], |r| r.get(0))? != Some(true) {
            return Ok(0);
        }
        let head = self.first("SELECT seq, hash FROM audit_head FOR UPDATE", &[], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let (mut pos, mut prev): (i64, String) = head.ok_or_else(|| corrupt("audit_head"))?;
        let unchained = "SELECT seq, entry FROM audit_log WHERE chain_seq IS NULL ORDER BY seq LIMIT ?1";
        let rows = self.all(unchained, args![limit as i64], |r| Ok((r.get::<i64>(0)?, r.get::<String>(1)?)))?;
        for (seq, text) in &rows {
            let entry: AuditEntry = from_json(text, "audit_log.entry")?;
            pos += 1;
            let hash = chain::link(&prev, pos, &entry);
            let link = "UPDATE audit_log SET chain_seq = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4";
            self.run(link, args![pos, &prev, &hash, *seq])?;
            prev = hash;
        }
        if !rows.is_empty() {
            self.run("UPDATE audit_head SET seq = ?1, hash = ?2", args![pos, &prev])?;
        }
        Ok(rows.len())
    }

    fn unchained_audit_rows(&mut self) -> StoreResult<i64> {
        let count = self.first("SELECT COUNT(*) FROM audit_log WHERE chain_seq IS NULL", &[], |r| r.get(0))?;
        Ok(count.unwrap_or_default())
    }
}
