//! Call ids made in the filter. Each worker VM seeds itself once, when it is
//! configured, from 16 bytes of the host's CSPRNG (WASI's `random_get`, which
//! Envoy gives every module) with the time and the configuration's size mixed
//! in, and numbers its calls: `call_` + 16 hex digits of the seed's hash + 12
//! of a counter. Ids need to be unique, not secret, and making one costs no
//! hashing. A VM that was never seeded makes none: a call without an id of
//! its own is refused (see [`crate::flow::Flow`]), never given one another
//! VM might also use.

use sha2::{Digest, Sha256};

#[derive(Debug, Default, Clone)]
pub struct CallIds {
    /// `call_` + 16 hex digits; `None` until seeded.
    prefix: Option<String>,
    counter: u64,
}

impl CallIds {
    pub fn seeded(material: &[u8]) -> CallIds {
        let digest = Sha256::digest(material);
        let seed = hex::encode(digest.get(..8).unwrap_or_default());
        CallIds { prefix: Some(format!("call_{seed}")), counter: 0 }
    }

    /// `call_` + 16 + 12 hex digits, or `None` if this VM was never seeded.
    pub fn fresh(&mut self) -> Option<String> {
        let prefix = self.prefix.as_ref()?;
        self.counter += 1;
        Some(format!("{prefix}{:012x}", self.counter & 0xffff_ffff_ffff))
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
        let ids: HashSet<String> = (0..1000).flat_map(|_| [a.fresh().unwrap(), b.fresh().unwrap()]).collect();
        assert_eq!(ids.len(), 2000);
        assert!(ids.iter().all(|id| id.len() == 33 && id.starts_with("call_")));
    }

    #[test]
    fn the_seed_is_the_first_eight_bytes_of_its_hash() {
        let expected = &hex::encode(Sha256::digest(b"vm-a"))[..16];
        assert_eq!(CallIds::seeded(b"vm-a").fresh().unwrap(), format!("call_{expected}000000000001"));
    }

    #[test]
    fn an_unseeded_vm_makes_no_ids() {
        let mut ids = CallIds::default();
        assert_eq!(ids.fresh(), None);
        assert_eq!(ids.fresh(), None, "and never the same one twice");
    }
}
