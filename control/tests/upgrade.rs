//! A database written under the first schema (V1) and opened by today's
//! control service, on every backend: the later migrations apply to data
//! already there, and its keys, spend, idempotency records and audit chain
//! keep working — a charge past the old spend is still refused, a retry of an
//! old call is still replayed, and new audit rows extend the old chain.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use keybrake_control::audit::{self, chain};
use keybrake_control::clock::day_of;
use keybrake_control::model::AuditEntry;
use keybrake_control::store::postgres::PgStore;
use keybrake_control::store::sqlite::SqliteStore;
use keybrake_control::store::Store;
use keybrake_control::wire::authorize_response::Verdict;
use keybrake_control::wire::{Outcome, SettleRequest};
use sha2::{Digest, Sha256};
use support::{charge, fresh_database, harness_on, postgres_url, vault, Backend, Db, Harness, TestKey, START_US};

/// The schema's migrations, embedded again so the test can stop at V1.
mod schema {
    pub mod sqlite {
        refinery::embed_migrations!("migrations/sqlite");
    }
    pub mod postgres {
        refinery::embed_migrations!("migrations/postgres");
    }
}

const CALLER_KEY: &str = "ray-task-7";
const OLD_RESPONSE: &str = r#"{"id":"ch_old","object":"charge","amount":90000,"currency":"usd"}"#;

/// A column value, bound the way each driver wants it.
#[derive(Clone)]
enum V {
    I64(i64),
    I32(i32),
    NullI64,
    Bool(bool),
    Text(String),
    Bytes(Vec<u8>),
}

fn t(s: &str) -> V {
    V::Text(s.to_owned())
}

/// What V1 held: a $1,000 key that spent $900 today in one charge, the
/// caller's idempotency record of that charge, and its two audit rows.
#[derive(Clone)]
struct OldData {
    key: TestKey,
    statements: Vec<(&'static str, Vec<V>)>,
    /// `audit_head` as V1 on PostgreSQL kept it: the last row's position and hash.
    head: (i64, String),
}

fn old_entry(stage: &str, outcome: &str, status: Option<u32>) -> AuditEntry {
    AuditEntry {
        at_us: START_US - 600_000_000,
        call_id: "call_old".into(),
        stage: stage.into(),
        key_id: "key_old".into(),
        label: "ray-billing-old".into(),
        vendor: "stripe".into(),
        method: "POST".into(),
        path: "/v1/charges".into(),
        decision: "allowed".into(),
        outcome: outcome.into(),
        upstream_status: status,
        amount_minor: Some(90_000),
        currency: "usd".into(),
        usd_micros: Some(900_000_000),
        price_basis: "amount".into(),
        idempotency_key: CALLER_KEY.into(),
        forwarded_idempotency_key: CALLER_KEY.into(),
        fingerprint: charge_fingerprint(),
        ..Default::default()
    }
}

fn charge_fingerprint() -> String {
    let key = TestKey { id: String::new(), hash: [0; 32] };
    charge(&key, 90_000, "usd", CALLER_KEY).fingerprint
}

fn old_data() -> OldData {
    let key = TestKey { id: "key_old".into(), hash: Sha256::digest(b"an old vault key").into() };
    let now = START_US / 1_000_000;
    let entries = [old_entry("intent", "", None), old_entry("outcome", "responded", Some(200))];
    let mut prev = chain::GENESIS.to_owned();
    let mut audit = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let seq = i as i64 + 1;
        let hash = chain::link(&prev, seq, e);
        audit.push((
            "INSERT INTO audit_log (seq, prev_hash, hash, at_us, call_id, key_id, label, decision, idempotency_key, \
             forwarded_idempotency_key, fingerprint, object_id, entry) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)",
            vec![
                V::I64(seq),
                V::Text(prev.clone()),
                V::Text(hash.clone()),
                V::I64(e.at_us),
                t(&e.call_id),
                t(&e.key_id),
                t(&e.label),
                t(&e.decision),
                t(&e.idempotency_key),
                t(&e.forwarded_idempotency_key),
                t(&e.fingerprint),
                t(&e.object_id),
                V::Text(serde_json::to_string(e).unwrap()),
            ],
        ));
        prev = hash;
    }
    let mut statements = vec![
        (
            "INSERT INTO vault_keys (id, key_hash, label, vendor, allowed_endpoints, allowed_accounts, daily_cap_micros, \
             max_per_call_micros, allow_unpriced, dedup_mode, dedup_window_secs, created_at, expires_at, revoked_at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14)",
            vec![
                t(&key.id),
                V::Bytes(key.hash.to_vec()),
                t("ray-billing-old"),
                t("stripe"),
                t(r#"["POST /v1/charges"]"#),
                t("[]"),
                V::I64(1_000_000_000),
                V::NullI64,
                V::Bool(false),
                t("idempotency_key"),
                V::I64(86_400),
                V::I64(now - 3_600),
                V::I64(now + 86_400),
                V::NullI64,
            ],
        ),
        (
            "INSERT INTO daily_spend (key_id, day, committed_micros) VALUES ($1,$2,$3)",
            vec![t(&key.id), V::I64(day_of(START_US)), V::I64(900_000_000)],
        ),
        (
            "INSERT INTO calls (call_id, key_id, day, amount_micros, bucket, state, unpriced, created_at, \
             lease_expires_at, settled_at, context) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
            vec![
                t("call_old"),
                t(&key.id),
                V::I64(day_of(START_US)),
                V::I64(900_000_000),
                t("committed"),
                t("committed"),
                V::Bool(false),
                V::I64(now - 600),
                V::I64(now - 570),
                V::I64(now - 599),
                V::Text(serde_json::to_string(&entries[0]).unwrap()),
            ],
        ),
        (
            "INSERT INTO idempotency (account, op_key, fingerprint, endpoint, state, call_id, forwarded_key, created_at, \
             expires_at, lease_expires_at, status, headers, body) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)",
            vec![
                V::Text(vault().account_scope("")),
                V::Text(format!("idem:{CALLER_KEY}")),
                V::Text(charge_fingerprint()),
                t("POST /v1/charges"),
                t("done"),
                t("call_old"),
                t(CALLER_KEY),
                V::I64(now - 600),
                V::I64(now - 600 + 86_400),
                V::I64(now - 570),
                V::I32(200),
                t(r#"[["content-type","application/json"]]"#),
                V::Bytes(OLD_RESPONSE.as_bytes().to_vec()),
            ],
        ),
    ];
    statements.extend(audit);
    OldData { key, statements, head: (2, prev) }
}

/// A value boxed as the driver at hand binds it (the two drivers' `ToSql` differ).
macro_rules! bind {
    ($v:expr) => {
        match $v {
            V::I64(i) => Box::new(*i),
            V::I32(i) => Box::new(*i),
            V::NullI64 => Box::new(None::<i64>),
            V::Bool(b) => Box::new(*b),
            V::Text(s) => Box::new(s.clone()),
            V::Bytes(b) => Box::new(b.clone()),
        }
    };
}

fn sqlite_v1(path: &std::path::Path, data: &OldData) {
    let mut conn = rusqlite::Connection::open(path).unwrap();
    schema::sqlite::migrations::runner().set_target(refinery::Target::Version(1)).run(&mut conn).unwrap();
    for (sql, values) in &data.statements {
        let params: Vec<Box<dyn rusqlite::ToSql>> =
            values.iter().map(|v| -> Box<dyn rusqlite::ToSql> { bind!(v) }).collect();
        // SQLite reads `$1` as a numbered parameter too.
        conn.execute(sql, rusqlite::params_from_iter(params.iter().map(|p| p.as_ref()))).unwrap();
    }
}

fn postgres_v1(url: &str, data: &OldData) {
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    schema::postgres::migrations::runner().set_target(refinery::Target::Version(1)).run(&mut client).unwrap();
    for (sql, values) in &data.statements {
        let params: Vec<Box<dyn postgres::types::ToSql + Sync>> =
            values.iter().map(|v| -> Box<dyn postgres::types::ToSql + Sync> { bind!(v) }).collect();
        let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = params.iter().map(|p| p.as_ref()).collect();
        client.execute(*sql, &refs).unwrap();
    }
    client.execute("UPDATE audit_head SET seq = $1, hash = $2", &[&data.head.0, &data.head.1]).unwrap();
}

/// A V1 database of `backend`, opened (and so upgraded) by today's store.
async fn upgraded(backend: Backend) -> Option<Harness> {
    let data = old_data();
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("keybrake.db");
            sqlite_v1(&path, &data);
            Some(harness_on(Store::Sqlite(SqliteStore::open(&path).unwrap()), Db::Sqlite(dir)))
        }
        Backend::Postgres => {
            let admin = postgres_url()?;
            let (store, url) = tokio::task::spawn_blocking(move || {
                let url = fresh_database(&admin);
                postgres_v1(&url, &data);
                (PgStore::open(&url).unwrap(), url)
            })
            .await
            .unwrap();
            Some(harness_on(Store::Postgres(store), Db::Postgres(url)))
        }
    }
}

storage_test! {
    using upgraded;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_v1_database_keeps_its_spend_records_and_chain_after_the_upgrade(h) {
        let data = old_data();
        let name = h.name;
        let report = audit::verify(&h.app.store).await.unwrap();
        assert!(report.ok, "{name}: the old chain verifies after the upgrade: {:?}", report.reason);
        assert_eq!((report.rows, report.head_hash.as_str()), (2, data.head.1.as_str()), "{name}");

        // $900 already spent today of $1,000: $200 more is refused.
        let over = h.app.authorize(charge(&data.key, 20_000, "usd", "new-over")).await;
        match over.verdict.unwrap() {
            Verdict::Deny(d) => assert_eq!(d.denial_code().map(|c| c.as_str()).unwrap_or_default(), "spend_cap_exceeded", "{name}"),
            other => panic!("{name}: a charge past the old spend went through: {other:?}"),
        }
        // The old call's retry is replayed from the old record, not forwarded.
        let retry = h.app.authorize(charge(&data.key, 90_000, "usd", CALLER_KEY)).await;
        match retry.verdict.unwrap() {
            Verdict::Replay(r) => {
                assert_eq!((r.http_status, r.body.as_slice()), (200, OLD_RESPONSE.as_bytes()), "{name}")
            }
            other => panic!("{name}: the old call's retry was not replayed: {other:?}"),
        }
        // $50 fits; it settles on top of the old spend.
        let call_id = match h.app.authorize(charge(&data.key, 5_000, "usd", "new-fits")).await.verdict.unwrap() {
            Verdict::Allow(a) => a.call_id,
            other => panic!("{name}: $50 under the cap was refused: {other:?}"),
        };
        h.app
            .settle(SettleRequest {
                call_id,
                outcome: Outcome::Responded as i32,
                http_status: 200,
                body: br#"{"id":"ch_new","object":"charge","amount":5000,"currency":"usd"}"#.to_vec(),
                ..Default::default()
            })
            .await
            .unwrap();
        let spend = h.spend(&data.key).await;
        assert_eq!((spend.committed, spend.reserved), (950_000_000, 0), "{name}");

        // New rows extend the old chain, after the old rows.
        let report = audit::verify(&h.app.store).await.unwrap();
        assert!(report.ok, "{name}: {:?}", report.reason);
        let rows = h.audit_for(&data.key).await;
        assert!(
            rows.len() > 2 && report.rows == rows.len() as i64,
            "{name}: {} rows, {} verified",
            rows.len(),
            report.rows
        );
        assert_eq!(rows[0].entry, old_entry("intent", "", None), "{name}");
        assert!(rows[2..].iter().all(|r| r.seq > 2), "{name}: new rows come after the old ones");
    }
}
