//! The replica's cache of vault keys by hash (the Envoy workers have caches of
//! their own, `src/key_cache.rs`), so that deciding a call costs no read of
//! the store. A key changes only by revocation, suspension or reinstatement,
//! each written to the revocation log, and evicted here before it is
//! acknowledged: locally when this replica made the change, from the
//! revocation relay when another did (the change waits for every live
//! replica's acknowledgement; a replica that fell behind the log decides from
//! the store instead, `revocation::CACHE_TRUST`). Expiry is checked on every
//! use, not here.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::model::KeyRecord;

/// Entries kept before the cache starts over.
const CAPACITY: usize = 100_000;

#[derive(Default)]
pub struct ReplicaCache {
    entries: Mutex<HashMap<[u8; 32], KeyRecord>>,
}

impl ReplicaCache {
    pub fn get(&self, hash: &[u8; 32]) -> Option<KeyRecord> {
        self.entries.lock().ok()?.get(hash).cloned()
    }

    /// Remembers a key read from the store (revoked keys too: they are final).
    pub fn insert(&self, key: KeyRecord) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CAPACITY {
                entries.clear();
            }
            entries.insert(key.key_hash, key);
        }
    }

    pub fn evict(&self, hashes: &[[u8; 32]]) {
        if let Ok(mut entries) = self.entries.lock() {
            for h in hashes {
                entries.remove(h);
            }
        }
    }
}
