//! Call ids made in the filter. A wasm VM has no entropy source, so each VM
//! seeds itself from what differs between VMs and starts (the time in
//! nanoseconds, its context id, Envoy's request id of the first request) and
//! hashes a counter. Ids need to be unique, not secret.

use keybrake_core::fingerprint::to_hex;
use sha2::{Digest, Sha256};

#[derive(Debug, Default, Clone)]
pub struct CallIds {
    seed: [u8; 32],
    counter: u64,
}

impl CallIds {
    pub fn seeded(material: &[u8]) -> CallIds {
        CallIds { seed: Sha256::digest(material).into(), counter: 0 }
    }

    /// `call_` + 24 hex characters.
    pub fn fresh(&mut self) -> String {
        self.counter += 1;
        let mut h = Sha256::new();
        h.update(self.seed);
        h.update(self.counter.to_le_bytes());
        let hex = to_hex(&h.finalize());
        format!("call_{}", hex.get(..24).unwrap_or(&hex))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_within_and_across_seeds() {
        let mut a = CallIds::seeded(b"vm-a");
        let mut b = CallIds::seeded(b"vm-b");
        let ids: HashSet<String> = (0..1000).flat_map(|_| [a.fresh(), b.fresh()]).collect();
        assert_eq!(ids.len(), 2000);
        assert!(ids.iter().all(|id| id.len() == 29 && id.starts_with("call_")));
    }
}
