//! Call ids made in the filter. A wasm VM has no entropy source, so each VM
//! seeds itself from what differs between VMs and starts (the time in
//! nanoseconds, an address, the configuration's size) and numbers its calls:
//! `call_` + 16 hex digits of the seed's hash + 12 of a counter. Ids need to
//! be unique, not secret, and making one costs no hashing.

use keybrake_core::fingerprint::to_hex;
use sha2::{Digest, Sha256};

#[derive(Debug, Default, Clone)]
pub struct CallIds {
    prefix: String,
    counter: u64,
}

impl CallIds {
    pub fn seeded(material: &[u8]) -> CallIds {
        let seed = to_hex(&Sha256::digest(material));
        CallIds { prefix: format!("call_{}", seed.get(..16).unwrap_or(&seed)), counter: 0 }
    }

    /// `call_` + 16 + 12 hex digits.
    pub fn fresh(&mut self) -> String {
        self.counter += 1;
        format!("{}{:012x}", self.prefix, self.counter & 0xffff_ffff_ffff)
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
        assert!(ids.iter().all(|id| id.len() == 33 && id.starts_with("call_")));
    }
}
