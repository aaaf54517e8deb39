-- Keybrake control service schema (PostgreSQL), shared by every replica.
-- Money is integer micro-dollars; times are unix seconds unless the column says _us.

CREATE TABLE vault_keys (
    id                  TEXT PRIMARY KEY,
    key_hash            BYTEA NOT NULL UNIQUE,  -- SHA-256 of the vault key; the key itself is never stored
    label               TEXT NOT NULL,
    vendor              TEXT NOT NULL,
    allowed_endpoints   TEXT NOT NULL,          -- JSON array of canonical scopes
    allowed_accounts    TEXT NOT NULL,          -- JSON array
    daily_cap_micros    BIGINT,                 -- NULL: no cap
    max_per_call_micros BIGINT,
    allow_unpriced      BOOLEAN NOT NULL,
    dedup_mode          TEXT NOT NULL,
    dedup_window_secs   BIGINT NOT NULL,
    created_at          BIGINT NOT NULL,
    expires_at          BIGINT NOT NULL,
    revoked_at          BIGINT
);
CREATE INDEX vault_keys_label ON vault_keys (label text_pattern_ops);

CREATE TABLE daily_spend (
    key_id           TEXT NOT NULL,
    day              BIGINT NOT NULL,           -- days since 1970-01-01, UTC
    committed_micros BIGINT NOT NULL DEFAULT 0,
    reserved_micros  BIGINT NOT NULL DEFAULT 0,
    uncertain_micros BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day)
);

CREATE TABLE calls (
    call_id          TEXT PRIMARY KEY,
    key_id           TEXT NOT NULL,
    day              BIGINT NOT NULL,
    amount_micros    BIGINT NOT NULL,
    bucket           TEXT NOT NULL,
    state            TEXT NOT NULL,
    unpriced         BOOLEAN NOT NULL,
    created_at       BIGINT NOT NULL,
    lease_expires_at BIGINT NOT NULL,
    settled_at       BIGINT,
    context          TEXT NOT NULL
);
CREATE INDEX calls_pending ON calls (state, lease_expires_at);

CREATE TABLE idempotency (
    account          TEXT NOT NULL,
    op_key           TEXT NOT NULL,
    fingerprint      TEXT NOT NULL,
    endpoint         TEXT NOT NULL,
    state            TEXT NOT NULL,
    call_id          TEXT NOT NULL,
    forwarded_key    TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    lease_expires_at BIGINT NOT NULL,
    status           INTEGER,
    headers          TEXT,
    body             BYTEA,
    PRIMARY KEY (account, op_key)
);
CREATE INDEX idempotency_call ON idempotency (call_id);
CREATE INDEX idempotency_expiry ON idempotency (expires_at);

CREATE TABLE objects (
    object_id    TEXT PRIMARY KEY,
    currency     TEXT NOT NULL,
    amount_minor BIGINT NOT NULL,
    seen_at      BIGINT NOT NULL
);

CREATE TABLE fx_rates (
    currency     TEXT PRIMARY KEY,
    usd_per_unit TEXT NOT NULL,
    as_of        TEXT NOT NULL,
    updated_at   BIGINT NOT NULL
);

-- The head of the audit chain: one row, locked by every append so that the
-- chain stays one sequence across replicas.
CREATE TABLE audit_head (
    one  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (seq, hash) VALUES (0, '0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE audit_log (
    seq        BIGINT PRIMARY KEY,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL,
    at_us      BIGINT NOT NULL,
    call_id    TEXT NOT NULL,
    key_id     TEXT NOT NULL,
    label      TEXT NOT NULL,
    decision   TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    forwarded_idempotency_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    object_id  TEXT NOT NULL,
    entry      TEXT NOT NULL
);
CREATE INDEX audit_key ON audit_log (key_id, seq);
CREATE INDEX audit_label ON audit_log (label text_pattern_ops, seq);
CREATE INDEX audit_call ON audit_log (call_id);
CREATE INDEX audit_idem ON audit_log (idempotency_key);
CREATE INDEX audit_fwd_idem ON audit_log (forwarded_idempotency_key);
CREATE INDEX audit_fingerprint ON audit_log (fingerprint);
CREATE INDEX audit_object ON audit_log (object_id);
CREATE INDEX audit_at ON audit_log (at_us);
