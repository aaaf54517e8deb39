-- Keybrake control service schema (SQLite). Money is integer micro-dollars;
-- times are unix seconds unless the column says _us (microseconds).

CREATE TABLE vault_keys (
    id                  TEXT PRIMARY KEY,
    key_hash            BLOB NOT NULL UNIQUE,   -- SHA-256 of the vault key; the key itself is never stored
    label               TEXT NOT NULL,
    vendor              TEXT NOT NULL,
    allowed_endpoints   TEXT NOT NULL,          -- JSON array of canonical scopes
    allowed_accounts    TEXT NOT NULL,          -- JSON array
    daily_cap_micros    INTEGER,                -- NULL: no cap
    max_per_call_micros INTEGER,
    allow_unpriced      INTEGER NOT NULL,
    dedup_mode          TEXT NOT NULL,
    dedup_window_secs   INTEGER NOT NULL,
    created_at          INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    revoked_at          INTEGER
);
CREATE INDEX vault_keys_label ON vault_keys (label);

CREATE TABLE daily_spend (
    key_id           TEXT NOT NULL,
    day              INTEGER NOT NULL,          -- days since 1970-01-01, UTC
    committed_micros INTEGER NOT NULL DEFAULT 0,
    reserved_micros  INTEGER NOT NULL DEFAULT 0,
    uncertain_micros INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day)
);

CREATE TABLE calls (
    call_id          TEXT PRIMARY KEY,
    key_id           TEXT NOT NULL,
    day              INTEGER NOT NULL,
    amount_micros    INTEGER NOT NULL,
    bucket           TEXT NOT NULL,             -- where the amount sits: reserved, committed, uncertain
    state            TEXT NOT NULL,             -- pending, committed, released, uncertain, superseded
    unpriced         INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    lease_expires_at INTEGER NOT NULL,
    settled_at       INTEGER,
    context          TEXT NOT NULL              -- the decision's audit entry (JSON), reused for the outcome
);
CREATE INDEX calls_pending ON calls (state, lease_expires_at);

CREATE TABLE idempotency (
    account          TEXT NOT NULL,             -- hash of the upstream credential and Stripe-Account
    op_key           TEXT NOT NULL,             -- idem:<caller key> or content:<fingerprint>
    fingerprint      TEXT NOT NULL,
    endpoint         TEXT NOT NULL,
    state            TEXT NOT NULL,             -- in_flight, done, uncertain
    call_id          TEXT NOT NULL,
    forwarded_key    TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    lease_expires_at INTEGER NOT NULL,
    status           INTEGER,
    headers          TEXT,
    body             BLOB,
    PRIMARY KEY (account, op_key)
);
CREATE INDEX idempotency_call ON idempotency (call_id);
CREATE INDEX idempotency_expiry ON idempotency (expires_at);

CREATE TABLE objects (
    object_id    TEXT PRIMARY KEY,
    currency     TEXT NOT NULL,
    amount_minor INTEGER NOT NULL,
    seen_at      INTEGER NOT NULL
);

CREATE TABLE fx_rates (
    currency     TEXT PRIMARY KEY,
    usd_per_unit TEXT NOT NULL,                 -- decimal text, never a float
    as_of        TEXT NOT NULL,
    updated_at   INTEGER NOT NULL
);

CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL,
    at_us      INTEGER NOT NULL,
    call_id    TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    label      TEXT NOT NULL,
    decision   TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    forwarded_idempotency_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    object_id  TEXT NOT NULL,
    entry      TEXT NOT NULL                    -- the full entry (JSON), as hashed
);
CREATE INDEX audit_key ON audit_log (key_id, seq);
CREATE INDEX audit_label ON audit_log (label, seq);
CREATE INDEX audit_call ON audit_log (call_id);
CREATE INDEX audit_idem ON audit_log (idempotency_key);
CREATE INDEX audit_fwd_idem ON audit_log (forwarded_idempotency_key);
CREATE INDEX audit_fingerprint ON audit_log (fingerprint);
CREATE INDEX audit_object ON audit_log (object_id);
CREATE INDEX audit_at ON audit_log (at_us);
