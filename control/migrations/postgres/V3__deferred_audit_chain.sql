-- Rows are inserted unchained inside the transaction that decides the call
-- (so the intent is durable with it), and a single chainer links them in
-- order shortly after: no global lock on the hot path of every replica.
CREATE SEQUENCE audit_log_seq;
SELECT setval('audit_log_seq', GREATEST((SELECT COALESCE(MAX(seq), 0) FROM audit_log), 1));
ALTER TABLE audit_log ALTER COLUMN seq SET DEFAULT nextval('audit_log_seq');
ALTER TABLE audit_log ADD COLUMN chain_seq BIGINT;
UPDATE audit_log SET chain_seq = seq;
ALTER TABLE audit_log ALTER COLUMN prev_hash DROP NOT NULL;
ALTER TABLE audit_log ALTER COLUMN hash DROP NOT NULL;
CREATE UNIQUE INDEX audit_chain ON audit_log (chain_seq);
CREATE INDEX audit_unchained ON audit_log (seq) WHERE chain_seq IS NULL;
