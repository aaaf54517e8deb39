//! The control service's cache of vault keys by hash, so that deciding a call
//! costs no read of the store. Keys never change except by revocation, and a
//! revocation evicts here before it is acknowledged: locally when this
//! replica revokes, from the revocation relay when another replica did (the
//! revoking call waits for every replica's acknowledgement). Expiry is checked
//! on every use, not here.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::model::KeyRecord;

/// Entries kept before the cache starts over.
const CAPACITY: usize = 100_000;

#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<[u8; 32], KeyRecord>>,
}

impl KeyCache {
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
