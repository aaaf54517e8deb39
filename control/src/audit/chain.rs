//! The audit log's hash chain: each row carries the SHA-256 of the previous
//! row, so an edited, removed or reordered row breaks every link after it.

use keybrake_core::fingerprint::to_hex;
use sha2::{Digest, Sha256};

use crate::model::{AuditEntry, AuditRow};

/// `prev_hash` of the first row.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The hash of row `seq` holding `entry`, chained after `prev_hash`.
pub fn link(prev_hash: &str, seq: i64, entry: &AuditEntry) -> String {
    let mut h = Sha256::new();
    h.update(b"keybrake-audit-v1\n");
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(seq.to_string().as_bytes());
    h.update(b"\n");
    // Field order of `AuditEntry` is fixed, so its JSON is canonical.
    h.update(serde_json::to_vec(entry).unwrap_or_default());
    to_hex(&h.finalize())
}

/// Where a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub seq: i64,
    pub reason: &'static str,
}

/// Checks `rows` (consecutive chain positions, in order) continuing a chain
/// whose last verified row is at `prev_pos` with hash `prev_hash`. A break is
/// reported by the row's `seq` (the id the API shows).
pub fn verify_rows(prev_pos: i64, prev_hash: &str, rows: &[AuditRow]) -> Result<(i64, String), Break> {
    let mut pos = prev_pos;
    let mut hash = prev_hash.to_owned();
    for row in rows {
        let here = row.chain_seq.unwrap_or(-1);
        if here != pos + 1 {
            return Err(Break { seq: row.seq, reason: "a row is missing before this one" });
        }
        if row.prev_hash != hash {
            return Err(Break { seq: row.seq, reason: "prev_hash does not match the previous row" });
        }
        if link(&row.prev_hash, here, &row.entry) != row.hash {
            return Err(Break { seq: row.seq, reason: "the row's content does not match its hash" });
        }
        pos = here;
        hash = row.hash.clone();
    }
    Ok((pos, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditRow> {
        let mut prev = GENESIS.to_owned();
        (1..=n)
            .map(|seq| {
                let entry = AuditEntry { call_id: format!("c{seq}"), usd_micros: Some(seq * 10), ..Default::default() };
                let hash = link(&prev, seq, &entry);
                let row = AuditRow { seq, chain_seq: Some(seq), prev_hash: prev.clone(), hash: hash.clone(), entry };
                prev = hash;
                row
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let rows = chain(5);
        assert_eq!(verify_rows(0, GENESIS, &rows).unwrap().0, 5);
    }

    #[test]
    fn edits_removals_and_reorders_are_found() {
        let mut edited = chain(5);
        edited[2].entry.usd_micros = Some(1);
        assert_eq!(verify_rows(0, GENESIS, &edited).unwrap_err().seq, 3);
        let mut removed = chain(5);
        removed.remove(1);
        assert_eq!(verify_rows(0, GENESIS, &removed).unwrap_err().seq, 3);
        let mut rehashed = chain(5);
        rehashed[1].entry.reason = "forged".into();
        rehashed[1].hash = link(&rehashed[1].prev_hash, 2, &rehashed[1].entry);
        assert_eq!(verify_rows(0, GENESIS, &rehashed).unwrap_err().seq, 3);
    }
}
