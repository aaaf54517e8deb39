-- A key is suspended, not revoked, when one of its calls moved more money
-- than the gateway priced (the reconciliation backstop): refused until an
-- operator reinstates or revokes it.
ALTER TABLE vault_keys ADD COLUMN suspended_at INTEGER;          -- unix seconds; NULL: not suspended
ALTER TABLE vault_keys ADD COLUMN suspended_reason TEXT NOT NULL DEFAULT '';
