//! Test harness: the control service's `App` on each storage backend, with a
//! clock the tests move.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use keybrake_control::app::{App, Limits};
use keybrake_control::calls::expire_leases;
use keybrake_control::clock::{day_of, ManualClock};
use keybrake_control::ids::{new_id, new_vault_key};
use keybrake_control::issuing::CreateKey;
use keybrake_control::model::{AuditRow, Spend};
use keybrake_control::secrets::{Secret, Vault};
use keybrake_control::store::postgres::PgStore;
use keybrake_control::store::sqlite::SqliteStore;
use keybrake_control::store::{AuditQuery, Store};
use keybrake_control::wire::{price, AuthorizeRequest, Price};
use keybrake_core::fingerprint::to_hex;
use sha2::{Digest, Sha256};

/// 2026-11-26T10:00:00Z
pub const START_US: i64 = 1_795_687_200_000_000;

pub struct Harness {
    pub name: &'static str,
    pub app: Arc<App>,
    pub clock: Arc<ManualClock>,
    db: Db,
}

/// Where a harness's database is, for tests that write to it behind the store's back.
pub enum Db {
    /// The folder holding `keybrake.db`.
    Sqlite(tempfile::TempDir),
    /// The database's URL.
    Postgres(String),
}

#[derive(Clone)]
pub struct TestKey {
    pub id: String,
    pub hash: [u8; 32],
}

pub fn vault() -> Vault {
    Vault::new(Secret::new("sk_test_ledger_real".into()), &Secret::new("admin-key-for-tests-0123".into())).unwrap()
}

fn app_on(store: Store) -> (Arc<App>, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock(AtomicI64::new(START_US)));
    let app = App::new(store, vault(), clock.clone(), Limits::default());
    (Arc::new(app), clock)
}

/// A harness on a store opened by the test on `db` (e.g. a database it prepared).
pub fn harness_on(store: Store, db: Db) -> Harness {
    let (app, clock) = app_on(store);
    Harness { name: store_name(&db), app, clock, db }
}

fn store_name(db: &Db) -> &'static str {
    match db {
        Db::Sqlite(_) => "sqlite",
        Db::Postgres(_) => "postgres",
    }
}

/// A storage backend a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL server for tests, from `KEYBRAKE_TEST_DATABASE_URL`. Without
/// one, PostgreSQL tests pass without running, unless `KEYBRAKE_REQUIRE_POSTGRES`
/// is set: then a missing server is a failure.
pub fn postgres_url() -> Option<String> {
    let url = std::env::var("KEYBRAKE_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty());
    if url.is_none() && std::env::var("KEYBRAKE_REQUIRE_POSTGRES").is_ok() {
        panic!("KEYBRAKE_REQUIRE_POSTGRES is set but KEYBRAKE_TEST_DATABASE_URL is not");
    }
    url
}

/// A harness on a fresh store of `backend`; `None` when PostgreSQL is not configured.
pub async fn harness(backend: Backend) -> Option<Harness> {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::Sqlite(SqliteStore::open(&dir.path().join("keybrake.db")).unwrap());
            Some(harness_on(store, Db::Sqlite(dir)))
        }
        Backend::Postgres => {
            let admin = postgres_url()?;
            let (store, url) = tokio::task::spawn_blocking(move || {
                let url = fresh_database(&admin);
                (PgStore::open(&url).unwrap(), url)
            })
            .await
            .unwrap();
            Some(harness_on(Store::Postgres(store), Db::Postgres(url)))
        }
    }
}

/// Defines a storage test once and runs it as one named test per backend:
/// `name::sqlite` and `name::postgres`, so that a failure on one cannot hide
/// the other's result. The body gets a [`Harness`] (named in the parentheses) from [`harness`],
/// or from the constructor named after `using` (a [`Backend`] in, an `Option`
/// out; `None` passes the test without running it).
#[macro_export]
macro_rules! storage_test {
    ($(#[$attr:meta])* async fn $name:ident($h:ident) $body:block) => {
        $crate::storage_test! { using $crate::support::harness; $(#[$attr])* async fn $name($h) $body }
    };
    (using $make:path; $(#[$attr:meta])* async fn $name:ident($h:ident) $body:block) => {
        async fn $name(backend: $crate::support::Backend) {
            if let Some($h) = $make(backend).await $body
        }

        mod $name {
            $(#[$attr])*
            async fn sqlite() {
                super::$name($crate::support::Backend::Sqlite).await
            }

            $(#[$attr])*
            async fn postgres() {
                super::$name($crate::support::Backend::Postgres).await
            }
        }
    };
}

/// Creates an empty database on the server and returns its URL.
pub fn fresh_database(admin_url: &str) -> String {
    let name = new_id("kbtest");
    let mut client = postgres::Client::connect(admin_url, postgres::NoTls).unwrap();
    client.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("database url without a path: {admin_url}"),
    }
}

impl Harness {
    /// Runs one statement on the database directly, behind the store's back.
    pub async fn raw_sql(&self, sql: &str) {
        let sql = sql.to_owned();
        match &self.db {
            Db::Sqlite(dir) => {
                let conn = rusqlite::Connection::open(dir.path().join("keybrake.db")).unwrap();
                conn.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
                conn.execute_batch(&sql).unwrap();
            }
            Db::Postgres(url) => {
                let url = url.clone();
                tokio::task::spawn_blocking(move || {
                    postgres::Client::connect(&url, postgres::NoTls).unwrap().batch_execute(&sql).unwrap()
                })
                .await
                .unwrap();
            }
        }
    }

    /// Issues a key through the same validation as the admin API.
    pub async fn key(&self, label: &str, scope: &str, cap: Option<&str>, extra: &str) -> TestKey {
        let cap = cap.map(|c| format!(r#","daily_usd_cap":{c}"#)).unwrap_or_default();
        let extra = if extra.is_empty() { String::new() } else { format!(",{extra}") };
        let mut json =
            format!(r#"{{"label":"{label}","vendor":"stripe","allowed_endpoints":["{scope}"]{cap}{extra}}}"#);
        if !json.contains("expires_in_seconds") {
            json = json.replacen('{', r#"{"expires_in_seconds":3600,"#, 1);
        }
        let request: CreateKey = serde_json::from_str(&json).unwrap();
        let vault_key = new_vault_key().unwrap();
        let record = request.validate().unwrap().into_record(new_id("key"), vault_key.hash(), START_US / 1_000_000);
        let key = TestKey { id: record.id.clone(), hash: vault_key.hash() };
        self.app.store.write(move |l| l.insert_key(&record)).await.unwrap();
        key
    }

    pub async fn spend(&self, key: &TestKey) -> Spend {
        let (id, day) = (key.id.clone(), day_of(START_US));
        self.app.store.read(move |l| l.spend(&id, day)).await.unwrap()
    }

    pub async fn sweep(&self) {
        let now = self.clock.0.load(std::sync::atomic::Ordering::SeqCst);
        self.app.store.write(move |l| expire_leases(l, now)).await.unwrap();
    }

    pub async fn audit_for(&self, key: &TestKey) -> Vec<AuditRow> {
        let q = AuditQuery { key_id: Some(key.id.clone()), ascending: true, limit: 1000, ..Default::default() };
        self.app.store.read(move |l| l.query_audit(&q)).await.unwrap()
    }
}

/// An Authorize request for `POST /v1/charges`; the fingerprint depends on the content only.
pub fn charge(key: &TestKey, amount: i64, currency: &str, idempotency_key: &str) -> AuthorizeRequest {
    let fingerprint = to_hex(&Sha256::digest(format!("POST /v1/charges amount={amount}&currency={currency}")));
    AuthorizeRequest {
        vault_key_hash: key.hash.to_vec(),
        vendor: "stripe".into(),
        method: "POST".into(),
        path: "/v1/charges".into(),
        idempotency_key: idempotency_key.into(),
        price: Some(Price {
            kind: price::Kind::Amount as i32,
            amount_minor: amount,
            currency: currency.into(),
            basis: "amount".into(),
            ..Default::default()
        }),
        fingerprint,
        ..Default::default()
    }
}
