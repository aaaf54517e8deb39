-- Revocations pushed to the Envoy workers' key caches, in order. Replicas relay
-- new rows to their watchers and record how far their watchers have applied them.
CREATE TABLE revocations (
    generation INTEGER PRIMARY KEY AUTOINCREMENT,
    key_hashes TEXT NOT NULL,        -- hex SHA-256 of each revoked key, comma-separated
    at         INTEGER NOT NULL
);

CREATE TABLE replicas (
    replica_id       TEXT PRIMARY KEY,
    acked_generation INTEGER NOT NULL, -- every watcher of this replica applied up to here
    heartbeat_at     INTEGER NOT NULL  -- unix milliseconds
);
