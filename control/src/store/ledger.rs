//! The statements, one SQL text each, their decoders, one per row type, and
//! the [`Ledger`] operations, written once over a backend's [`Conn`]. A
//! backend keeps only what truly differs: how it runs a statement, its
//! locking, the audit chain, and label-prefix matching ([`Dialect`]).
//!
//! A new statement goes here, as a `const` with `?N` placeholders (and no
//! other `?`), with PostgreSQL's row locks (`FOR UPDATE ...`) at its end: see
//! `sql.rs`.

use keybrake_core::money::UsdMicros;
use keybrake_core::vendor::Vendor;

use super::sql::{args, corrupt, from_json, to_json, Arg, Column, Conn, Dialect};
use super::{
    hashes_from_text, hashes_to_text, AuditQuery, KeyQuery, Ledger, LedgerRead, RevokeSelector, StoreError, StoreResult,
};
use crate::model::{
    AuditEntry, AuditRow, Bucket, CallRow, CallState, DedupMode, FxRate, IdemRecord, IdemState, KeyRecord,
    ObjectAmount, Spend, StoredResponse,
};

/// The columns of each table, in the order its decoder reads them.
macro_rules! columns {
    (key_insert) => {
        "id, key_hash, label, vendor, allowed_endpoints, allowed_accounts, daily_cap_micros, \
         max_per_call_micros, allow_unpriced, dedup_mode, dedup_window_secs, created_at, expires_at, revoked_at"
    };
    (key) => {
        concat!(columns!(key_insert), ", suspended_at, suspended_reason")
    };
    (call) => {
        "call_id, key_id, day, amount_micros, bucket, state, unpriced, created_at, lease_expires_at, context"
    };
    (idem) => {
        "account, op_key, fingerprint, endpoint, state, call_id, forwarded_key, created_at, \
         expires_at, lease_expires_at, status, headers, body"
    };
    (audit) => {
        "seq, chain_seq, prev_hash, hash, entry"
    };
    // What an audit row copies from its entry (for the filters), then the entry; see `audit_entry_args`.
    (audit_entry) => {
        "at_us, call_id, key_id, label, decision, idempotency_key, forwarded_idempotency_key, fingerprint, \
         object_id, entry"
    };
}
pub(crate) use columns;

const KEY_INSERT: &str = concat!(
    "INSERT INTO vault_keys (",
    columns!(key_insert),
    ") VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14)"
);
const KEY_BY_HASH: &str = concat!("SELECT ", columns!(key), " FROM vault_keys WHERE key_hash = ?1");
const KEY_BY_ID: &str = concat!("SELECT ", columns!(key), " FROM vault_keys WHERE id = ?1");
const SUSPEND_KEY: &str = "UPDATE vault_keys SET suspended_at = ?2, suspended_reason = ?3 \
    WHERE id = ?1 AND suspended_at IS NULL AND revoked_at IS NULL RETURNING key_hash";
const REINSTATE_KEY: &str = "UPDATE vault_keys SET suspended_at = NULL, suspended_reason = '' \
    WHERE id = ?1 AND suspended_at IS NOT NULL RETURNING key_hash";
const RECORD_REVOCATION: &str = "INSERT INTO revocations (key_hashes, at) VALUES (?1, ?2) RETURNING generation";
const LATEST_REVOCATION: &str = "SELECT COALESCE(MAX(generation), 0) FROM revocations";
const REVOCATIONS_AFTER: &str =
    "SELECT generation, key_hashes FROM revocations WHERE generation > ?1 ORDER BY generation LIMIT ?2";
const HEARTBEAT: &str = "INSERT INTO replicas (replica_id, acked_generation, heartbeat_at) VALUES (?1, ?2, ?3) \
    ON CONFLICT (replica_id) DO UPDATE SET acked_generation = excluded.acked_generation, \
    heartbeat_at = excluded.heartbeat_at";
const LIVE_REPLICAS: &str = "SELECT replica_id, acked_generation FROM replicas WHERE heartbeat_at >= ?1";
const SPEND: &str =
    "SELECT committed_micros, reserved_micros, uncertain_micros FROM daily_spend WHERE key_id = ?1 AND day = ?2";
const SPEND_BY_KEY: &str =
    "SELECT key_id, committed_micros, reserved_micros, uncertain_micros FROM daily_spend WHERE day = ?1";
/// One statement: the row is created if missing and the amount added only if
/// the cap holds; the WHERE of the upsert is the check. On PostgreSQL it runs
/// under the row's lock: concurrent replicas queue on it, and each sees the
/// spend the previous one committed.
const RESERVE: &str = "INSERT INTO daily_spend (key_id, day, reserved_micros) SELECT ?1, ?2, ?3 \
    WHERE CAST(?4 AS BIGINT) IS NULL OR ?3 <= CAST(?4 AS BIGINT) \
    ON CONFLICT (key_id, day) DO UPDATE SET reserved_micros = daily_spend.reserved_micros + excluded.reserved_micros \
    WHERE CAST(?4 AS BIGINT) IS NULL OR daily_spend.committed_micros + daily_spend.reserved_micros \
    + daily_spend.uncertain_micros + excluded.reserved_micros <= CAST(?4 AS BIGINT)";
const CALL_INSERT: &str = concat!("INSERT INTO calls (", columns!(call), ") VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10)");
/// Locked: two settlements of one call (a retried one, an orphaned one) run one after the other.
const CALL_BY_ID: &str = concat!("SELECT ", columns!(call), " FROM calls WHERE call_id = ?1 FOR UPDATE");
const SET_CALL_STATE: &str = "UPDATE calls SET state = ?2, bucket = ?3, settled_at = ?4 WHERE call_id = ?1";
const EXPIRED_PENDING_CALLS: &str = concat!(
    "SELECT ",
    columns!(call),
    " FROM calls WHERE state = 'pending' AND lease_expires_at < ?1 LIMIT ?2 FOR UPDATE SKIP LOCKED"
);
const IDEM_BY_KEY: &str =
    concat!("SELECT ", columns!(idem), " FROM idempotency WHERE account = ?1 AND op_key = ?2 FOR UPDATE");
const IDEM_BY_CALL: &str = concat!("SELECT ", columns!(idem), " FROM idempotency WHERE call_id = ?1 FOR UPDATE");
/// Insert and update write the same thirteen columns, in `columns!(idem)` order.
const IDEM_INSERT: &str =
    concat!("INSERT INTO idempotency (", columns!(idem), ") VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)");
const IDEM_UPDATE: &str = "UPDATE idempotency SET fingerprint = ?3, endpoint = ?4, state = ?5, call_id = ?6, \
    forwarded_key = ?7, created_at = ?8, expires_at = ?9, lease_expires_at = ?10, status = ?11, headers = ?12, \
    body = ?13 WHERE account = ?1 AND op_key = ?2";
const IDEM_DELETE: &str = "DELETE FROM idempotency WHERE account = ?1 AND op_key = ?2";
const IDEM_PURGE: &str = "DELETE FROM idempotency WHERE expires_at < ?1 AND state = 'done'";
const OBJECT: &str = "SELECT object_id, currency, amount_minor, seen_at FROM objects WHERE object_id = ?1";
const PUT_OBJECT: &str = "INSERT INTO objects (object_id, currency, amount_minor, seen_at) VALUES (?1, ?2, ?3, ?4) \
    ON CONFLICT (object_id) DO UPDATE SET currency = excluded.currency, amount_minor = excluded.amount_minor, \
    seen_at = excluded.seen_at";
const FX_RATES: &str = "SELECT currency, usd_per_unit, as_of FROM fx_rates ORDER BY currency";
const PUT_FX_RATE: &str = "INSERT INTO fx_rates (currency, usd_per_unit, as_of, updated_at) VALUES (?1, ?2, ?3, ?4) \
    ON CONFLICT (currency) DO UPDATE SET usd_per_unit = excluded.usd_per_unit, as_of = excluded.as_of, \
    updated_at = excluded.updated_at";
const AUDIT_ROWS: &str =
    concat!("SELECT ", columns!(audit), " FROM audit_log WHERE chain_seq > ?1 ORDER BY chain_seq LIMIT ?2");
const SESSION_INSERT: &str = "INSERT INTO console_sessions (id_hash, csrf, expires_at) VALUES (?1, ?2, ?3)";
const SESSION: &str = "SELECT csrf FROM console_sessions WHERE id_hash = ?1 AND expires_at > ?2";
const SESSION_DELETE: &str = "DELETE FROM console_sessions WHERE id_hash = ?1";
const SESSION_PURGE: &str = "DELETE FROM console_sessions WHERE expires_at <= ?1";

fn key_hash(bytes: Vec<u8>) -> StoreResult<[u8; 32]> {
    bytes.try_into().map_err(|_| corrupt("vault_keys.key_hash"))
}

/// The variant of `all` stored as `text`. Unknown text is corrupt, never read
/// as some default (a live state would let a corrupt row be settled again).
fn stored_variant<T: Copy>(text: &str, all: &[T], name: fn(T) -> &'static str, column: &str) -> StoreResult<T> {
    all.iter().copied().find(|v| name(*v) == text).ok_or_else(|| corrupt(column))
}

const BUCKETS: [Bucket; 3] = [Bucket::Reserved, Bucket::Committed, Bucket::Uncertain];
const CALL_STATES: [CallState; 5] =
    [CallState::Pending, CallState::Committed, CallState::Released, CallState::Uncertain, CallState::Superseded];
const IDEM_STATES: [IdemState; 3] = [IdemState::InFlight, IdemState::Done, IdemState::Uncertain];

fn key_from_row(r: &dyn Column) -> StoreResult<KeyRecord> {
    let scopes: Vec<String> = from_json(&r.get::<String>(4)?, "vault_keys.allowed_endpoints")?;
    Ok(KeyRecord {
        id: r.get(0)?,
        key_hash: key_hash(r.get(1)?)?,
        label: r.get(2)?,
        vendor: Vendor::parse(&r.get::<String>(3)?).ok_or_else(|| corrupt("vault_keys.vendor"))?,
        scopes: scopes
            .iter()
            .map(|s| s.parse().ok())
            .collect::<Option<_>>()
            .ok_or_else(|| corrupt("vault_keys.allowed_endpoints"))?,
        allowed_accounts: from_json(&r.get::<String>(5)?, "vault_keys.allowed_accounts")?,
        daily_cap: r.get::<Option<i64>>(6)?.map(UsdMicros),
        max_per_call: r.get::<Option<i64>>(7)?.map(UsdMicros),
        allow_unpriced: r.get(8)?,
        dedup: DedupMode::parse(&r.get::<String>(9)?).ok_or_else(|| corrupt("vault_keys.dedup_mode"))?,
        dedup_window_secs: r.get(10)?,
        created_at: r.get(11)?,
        expires_at: r.get(12)?,
        revoked_at: r.get(13)?,
        suspended_at: r.get(14)?,
        suspended_reason: r.get(15)?,
    })
}

fn call_from_row(r: &dyn Column) -> StoreResult<CallRow> {
    Ok(CallRow {
        call_id: r.get(0)?,
        key_id: r.get(1)?,
        day: r.get(2)?,
        amount_micros: r.get(3)?,
        bucket: stored_variant(&r.get::<String>(4)?, &BUCKETS, Bucket::as_str, "calls.bucket")?,
        state: stored_variant(&r.get::<String>(5)?, &CALL_STATES, CallState::as_str, "calls.state")?,
        unpriced: r.get(6)?,
        created_at: r.get(7)?,
        lease_expires_at: r.get(8)?,
        context: from_json(&r.get::<String>(9)?, "calls.context")?,
    })
}

fn idem_from_row(r: &dyn Column) -> StoreResult<IdemRecord> {
    let state = stored_variant(&r.get::<String>(4)?, &IDEM_STATES, IdemState::as_str, "idempotency.state")?;
    // A status comes with its headers and body; headers that do not decode are corrupt, not empty.
    let response = match r.get::<Option<i64>>(10)? {
        None => None,
        Some(status) => Some(StoredResponse {
            status: u32::try_from(status).map_err(|_| corrupt("idempotency.status"))?,
            headers: from_json(&r.get::<String>(11)?, "idempotency.headers")?,
            body: r.get(12)?,
        }),
    };
    Ok(IdemRecord {
        account: r.get(0)?,
        op_key: r.get(1)?,
        fingerprint: r.get(2)?,
        endpoint: r.get(3)?,
        state,
        call_id: r.get(5)?,
        forwarded_key: r.get(6)?,
        created_at: r.get(7)?,
        expires_at: r.get(8)?,
        lease_expires_at: r.get(9)?,
        response,
    })
}

/// An audit row; PostgreSQL's unchained rows have no hashes yet (read as empty).
fn audit_from_row(r: &dyn Column) -> StoreResult<AuditRow> {
    Ok(AuditRow {
        seq: r.get(0)?,
        chain_seq: r.get(1)?,
        prev_hash: r.get::<Option<String>>(2)?.unwrap_or_default(),
        hash: r.get::<Option<String>>(3)?.unwrap_or_default(),
        entry: from_json(&r.get::<String>(4)?, "audit_log.entry")?,
    })
}

/// The arguments for `columns!(audit_entry)`, `entry` being the entry's JSON.
pub(crate) fn audit_entry_args<'a>(e: &'a AuditEntry, entry: &'a str) -> [Arg<'a>; 10] {
    *args![
        e.at_us,
        &e.call_id,
        &e.key_id,
        &e.label,
        &e.decision,
        &e.idempotency_key,
        &e.forwarded_idempotency_key,
        &e.fingerprint,
        &e.object_id,
        entry
    ]
}

/// `Spend` from the three columns starting at `at`.
fn spend_from_row(r: &dyn Column, at: usize) -> StoreResult<Spend> {
    Ok(Spend { committed: r.get(at)?, reserved: r.get(at + 1)?, uncertain: r.get(at + 2)? })
}

fn key_hash_from_row(r: &dyn Column) -> StoreResult<[u8; 32]> {
    key_hash(r.get(0)?)
}

impl AuditQuery {
    /// `SELECT ... FROM audit_log` with only the filters given, so the
    /// planner can use the index of each (the sparse columns' partial indexes
    /// apply because the clause repeats their condition).
    pub(crate) fn to_sql(&self, columns: &str, dialect: Dialect) -> (String, Vec<Arg<'_>>) {
        let mut clauses: Vec<String> = Vec::new();
        let mut values: Vec<Arg<'_>> = Vec::new();
        fn bind<'a>(v: Arg<'a>, values: &mut Vec<Arg<'a>>) -> String {
            values.push(v);
            format!("?{}", values.len())
        }
        if let Some(v) = &self.key_id {
            clauses.push(format!("key_id = {}", bind(Arg::from(v), &mut values)));
        }
        if let Some(p) = &self.label_prefix {
            // Through the keys' labels: audit rows copy their key's (immutable) label.
            let labels = match dialect {
                Dialect::Sqlite => {
                    let lo = bind(Arg::from(p), &mut values);
                    let hi = bind(Arg::from(p), &mut values);
                    format!("label >= {lo} AND label < {hi} || char(1114111)")
                }
                Dialect::Postgres => {
                    values.push(Arg::from(p));
                    dialect.label_starts_with(values.len())
                }
            };
            clauses.push(format!("key_id IN (SELECT id FROM vault_keys WHERE {labels})"));
        }
        if let Some(v) = &self.idempotency_key {
            let a = bind(Arg::from(v), &mut values);
            let b = bind(Arg::from(v), &mut values);
            clauses.push(format!(
                "((idempotency_key = {a} AND idempotency_key != '') OR \
                 (forwarded_idempotency_key = {b} AND forwarded_idempotency_key != ''))"
            ));
        }
        for (column, value) in [("fingerprint", &self.fingerprint), ("object_id", &self.object_id)] {
            if let Some(v) = value {
                clauses.push(format!("{column} = {} AND {column} != ''", bind(Arg::from(v), &mut values)));
            }
        }
        for (column, value) in [("decision", &self.decision), ("call_id", &self.call_id)] {
            if let Some(v) = value {
                clauses.push(format!("{column} = {}", bind(Arg::from(v), &mut values)));
            }
        }
        if let Some(v) = self.since_us {
            clauses.push(format!("at_us >= {}", bind(Arg::from(v), &mut values)));
        }
        if let Some(v) = self.until_us {
            clauses.push(format!("at_us < {}", bind(Arg::from(v), &mut values)));
        }
        if let Some(v) = self.cursor {
            let cmp = if self.ascending { ">" } else { "<" };
            clauses.push(format!("seq {cmp} {}", bind(Arg::from(v), &mut values)));
        }
        let filter = if clauses.is_empty() { String::new() } else { format!(" WHERE {}", clauses.join(" AND ")) };
        let order = if self.ascending { "ASC" } else { "DESC" };
        let limit = bind(Arg::from(self.limit as i64), &mut values);
        (format!("SELECT {columns} FROM audit_log{filter} ORDER BY seq {order} LIMIT {limit}"), values)
    }
}

/// The [`Ledger`] operations, written once over a backend's connection.
pub(crate) struct SqlLedger<C>(pub C);

impl<C: Conn> LedgerRead for SqlLedger<C> {
    fn key_by_hash(&mut self, hash: &[u8; 32]) -> StoreResult<Option<KeyRecord>> {
        self.0.first(KEY_BY_HASH, args![hash.as_slice()], key_from_row)
    }

    fn key_by_id(&mut self, id: &str) -> StoreResult<Option<KeyRecord>> {
        self.0.first(KEY_BY_ID, args![id], key_from_row)
    }

    fn list_keys(&mut self, query: &KeyQuery) -> StoreResult<Vec<KeyRecord>> {
        let sql = format!(
            "SELECT {} FROM vault_keys WHERE {} AND id > ?2 ORDER BY id LIMIT ?3",
            columns!(key),
            C::DIALECT.label_starts_with(1)
        );
        let prefix = query.label_prefix.as_deref().unwrap_or_default();
        let after = query.after_id.as_deref().unwrap_or_default();
        self.0.all(&sql, args![prefix, after, query.limit as i64], key_from_row)
    }

    fn latest_revocation(&mut self) -> StoreResult<i64> {
        Ok(self.0.first(LATEST_REVOCATION, &[], |r| r.get(0))?.unwrap_or_default())
    }

    fn revocations_after(&mut self, generation: i64, limit: usize) -> StoreResult<Vec<(i64, Vec<[u8; 32]>)>> {
        self.0.all(REVOCATIONS_AFTER, args![generation, limit as i64], |r| {
            Ok((r.get(0)?, hashes_from_text(&r.get::<String>(1)?)?))
        })
    }

    fn live_replicas(&mut self, since_ms: i64) -> StoreResult<Vec<(String, i64)>> {
        self.0.all(LIVE_REPLICAS, args![since_ms], |r| Ok((r.get(0)?, r.get(1)?)))
    }

    fn spend(&mut self, key_id: &str, day: i64) -> StoreResult<Spend> {
        Ok(self.0.first(SPEND, args![key_id, day], |r| spend_from_row(r, 0))?.unwrap_or_default())
    }

    fn spend_by_key(&mut self, day: i64) -> StoreResult<Vec<(String, Spend)>> {
        self.0.all(SPEND_BY_KEY, args![day], |r| Ok((r.get(0)?, spend_from_row(r, 1)?)))
    }

    fn object(&mut self, object_id: &str) -> StoreResult<Option<ObjectAmount>> {
        self.0.first(OBJECT, args![object_id], |r| {
            Ok(ObjectAmount { object_id: r.get(0)?, currency: r.get(1)?, amount_minor: r.get(2)?, seen_at: r.get(3)? })
        })
    }

    fn fx_rates(&mut self) -> StoreResult<Vec<FxRate>> {
        self.0.all(FX_RATES, &[], |r| Ok(FxRate { currency: r.get(0)?, usd_per_unit: r.get(1)?, as_of: r.get(2)? }))
    }

    fn unchained_audit_rows(&mut self) -> StoreResult<i64> {
        self.0.unchained_audit_rows()
    }

    fn query_audit(&mut self, query: &AuditQuery) -> StoreResult<Vec<AuditRow>> {
        let (sql, values) = query.to_sql(columns!(audit), C::DIALECT);
        self.0.all(&sql, &values, audit_from_row)
    }

    fn audit_rows(&mut self, after: i64, limit: usize) -> StoreResult<Vec<AuditRow>> {
        self.0.all(AUDIT_ROWS, args![after, limit as i64], audit_from_row)
    }

    fn session(&mut self, id_hash: &[u8; 32], now: i64) -> StoreResult<Option<String>> {
        self.0.first(SESSION, args![id_hash.as_slice(), now], |r| r.get(0))
    }

    fn ping(&mut self) -> StoreResult<()> {
        self.0.first("SELECT 1", &[], |_| Ok(())).map(|_| ())
    }
}

impl<C: Conn> Ledger for SqlLedger<C> {
    fn insert_key(&mut self, key: &KeyRecord) -> StoreResult<()> {
        let scopes = to_json(&key.scopes.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        let accounts = to_json(&key.allowed_accounts)?;
        let args = args![
            &key.id,
            key.key_hash.as_slice(),
            &key.label,
            key.vendor.as_str(),
            &scopes,
            &accounts,
            key.daily_cap.map(|c| c.0),
            key.max_per_call.map(|c| c.0),
            key.allow_unpriced,
            key.dedup.as_str(),
            key.dedup_window_secs,
            key.created_at,
            key.expires_at,
            key.revoked_at,
        ];
        self.0.run(KEY_INSERT, args).map(|_| ())
    }

    fn revoke_keys(&mut self, selector: &RevokeSelector, at: i64) -> StoreResult<Vec<(String, [u8; 32])>> {
        let (which, arg) = match selector {
            RevokeSelector::Id(id) => ("id = ?1".to_owned(), id),
            RevokeSelector::LabelPrefix(p) => (C::DIALECT.label_starts_with(1), p),
        };
        let sql = format!(
            "UPDATE vault_keys SET revoked_at = ?2 WHERE {which} AND revoked_at IS NULL RETURNING id, key_hash"
        );
        self.0.all(&sql, args![arg, at], |r| Ok((r.get(0)?, key_hash(r.get(1)?)?)))
    }

    fn suspend_key(&mut self, key_id: &str, at: i64, reason: &str) -> StoreResult<Option<[u8; 32]>> {
        self.0.first(SUSPEND_KEY, args![key_id, at, reason], key_hash_from_row)
    }

    fn reinstate_key(&mut self, key_id: &str) -> StoreResult<Option<[u8; 32]>> {
        self.0.first(REINSTATE_KEY, args![key_id], key_hash_from_row)
    }

    fn record_revocation(&mut self, hashes: &[[u8; 32]], at: i64) -> StoreResult<i64> {
        let generation = self.0.first(RECORD_REVOCATION, args![&hashes_to_text(hashes), at], |r| r.get(0))?;
        generation.ok_or_else(|| StoreError::Unavailable("no generation returned for a revocation".into()))
    }

    fn heartbeat(&mut self, replica: &str, acked: i64, now_ms: i64) -> StoreResult<()> {
        self.0.run(HEARTBEAT, args![replica, acked, now_ms]).map(|_| ())
    }

    fn reserve(&mut self, key_id: &str, day: i64, amount: i64, cap: Option<i64>) -> StoreResult<bool> {
        Ok(self.0.run(RESERVE, args![key_id, day, amount, cap])? == 1)
    }

    fn move_spend(&mut self, key_id: &str, day: i64, amount: i64, from: Bucket, to: Option<Bucket>) -> StoreResult<()> {
        let f = from.column();
        let set = match to {
            Some(to) => format!("{f} = {f} - ?3, {t} = {t} + ?3", t = to.column()),
            None => format!("{f} = {f} - ?3"),
        };
        let sql = format!("UPDATE daily_spend SET {set} WHERE key_id = ?1 AND day = ?2");
        self.0.run(&sql, args![key_id, day, amount]).map(|_| ())
    }

    fn insert_call(&mut self, call: &CallRow) -> StoreResult<()> {
        let context = to_json(&call.context)?;
        let args = args![
            &call.call_id,
            &call.key_id,
            call.day,
            call.amount_micros,
            call.bucket.as_str(),
            call.state.as_str(),
            call.unpriced,
            call.created_at,
            call.lease_expires_at,
            &context,
        ];
        self.0.run(CALL_INSERT, args).map(|_| ())
    }

    fn call(&mut self, call_id: &str) -> StoreResult<Option<CallRow>> {
        self.0.first(CALL_BY_ID, args![call_id], call_from_row)
    }

    fn set_call_state(&mut self, call_id: &str, state: CallState, bucket: Bucket, at: i64) -> StoreResult<()> {
        self.0.run(SET_CALL_STATE, args![call_id, state.as_str(), bucket.as_str(), at]).map(|_| ())
    }

    fn expired_pending_calls(&mut self, now: i64, limit: usize) -> StoreResult<Vec<CallRow>> {
        self.0.all(EXPIRED_PENDING_CALLS, args![now, limit as i64], call_from_row)
    }

    fn idempotency(&mut self, account: &str, op_key: &str) -> StoreResult<Option<IdemRecord>> {
        self.0.lock_operation(account, op_key)?;
        self.0.first(IDEM_BY_KEY, args![account, op_key], idem_from_row)
    }

    fn insert_idempotency(&mut self, record: &IdemRecord) -> StoreResult<()> {
        self.write_idempotency(IDEM_INSERT, record)
    }

    fn update_idempotency(&mut self, record: &IdemRecord) -> StoreResult<()> {
        self.write_idempotency(IDEM_UPDATE, record)
    }

    fn delete_idempotency(&mut self, account: &str, op_key: &str) -> StoreResult<()> {
        self.0.run(IDEM_DELETE, args![account, op_key]).map(|_| ())
    }

    fn idempotency_for_call(&mut self, call_id: &str) -> StoreResult<Vec<IdemRecord>> {
        self.0.all(IDEM_BY_CALL, args![call_id], idem_from_row)
    }

    fn purge_idempotency(&mut self, now: i64) -> StoreResult<u64> {
        self.0.run(IDEM_PURGE, args![now])
    }

    fn put_object(&mut self, o: &ObjectAmount) -> StoreResult<()> {
        self.0.run(PUT_OBJECT, args![&o.object_id, &o.currency, o.amount_minor, o.seen_at]).map(|_| ())
    }

    fn put_fx_rate(&mut self, rate: &FxRate, at: i64) -> StoreResult<()> {
        self.0.run(PUT_FX_RATE, args![&rate.currency, &rate.usd_per_unit, &rate.as_of, at]).map(|_| ())
    }

    fn append_audit(&mut self, entry: &AuditEntry) -> StoreResult<()> {
        self.0.append_audit(entry)
    }

    fn chain_audit(&mut self, limit: usize) -> StoreResult<usize> {
        self.0.chain_audit(limit)
    }

    fn insert_session(&mut self, id_hash: &[u8; 32], csrf: &str, expires_at: i64) -> StoreResult<()> {
        self.0.run(SESSION_INSERT, args![id_hash.as_slice(), csrf, expires_at]).map(|_| ())
    }

    fn delete_session(&mut self, id_hash: &[u8; 32]) -> StoreResult<()> {
        self.0.run(SESSION_DELETE, args![id_hash.as_slice()]).map(|_| ())
    }

    fn purge_sessions(&mut self, now: i64) -> StoreResult<u64> {
        self.0.run(SESSION_PURGE, args![now])
    }
}

impl<C: Conn> SqlLedger<C> {
    fn write_idempotency(&mut self, sql: &str, r: &IdemRecord) -> StoreResult<()> {
        let (status, headers, body) = match &r.response {
            Some(resp) => (
                Some(i32::try_from(resp.status).map_err(|_| corrupt("idempotency.status"))?),
                Some(to_json(&resp.headers)?),
                Some(resp.body.as_slice()),
            ),
            None => (None, None, None),
        };
        let args = args![
            &r.account,
            &r.op_key,
            &r.fingerprint,
            &r.endpoint,
            r.state.as_str(),
            &r.call_id,
            &r.forwarded_key,
            r.created_at,
            r.expires_at,
            r.lease_expires_at,
            Arg::Int4(status),
            Arg::Text(headers.as_deref()),
            Arg::Blob(body),
        ];
        self.0.run(sql, args).map(|_| ())
    }
}
