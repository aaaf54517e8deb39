-- Console sessions, shared by every replica of the database (a browser may
-- reach any of them). Only the SHA-256 of the session id is kept: the table
-- holds no usable cookie.
CREATE TABLE console_sessions (
    id_hash    BLOB PRIMARY KEY,
    csrf       TEXT NOT NULL,
    expires_at INTEGER NOT NULL             -- unix seconds; absolute, not sliding
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
