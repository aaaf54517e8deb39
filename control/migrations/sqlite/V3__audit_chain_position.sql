-- A row's place in the hash chain, apart from its insertion order. In SQLite
-- the single writer chains rows as it inserts them, so the two are equal.
ALTER TABLE audit_log ADD COLUMN chain_seq INTEGER;
UPDATE audit_log SET chain_seq = seq;
CREATE UNIQUE INDEX audit_chain ON audit_log (chain_seq);
