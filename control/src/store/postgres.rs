//! PostgreSQL backend, for many control replicas and gateways sharing one
//! state. Correctness across replicas comes from the database, not from a
//! lock in this process: the cap check is one conditional upsert (a row
//! lock), idempotency records and calls are read `FOR UPDATE` and inserted
//! under unique keys, and the audit chain's head row serialises appends. A
//! transaction that loses a race (unique violation, serialisation failure,
//! deadlock) is rolled back and run again from the start.

use std::time::Duration;

use postgres::error::SqlState;
use postgres::{GenericClient, NoTls, Row};
use r2d2_postgres::PostgresConnectionManager;

use super::{
    hashes_from_text, hashes_to_text, stored_response, stored_variant, AuditQuery, Dialect, KeyQuery, Ledger,
    RevokeSelector, SqlValue, StoreError, StoreResult, BUCKETS, CALL_COLUMNS, CALL_STATES, IDEM_COLUMNS, IDEM_STATES,
    KEY_COLUMNS, KEY_INSERT_COLUMNS,
};
use crate::audit::chain;
use crate::model::{
    AuditEntry, AuditRow, Bucket, CallRow, CallState, DedupMode, FxRate, IdemRecord, IdemState, KeyRecord,
    ObjectAmount, Spend,
};

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

    /// Runs `f` in a transaction, again from the start if it loses a race.
    /// `durable: false` commits without waiting for the WAL flush.
    pub fn write<T, F>(&self, durable: bool, f: F) -> impl std::future::Future<Output = StoreResult<T>> + Send + 'static
    where
        F: Fn(&mut dyn Ledger) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.pool();
        async move {
            let pool = pool?;
            tokio::task::spawn_blocking(move || {
                let mut conn = pool.get().map_err(unavailable)?;
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let mut tx = conn.transaction().map_err(pg)?;
                    if !durable {
                        tx.batch_execute("SET LOCAL synchronous_commit TO OFF").map_err(pg)?;
                    }
                    let result = f(&mut PgLedger { c: &mut tx });
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
            .await
            .map_err(unavailable)?
        }
    }

    pub fn read<T, F>(&self, f: F) -> impl std::future::Future<Output = StoreResult<T>> + Send + 'static
    where
        F: Fn(&mut dyn Ledger) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let pool = self.pool();
        async move {
            let pool = pool?;
            tokio::task::spawn_blocking(move || {
                let mut conn = pool.get().map_err(unavailable)?;
                f(&mut PgLedger { c: &mut *conn })
            })
            .await
            .map_err(unavailable)?
        }
    }
}

struct PgLedger<'c, C: GenericClient> {
    c: &'c mut C,
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

fn key_from_row(row: &Row) -> StoreResult<KeyRecord> {
    let hash: Vec<u8> = row.try_get(1).map_err(pg)?;
    let scopes: String = row.try_get(4).map_err(pg)?;
    let accounts: String = row.try_get(5).map_err(pg)?;
    let vendor: String = row.try_get(3).map_err(pg)?;
    let dedup: String = row.try_get(9).map_err(pg)?;
    Ok(KeyRecord {
        id: row.try_get(0).map_err(pg)?,
        key_hash: hash.try_into().map_err(|_| corrupt("key_hash"))?,
        label: row.try_get(2).map_err(pg)?,
        vendor: keybrake_core::vendor::Vendor::parse(&vendor).ok_or_else(|| corrupt("vendor"))?,
        scopes: serde_json::from_str::<Vec<String>>(&scopes)
            .map_err(|_| corrupt("allowed_endpoints"))?
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .map_err(|_| corrupt("allowed_endpoints"))?,
        allowed_accounts: serde_json::from_str(&accounts).map_err(|_| corrupt("allowed_accounts"))?,
        daily_cap: row.try_get::<_, Option<i64>>(6).map_err(pg)?.map(keybrake_core::money::UsdMicros),
        max_per_call: row.try_get::<_, Option<i64>>(7).map_err(pg)?.map(keybrake_core::money::UsdMicros),
        allow_unpriced: row.try_get(8).map_err(pg)?,
        dedup: DedupMode::parse(&dedup).ok_or_else(|| corrupt("dedup_mode"))?,
        dedup_window_secs: row.try_get(10).map_err(pg)?,
        created_at: row.try_get(11).map_err(pg)?,
        expires_at: row.try_get(12).map_err(pg)?,
        revoked_at: row.try_get(13).map_err(pg)?,
        suspended_at: row.try_get(14).map_err(pg)?,
        suspended_reason: row.try_get(15).map_err(pg)?,
    })
}

fn call_from_row(row: &Row) -> StoreResult<CallRow> {
    let bucket: String = row.try_get(4).map_err(pg)?;
    let state: String = row.try_get(5).map_err(pg)?;
    let context: String = row.try_get(9).map_err(pg)?;
    Ok(CallRow {
        call_id: row.try_get(0).map_err(pg)?,
        key_id: row.try_get(1).map_err(pg)?,
        day: row.try_get(2).map_err(pg)?,
        amount_micros: row.try_get(3).map_err(pg)?,
        bucket: stored_variant(&bucket, &BUCKETS, Bucket::as_str, "calls.bucket")?,
        state: stored_variant(&state, &CALL_STATES, CallState::as_str, "calls.state")?,
        unpriced: row.try_get(6).map_err(pg)?,
        created_at: row.try_get(7).map_err(pg)?,
        lease_expires_at: row.try_get(8).map_err(pg)?,
        context: serde_json::from_str(&context).map_err(|_| corrupt("calls.context"))?,
    })
}

fn idem_from_row(row: &Row) -> StoreResult<IdemRecord> {
    let state: String = row.try_get(4).map_err(pg)?;
    let status: Option<i32> = row.try_get(10).map_err(pg)?;
    let headers: Option<String> = row.try_get(11).map_err(pg)?;
    let body: Option<Vec<u8>> = row.try_get(12).map_err(pg)?;
    Ok(IdemRecord {
        account: row.try_get(0).map_err(pg)?,
        op_key: row.try_get(1).map_err(pg)?,
        fingerprint: row.try_get(2).map_err(pg)?,
        endpoint: row.try_get(3).map_err(pg)?,
        state: stored_variant(&state, &IDEM_STATES, IdemState::as_str, "idempotency.state")?,
        call_id: row.try_get(5).map_err(pg)?,
        forwarded_key: row.try_get(6).map_err(pg)?,
        created_at: row.try_get(7).map_err(pg)?,
        expires_at: row.try_get(8).map_err(pg)?,
        lease_expires_at: row.try_get(9).map_err(pg)?,
        response: stored_response(status.map(i64::from), headers, body)?,
    })
}

const AUDIT_COLUMNS: &str = "seq, chain_seq, prev_hash, hash, entry";

fn audit_from_row(row: &Row) -> StoreResult<AuditRow> {
    let entry: String = row.try_get(4).map_err(pg)?;
    Ok(AuditRow {
        seq: row.try_get(0).map_err(pg)?,
        chain_seq: row.try_get(1).map_err(pg)?,
        prev_hash: row.try_get::<_, Option<String>>(2).map_err(pg)?.unwrap_or_default(),
        hash: row.try_get::<_, Option<String>>(3).map_err(pg)?.unwrap_or_default(),
        entry: serde_json::from_str::<AuditEntry>(&entry).map_err(|_| corrupt("audit_log.entry"))?,
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

type ResponseColumns = (Option<i32>, Option<String>, Option<Vec<u8>>);

fn response_columns(r: &IdemRecord) -> StoreResult<ResponseColumns> {
    Ok(match &r.response {
        Some(resp) => (i32::try_from(resp.status).ok(), Some(to_json(&resp.headers)?), Some(resp.body.clone())),
        None => (None, None, None),
    })
}

impl<C: GenericClient> PgLedger<'_, C> {
    /// Insert and update write the same thirteen columns, in `IDEM_COLUMNS` order.
    fn write_idempotency(&mut self, sql: &str, r: &IdemRecord) -> StoreResult<()> {
        let (status, headers, body) = response_columns(r)?;
        self.c
            .execute(
                sql,
                &[
                    &r.account,
                    &r.op_key,
                    &r.fingerprint,
                    &r.endpoint,
                    &r.state.as_str(),
                    &r.call_id,
                    &r.forwarded_key,
                    &r.created_at,
                    &r.expires_at,
                    &r.lease_expires_at,
                    &status,
                    &headers,
                    &body,
                ],
            )
            .map(|_| ())
            .map_err(pg)
    }
}

impl<C: GenericClient> Ledger for PgLedger<'_, C> {
    fn insert_key(&mut self, key: &KeyRecord) -> StoreResult<()> {
        let scopes: Vec<String> = key.scopes.iter().map(ToString::to_string).collect();
        self.c
            .execute(
                &format!(
                    "INSERT INTO vault_keys ({KEY_INSERT_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)"
                ),
                &[
                    &key.id,
                    &key.key_hash.as_slice(),
                    &key.label,
                    &key.vendor.as_str(),
                    &to_json(&scopes)?,
                    &to_json(&key.allowed_accounts)?,
                    &key.daily_cap.map(|c| c.0),
                    &key.max_per_call.map(|c| c.0),
                    &key.allow_unpriced,
                    &key.dedup.as_str(),
                    &key.dedup_window_secs,
                    &key.created_at,
                    &key.expires_at,
                    &key.revoked_at,
                ],
            )
            .map(|_| ())
            .map_err(pg)
    }

    fn key_by_hash(&mut self, hash: &[u8; 32]) -> StoreResult<Option<KeyRecord>> {
        let row = self
            .c
            .query_opt(&format!("SELECT {KEY_COLUMNS} FROM vault_keys WHERE key_hash = $1"), &[&hash.as_slice()])
            .map_err(pg)?;
        row.as_ref().map(key_from_row).transpose()
    }

    fn key_by_id(&mut self, id: &str) -> StoreResult<Option<KeyRecord>> {
        let row =
            self.c.query_opt(&format!("SELECT {KEY_COLUMNS} FROM vault_keys WHERE id = $1"), &[&id]).map_err(pg)?;
        row.as_ref().map(key_from_row).transpose()
    }

    fn list_keys(&mut self, query: &KeyQuery) -> StoreResult<Vec<KeyRecord>> {
        let prefix = query.label_prefix.clone().unwrap_or_default();
        let after = query.after_id.clone().unwrap_or_default();
        let rows = self
            .c
            .query(
                &format!("SELECT {KEY_COLUMNS} FROM vault_keys WHERE starts_with(label, $1) AND id > $2 ORDER BY id LIMIT $3"),
                &[&prefix, &after, &(query.limit as i64)],
            )
            .map_err(pg)?;
        rows.iter().map(key_from_row).collect()
    }

    fn revoke_keys(&mut self, selector: &RevokeSelector, at: i64) -> StoreResult<Vec<(String, [u8; 32])>> {
        let (sql, arg) = match selector {
            RevokeSelector::Id(id) => (
                "UPDATE vault_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL RETURNING id, key_hash",
                id,
            ),
            RevokeSelector::LabelPrefix(p) => (
                "UPDATE vault_keys SET revoked_at = $2 WHERE starts_with(label, $1) AND revoked_at IS NULL \
                 RETURNING id, key_hash",
                p,
            ),
        };
        let rows = self.c.query(sql, &[arg, &at]).map_err(pg)?;
        rows.iter()
            .map(|r| {
                let hash: Vec<u8> = r.try_get(1).map_err(pg)?;
                Ok((r.try_get(0).map_err(pg)?, hash.try_into().map_err(|_| corrupt("key_hash"))?))
            })
            .collect()
    }

    fn suspend_key(&mut self, key_id: &str, at: i64, reason: &str) -> StoreResult<Option<[u8; 32]>> {
        let row = self
            .c
            .query_opt(
                "UPDATE vault_keys SET suspended_at = $2, suspended_reason = $3 \
                 WHERE id = $1 AND suspended_at IS NULL AND revoked_at IS NULL RETURNING key_hash",
                &[&key_id, &at, &reason],
            )
            .map_err(pg)?;
        row.map(|r| r.try_get::<_, Vec<u8>>(0).map_err(pg)?.try_into().map_err(|_| corrupt("key_hash"))).transpose()
    }

    fn reinstate_key(&mut self, key_id: &str) -> StoreResult<Option<[u8; 32]>> {
        let row = self
            .c
            .query_opt(
                "UPDATE vault_keys SET suspended_at = NULL, suspended_reason = '' \
                 WHERE id = $1 AND suspended_at IS NOT NULL RETURNING key_hash",
                &[&key_id],
            )
            .map_err(pg)?;
        row.map(|r| r.try_get::<_, Vec<u8>>(0).map_err(pg)?.try_into().map_err(|_| corrupt("key_hash"))).transpose()
    }

    fn record_revocation(&mut self, hashes: &[[u8; 32]], at: i64) -> StoreResult<i64> {
        let row = self
            .c
            .query_one(
                "INSERT INTO revocations (key_hashes, at) VALUES ($1, $2) RETURNING generation",
                &[&hashes_to_text(hashes), &at],
            )
            .map_err(pg)?;
        row.try_get(0).map_err(pg)
    }

    fn latest_revocation(&mut self) -> StoreResult<i64> {
        let row = self.c.query_one("SELECT COALESCE(MAX(generation), 0) FROM revocations", &[]).map_err(pg)?;
        row.try_get(0).map_err(pg)
    }

    fn revocations_after(&mut self, generation: i64, limit: usize) -> StoreResult<Vec<(i64, Vec<[u8; 32]>)>> {
        let rows = self
            .c
            .query(
                "SELECT generation, key_hashes FROM revocations WHERE generation > $1 ORDER BY generation LIMIT $2",
                &[&generation, &(limit as i64)],
            )
            .map_err(pg)?;
        rows.iter()
            .map(|r| {
                let text: String = r.try_get(1).map_err(pg)?;
                Ok((r.try_get(0).map_err(pg)?, hashes_from_text(&text)?))
            })
            .collect()
    }

    fn heartbeat(&mut self, replica: &str, acked: i64, now_ms: i64) -> StoreResult<()> {
        self.c
            .execute(
                "INSERT INTO replicas (replica_id, acked_generation, heartbeat_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (replica_id) DO UPDATE SET acked_generation = excluded.acked_generation, \
                 heartbeat_at = excluded.heartbeat_at",
                &[&replica, &acked, &now_ms],
            )
            .map(|_| ())
            .map_err(pg)
    }

    fn live_replicas(&mut self, since_ms: i64) -> StoreResult<Vec<(String, i64)>> {
        let rows = self
            .c
            .query("SELECT replica_id, acked_generation FROM replicas WHERE heartbeat_at >= $1", &[&since_ms])
            .map_err(pg)?;
        rows.iter().map(|r| Ok((r.try_get(0).map_err(pg)?, r.try_get(1).map_err(pg)?))).collect()
    }

    fn spend(&mut self, key_id: &str, day: i64) -> StoreResult<Spend> {
        let row = self
            .c
            .query_opt(
                "SELECT committed_micros, reserved_micros, uncertain_micros FROM daily_spend WHERE key_id = $1 AND day = $2",
                &[&key_id, &day],
            )
            .map_err(pg)?;
        match row {
            Some(r) => Ok(Spend {
                committed: r.try_get(0).map_err(pg)?,
                reserved: r.try_get(1).map_err(pg)?,
                uncertain: r.try_get(2).map_err(pg)?,
            }),
            None => Ok(Spend::default()),
        }
    }

    fn spend_by_key(&mut self, day: i64) -> StoreResult<Vec<(String, Spend)>> {
        let rows = self
            .c
            .query(
                "SELECT key_id, committed_micros, reserved_micros, uncertain_micros FROM daily_spend WHERE day = $1",
                &[&day],
            )
            .map_err(pg)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0).map_err(pg)?,
                    Spend {
                        committed: r.try_get(1).map_err(pg)?,
                        reserved: r.try_get(2).map_err(pg)?,
                        uncertain: r.try_get(3).map_err(pg)?,
                    },
                ))
            })
            .collect()
    }

    fn reserve(&mut self, key_id: &str, day: i64, amount: i64, cap: Option<i64>) -> StoreResult<bool> {
        // One statement under the row's lock: concurrent replicas queue on it,
        // and each sees the spend the previous one committed.
        let changed = self
            .c
            .execute(
                "INSERT INTO daily_spend (key_id, day, reserved_micros) SELECT $1, $2, $3 WHERE $4::bigint IS NULL OR $3 <= $4::bigint \
                 ON CONFLICT (key_id, day) DO UPDATE SET reserved_micros = daily_spend.reserved_micros + excluded.reserved_micros \
                 WHERE $4::bigint IS NULL OR daily_spend.committed_micros + daily_spend.reserved_micros \
                 + daily_spend.uncertain_micros + excluded.reserved_micros <= $4::bigint",
                &[&key_id, &day, &amount, &cap],
            )
            .map_err(pg)?;
        Ok(changed == 1)
    }

    fn move_spend(&mut self, key_id: &str, day: i64, amount: i64, from: Bucket, to: Option<Bucket>) -> StoreResult<()> {
        let sql = match to {
            Some(to) => format!(
                "UPDATE daily_spend SET {f} = {f} - $3, {t} = {t} + $3 WHERE key_id = $1 AND day = $2",
                f = from.column(),
                t = to.column()
            ),
            None => format!("UPDATE daily_spend SET {f} = {f} - $3 WHERE key_id = $1 AND day = $2", f = from.column()),
        };
        self.c.execute(&sql, &[&key_id, &day, &amount]).map(|_| ()).map_err(pg)
    }

    fn insert_call(&mut self, call: &CallRow) -> StoreResult<()> {
        self.c
            .execute(
                &format!("INSERT INTO calls ({CALL_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)"),
                &[
                    &call.call_id,
                    &call.key_id,
                    &call.day,
                    &call.amount_micros,
                    &call.bucket.as_str(),
                    &call.state.as_str(),
                    &call.unpriced,
                    &call.created_at,
                    &call.lease_expires_at,
                    &to_json(&call.context)?,
                ],
            )
            .map(|_| ())
            .map_err(pg)
    }

    fn call(&mut self, call_id: &str) -> StoreResult<Option<CallRow>> {
        // Locked: two settlements of one call (a retried one, an orphaned one) run one after the other.
        let row = self
            .c
            .query_opt(&format!("SELECT {CALL_COLUMNS} FROM calls WHERE call_id = $1 FOR UPDATE"), &[&call_id])
            .map_err(pg)?;
        row.as_ref().map(call_from_row).transpose()
    }

    fn set_call_state(&mut self, call_id: &str, state: CallState, bucket: Bucket, at: i64) -> StoreResult<()> {
        self.c
            .execute(
                "UPDATE calls SET state = $2, bucket = $3, settled_at = $4 WHERE call_id = $1",
                &[&call_id, &state.as_str(), &bucket.as_str(), &at],
            )
            .map(|_| ())
            .map_err(pg)
    }

    fn expired_pending_calls(&mut self, now: i64, limit: usize) -> StoreResult<Vec<CallRow>> {
        let rows = self
            .c
            .query(
                &format!(
                    "SELECT {CALL_COLUMNS} FROM calls WHERE state = 'pending' AND lease_expires_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED"
                ),
                &[&now, &(limit as i64)],
            )
            .map_err(pg)?;
        rows.iter().map(call_from_row).collect()
    }

    fn idempotency(&mut self, account: &str, op_key: &str) -> StoreResult<Option<IdemRecord>> {
        // Replicas deciding on the same operation take turns: the operation's
        // key is locked until the transaction ends, whether or not its record
        // exists yet (`FOR UPDATE` alone locks no absent row, and two first
        // calls would both see "none" and both go out). A hash collision only
        // makes two operations take turns.
        self.c
            .execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2 || '|' || $3))",
                &[&OPERATION_LOCKS, &account, &op_key],
            )
            .map_err(pg)?;
        let row = self
            .c
            .query_opt(
                &format!("SELECT {IDEM_COLUMNS} FROM idempotency WHERE account = $1 AND op_key = $2 FOR UPDATE"),
                &[&account, &op_key],
            )
            .map_err(pg)?;
        row.as_ref().map(idem_from_row).transpose()
    }

    fn insert_idempotency(&mut self, r: &IdemRecord) -> StoreResult<()> {
        self.write_idempotency(
            &format!("INSERT INTO idempotency ({IDEM_COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)"),
            r,
        )
    }

    fn update_idempotency(&mut self, r: &IdemRecord) -> StoreResult<()> {
        self.write_idempotency(
            "UPDATE idempotency SET fingerprint = $3, endpoint = $4, state = $5, call_id = $6, forwarded_key = $7, \
             created_at = $8, expires_at = $9, lease_expires_at = $10, status = $11, headers = $12, body = $13 \
             WHERE account = $1 AND op_key = $2",
            r,
        )
    }

    fn delete_idempotency(&mut self, account: &str, op_key: &str) -> StoreResult<()> {
        self.c
            .execute("DELETE FROM idempotency WHERE account = $1 AND op_key = $2", &[&account, &op_key])
            .map(|_| ())
            .map_err(pg)
    }

    fn idempotency_for_call(&mut self, call_id: &str) -> StoreResult<Vec<IdemRecord>> {
        let rows = self
            .c
            .query(&format!("SELECT {IDEM_COLUMNS} FROM idempotency WHERE call_id = $1 FOR UPDATE"), &[&call_id])
            .map_err(pg)?;
        rows.iter().map(idem_from_row).collect()
    }

    fn purge_idempotency(&mut self, now: i64) -> StoreResult<u64> {
        self.c.execute("DELETE FROM idempotency WHERE expires_at < $1 AND state = 'done'", &[&now]).map_err(pg)
    }

    fn object(&mut self, object_id: &str) -> StoreResult<Option<ObjectAmount>> {
        let row = self
            .c
            .query_opt(
                "SELECT object_id, currency, amount_minor, seen_at FROM objects WHERE object_id = $1",
                &[&object_id],
            )
            .map_err(pg)?;
        row.map(|r| {
            Ok(ObjectAmount {
                object_id: r.try_get(0).map_err(pg)?,
                currency: r.try_get(1).map_err(pg)?,
                amount_minor: r.try_get(2).map_err(pg)?,
                seen_at: r.try_get(3).map_err(pg)?,
            })
        })
        .transpose()
    }

    fn put_object(&mut self, o: &ObjectAmount) -> StoreResult<()> {
        self.c
            .execute(
                "INSERT INTO objects (object_id, currency, amount_minor, seen_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (object_id) DO UPDATE SET currency = excluded.currency, amount_minor = excluded.amount_minor, \
                 seen_at = excluded.seen_at",
                &[&o.object_id, &o.currency, &o.amount_minor, &o.seen_at],
            )
            .map(|_| ())
            .map_err(pg)
    }

    fn fx_rates(&mut self) -> StoreResult<Vec<FxRate>> {
        let rows =
            self.c.query("SELECT currency, usd_per_unit, as_of FROM fx_rates ORDER BY currency", &[]).map_err(pg)?;
        rows.iter()
            .map(|r| {
                Ok(FxRate {
                    currency: r.try_get(0).map_err(pg)?,
                    usd_per_unit: r.try_get(1).map_err(pg)?,
                    as_of: r.try_get(2).map_err(pg)?,
                })
            })
            .collect()
    }

    fn put_fx_rate(&mut self, rate: &FxRate, at: i64) -> StoreResult<()> {
        self.c
            .execute(
                "INSERT INTO fx_rates (currency, usd_per_unit, as_of, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (currency) DO UPDATE SET usd_per_unit = excluded.usd_per_unit, as_of = excluded.as_of, \
                 updated_at = excluded.updated_at",
                &[&rate.currency, &rate.usd_per_unit, &rate.as_of, &at],
            )
            .map(|_| ())
            .map_err(pg)
    }

    fn append_audit(&mut self, e: &AuditEntry) -> StoreResult<()> {
        // Unchained: no lock shared by every transaction; `chain_audit` links it shortly.
        self.c
            .execute(
                "INSERT INTO audit_log (at_us, call_id, key_id, label, decision, idempotency_key, \
                 forwarded_idempotency_key, fingerprint, object_id, entry) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
                &[
                    &e.at_us,
                    &e.call_id,
                    &e.key_id,
                    &e.label,
                    &e.decision,
                    &e.idempotency_key,
                    &e.forwarded_idempotency_key,
                    &e.fingerprint,
                    &e.object_id,
                    &to_json(e)?,
                ],
            )
            .map(|_| ())
            .map_err(pg)
    }

    fn chain_audit(&mut self, limit: usize) -> StoreResult<usize> {
        // One chainer at a time across replicas; the others skip this round.
        let row = self.c.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&CHAIN_LOCK]).map_err(pg)?;
        if !row.try_get::<_, bool>(0).map_err(pg)? {
            return Ok(0);
        }
        let head = self.c.query_one("SELECT seq, hash FROM audit_head FOR UPDATE", &[]).map_err(pg)?;
        let (mut pos, mut prev): (i64, String) = (head.try_get(0).map_err(pg)?, head.try_get(1).map_err(pg)?);
        let rows = self
            .c
            .query("SELECT seq, entry FROM audit_log WHERE chain_seq IS NULL ORDER BY seq LIMIT $1", &[&(limit as i64)])
            .map_err(pg)?;
        for row in &rows {
            let seq: i64 = row.try_get(0).map_err(pg)?;
            let text: String = row.try_get(1).map_err(pg)?;
            let entry: AuditEntry = serde_json::from_str(&text).map_err(|_| corrupt("audit_log.entry"))?;
            pos += 1;
            let hash = chain::link(&prev, pos, &entry);
            self.c
                .execute(
                    "UPDATE audit_log SET chain_seq = $1, prev_hash = $2, hash = $3 WHERE seq = $4",
                    &[&pos, &prev, &hash, &seq],
                )
                .map_err(pg)?;
            prev = hash;
        }
        if !rows.is_empty() {
            self.c.execute("UPDATE audit_head SET seq = $1, hash = $2", &[&pos, &prev]).map_err(pg)?;
        }
        Ok(rows.len())
    }

    fn unchained_audit_rows(&mut self) -> StoreResult<i64> {
        let row = self.c.query_one("SELECT COUNT(*) FROM audit_log WHERE chain_seq IS NULL", &[]).map_err(pg)?;
        row.try_get(0).map_err(pg)
    }

    fn query_audit(&mut self, q: &AuditQuery) -> StoreResult<Vec<AuditRow>> {
        let (sql, values) = q.to_sql(AUDIT_COLUMNS, Dialect::Postgres);
        let values: Vec<Box<dyn postgres::types::ToSql + Sync>> = values
            .into_iter()
            .map(|v| -> Box<dyn postgres::types::ToSql + Sync> {
                match v {
                    SqlValue::Text(t) => Box::new(t),
                    SqlValue::Int(i) => Box::new(i),
                }
            })
            .collect();
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = values.iter().map(|v| v.as_ref()).collect();
        let rows = self.c.query(&sql, &refs).map_err(pg)?;
        rows.iter().map(audit_from_row).collect()
    }

    fn audit_rows(&mut self, after: i64, limit: usize) -> StoreResult<Vec<AuditRow>> {
        let rows = self
            .c
            .query(
                &format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE chain_seq > $1 ORDER BY chain_seq LIMIT $2"),
                &[&after, &(limit as i64)],
            )
            .map_err(pg)?;
        rows.iter().map(audit_from_row).collect()
    }

    fn insert_session(&mut self, id_hash: &[u8; 32], csrf: &str, expires_at: i64) -> StoreResult<()> {
        self.c
            .execute(
                "INSERT INTO console_sessions (id_hash, csrf, expires_at) VALUES ($1, $2, $3)",
                &[&id_hash.as_slice(), &csrf, &expires_at],
            )
            .map(|_| ())
            .map_err(pg)
    }

    fn session(&mut self, id_hash: &[u8; 32], now: i64) -> StoreResult<Option<String>> {
        let row = self
            .c
            .query_opt(
                "SELECT csrf FROM console_sessions WHERE id_hash = $1 AND expires_at > $2",
                &[&id_hash.as_slice(), &now],
            )
            .map_err(pg)?;
        row.map(|r| r.try_get(0).map_err(pg)).transpose()
    }

    fn delete_session(&mut self, id_hash: &[u8; 32]) -> StoreResult<()> {
        self.c
            .execute("DELETE FROM console_sessions WHERE id_hash = $1", &[&id_hash.as_slice()])
            .map(|_| ())
            .map_err(pg)
    }

    fn purge_sessions(&mut self, now: i64) -> StoreResult<u64> {
        self.c.execute("DELETE FROM console_sessions WHERE expires_at <= $1", &[&now]).map_err(pg)
    }

    fn ping(&mut self) -> StoreResult<()> {
        self.c.query_one("SELECT 1", &[]).map(|_| ()).map_err(pg)
    }
}
