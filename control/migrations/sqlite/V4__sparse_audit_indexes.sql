-- Most audit rows have no idempotency key, forwarded key, fingerprint or object
-- id: index only the rows that do, so each insert dirties fewer index pages.
DROP INDEX audit_idem;
DROP INDEX audit_fwd_idem;
DROP INDEX audit_fingerprint;
DROP INDEX audit_object;
CREATE INDEX audit_idem ON audit_log (idempotency_key) WHERE idempotency_key != '';
CREATE INDEX audit_fwd_idem ON audit_log (forwarded_idempotency_key) WHERE forwarded_idempotency_key != '';
CREATE INDEX audit_fingerprint ON audit_log (fingerprint) WHERE fingerprint != '';
CREATE INDEX audit_object ON audit_log (object_id) WHERE object_id != '';
