//! The worker's cache of keys it may decide on alone: calls that hold no
//! state (reads). It is trusted only while the worker's revocation stream is
//! connected; revocations pushed on it evict keys at once, and metadata
//! older than the newest revocation seen is never cached.

use std::collections::HashMap;

use keybrake_core::account;
use keybrake_core::scope::{any_matches, Scope};
use keybrake_core::vault_key::KeyHash;

use crate::request::Incoming;
use crate::wire::{KeyMetadata, Revocation};

/// Entries kept before the cache starts over (a worker sees few distinct keys).
const CAPACITY: usize = 10_000;

#[derive(Debug, Clone)]
pub struct CachedKey {
    pub metadata: KeyMetadata,
    scopes: Vec<Scope>,
}

#[derive(Debug, Default)]
pub struct KeyCache {
    connected: bool,
    generation: u64,
    entries: HashMap<KeyHash, CachedKey>,
}

impl KeyCache {
    /// Applies a pushed message; returns the generation to acknowledge.
    pub fn apply(&mut self, r: &Revocation) -> u64 {
        if r.key_hashes.is_empty() {
            // The stream's first message: start over from an empty cache.
            self.entries.clear();
            self.connected = true;
        } else {
            for h in &r.key_hashes {
                if let Ok(hash) = KeyHash::try_from(h.as_slice()) {
                    self.entries.remove(&hash);
                }
            }
        }
        self.generation = self.generation.max(r.generation);
        self.generation
    }

    /// Without its stream the cache could miss a revocation: forget everything.
    pub fn disconnect(&mut self) {
        self.connected = false;
        self.entries.clear();
    }

    /// Caches a key the control service just allowed, unless the answer may
    /// predate a revocation this worker already applied.
    pub fn remember(&mut self, hash: KeyHash, metadata: KeyMetadata) {
        if !self.connected
            || metadata.revoked
            || metadata.upstream_authorization.is_empty()
            || metadata.generation < self.generation
        {
            return;
        }
        let Ok(scopes) = metadata.allowed_endpoints.iter().map(|s| s.parse()).collect::<Result<Vec<Scope>, _>>() else {
            return;
        };
        if self.entries.len() >= CAPACITY {
            self.entries.clear();
        }
        self.entries.insert(hash, CachedKey { metadata, scopes });
    }

    pub fn get(&self, hash: &KeyHash) -> Option<&CachedKey> {
        if self.connected {
            self.entries.get(hash)
        } else {
            None
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl CachedKey {
    /// Whether the control service would allow this stateless call: same
    /// vendor, not expired, in scope, account allowed. Anything else goes to
    /// the control service, which decides and records the refusal.
    pub fn allows(&self, incoming: &Incoming, now_secs: i64) -> bool {
        let m = &self.metadata;
        m.vendor == incoming.vendor
            && !m.revoked
            && now_secs < m.expires_at
            && any_matches(&self.scopes, incoming.method, &incoming.target.path)
            && account::check(&m.allowed_accounts, &incoming.stripe_account, &incoming.stripe_context).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(generation: u64) -> KeyMetadata {
        KeyMetadata {
            key_id: "key_1".into(),
            vendor: "stripe".into(),
            allowed_endpoints: vec!["GET /v1/charges/*".into()],
            expires_at: 2_000_000_000,
            upstream_authorization: "Bearer sk_test_x".into(),
            generation,
            ..Default::default()
        }
    }

    fn hello(generation: u64) -> Revocation {
        Revocation { generation, key_hashes: vec![] }
    }

    #[test]
    fn nothing_is_cached_or_served_without_the_stream() {
        let mut c = KeyCache::default();
        c.remember([1; 32], meta(0));
        assert!(c.get(&[1; 32]).is_none());
        c.apply(&hello(3));
        c.remember([1; 32], meta(3));
        assert!(c.get(&[1; 32]).is_some());
        c.disconnect();
        assert!(c.get(&[1; 32]).is_none());
        c.apply(&hello(3));
        assert!(c.get(&[1; 32]).is_none(), "a new stream starts empty");
    }

    #[test]
    fn revocations_evict_and_stale_answers_are_not_cached() {
        let mut c = KeyCache::default();
        c.apply(&hello(3));
        c.remember([1; 32], meta(3));
        c.remember([2; 32], meta(3));
        assert_eq!(c.apply(&Revocation { generation: 4, key_hashes: vec![vec![1; 32]] }), 4);
        assert!(c.get(&[1; 32]).is_none());
        assert!(c.get(&[2; 32]).is_some());
        c.remember([1; 32], meta(3));
        assert!(c.get(&[1; 32]).is_none(), "read before generation 4: may be revoked");
        let mut no_key = meta(4);
        no_key.upstream_authorization.clear();
        c.remember([5; 32], no_key);
        assert!(c.get(&[5; 32]).is_none());
    }
}
