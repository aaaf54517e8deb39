//! The worker's cache of keys it may decide on alone: calls that hold no
//! state (reads). It is trusted only while the worker's revocation stream is
//! connected and within [`TRUST_MS`] of a time of the worker's own that its
//! replica echoed back on it (the worker sends its clock at least every
//! 250 ms; the replica echoes the latest it got in every message). A frozen
//! replica says nothing; a stream that delays messages brings old echoes,
//! however recently they arrived: either way trust runs out within a second
//! of the last time the replica is known to have been in touch — before a
//! replica that waited a second for the worker's acknowledgement of a
//! revocation stops waiting for it. Revocations pushed on the stream evict
//! keys at once, and metadata older than the newest revocation seen is never
//! cached.

use std::collections::HashMap;

use keybrake_core::permission::{permits, CallShape, KeyTerms};
use keybrake_core::scope::Scope;
use keybrake_core::vault_key::KeyHash;
use keybrake_core::vendor::Vendor;

use crate::request::Incoming;
use crate::wire::{KeyMetadata, Revocation};

/// Entries kept before the cache starts over (a worker sees few distinct keys).
const CAPACITY: usize = 10_000;
/// How recently (by the worker's clock) the replica must have echoed a time
/// the worker sent for the cache to decide: no longer than a replica waits
/// for a worker to acknowledge a revocation (1 s) before it stops waiting,
/// and well inside the 3 s after which revokers stop waiting for a replica
/// they do not hear from.
pub const TRUST_MS: u64 = 1_000;

#[derive(Debug, Clone)]
pub struct CachedKey {
    pub metadata: KeyMetadata,
    scopes: Vec<Scope>,
    upstream: Credential,
}

/// The `Authorization` value to send upstream, kept with the key it was
/// allowed for; its Debug is redacted, so no `{:?}` of the cache shows it.
#[derive(Clone)]
struct Credential(String);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

#[derive(Debug, Default)]
pub struct KeyCache {
    connected: bool,
    generation: u64,
    /// The latest of the worker's own times (milliseconds, the host's clock)
    /// its replica echoed on the stream; 0 before any.
    echoed_ms: u64,
    entries: HashMap<KeyHash, CachedKey>,
}

impl KeyCache {
    /// Applies a pushed message heard at `now_ms`; returns the generation to acknowledge.
    pub fn apply(&mut self, r: &Revocation, now_ms: u64) -> u64 {
        // An echo of a time not yet come is no evidence of anything.
        if r.echo_ms <= now_ms {
            self.echoed_ms = self.echoed_ms.max(r.echo_ms);
        }
        if r.heartbeat {
            return self.generation;
        }
        if r.key_hashes.is_empty() {
            // The stream's first message: start over from an empty cache.
            self.entries.clear();
            self.connected = true;
            self.echoed_ms = if r.echo_ms <= now_ms { r.echo_ms } else { 0 };
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
        self.echoed_ms = 0;
        self.entries.clear();
    }

    /// The highest generation applied (what the worker acknowledges).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Caches a key the control service just allowed (with the credential its
    /// Allow carried), unless the answer may predate a revocation this worker
    /// already applied.
    pub fn remember(&mut self, hash: KeyHash, metadata: KeyMetadata, upstream_authorization: &str) {
        if !self.connected
            || metadata.revoked
            || upstream_authorization.is_empty()
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
        self.entries
            .insert(hash, CachedKey { metadata, scopes, upstream: Credential(upstream_authorization.to_owned()) });
    }

    /// The cached key, if the cache may decide at `now_ms`.
    pub fn get(&self, hash: &KeyHash, now_ms: u64) -> Option<&CachedKey> {
        let in_touch = self.echoed_ms > 0 && now_ms.saturating_sub(self.echoed_ms) < TRUST_MS;
        if self.connected && in_touch {
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
    /// The credential the control service allowed this key's reads with.
    pub fn upstream_authorization(&self) -> &str {
        &self.upstream.0
    }

    /// Whether the control service would allow this stateless call (the one
    /// rule, `keybrake_core::permission`). Anything else goes to the control
    /// service, which decides and records the refusal.
    pub fn allows(&self, incoming: &Incoming, now_secs: i64) -> bool {
        let m = &self.metadata;
        let Some(vendor) = Vendor::parse(&m.vendor) else { return false };
        let terms = KeyTerms {
            vendor,
            scopes: &self.scopes,
            allowed_accounts: &m.allowed_accounts,
            expires_at: m.expires_at,
            revoked: m.revoked,
            // A suspended key is never allowed, so never cached.
            suspended: false,
        };
        let call = CallShape {
            vendor: &incoming.vendor,
            method: incoming.method,
            path: &incoming.target.path,
            stripe_account: &incoming.stripe_account,
            stripe_context: &incoming.stripe_context,
        };
        permits(&terms, &call, now_secs).is_ok()
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
            generation,
            ..Default::default()
        }
    }

    fn hello(generation: u64, echo_ms: u64) -> Revocation {
        Revocation { generation, echo_ms, ..Default::default() }
    }

    fn beat(echo_ms: u64) -> Revocation {
        Revocation { heartbeat: true, echo_ms, ..Default::default() }
    }

    #[test]
    fn nothing_is_cached_or_served_without_the_stream() {
        let mut c = KeyCache::default();
        c.remember([1; 32], meta(0), "Bearer sk_test_real");
        assert!(c.get(&[1; 32], 100).is_none());
        c.apply(&hello(3, 100), 100);
        c.remember([1; 32], meta(3), "Bearer sk_test_real");
        assert!(c.get(&[1; 32], 100).is_some());
        c.disconnect();
        assert!(c.get(&[1; 32], 100).is_none());
        c.apply(&hello(3, 100), 100);
        assert!(c.get(&[1; 32], 100).is_none(), "a new stream starts empty");
    }

    #[test]
    fn revocations_evict_and_stale_answers_are_not_cached() {
        let mut c = KeyCache::default();
        c.apply(&hello(3, 100), 100);
        c.remember([1; 32], meta(3), "Bearer sk_test_real");
        c.remember([2; 32], meta(3), "Bearer sk_test_real");
        let revocation = Revocation { generation: 4, key_hashes: vec![vec![1; 32]], ..Default::default() };
        assert_eq!(c.apply(&revocation, 100), 4);
        assert_eq!(c.generation(), 4);
        assert!(c.get(&[1; 32], 100).is_none());
        assert!(c.get(&[2; 32], 100).is_some());
        c.remember([1; 32], meta(3), "Bearer sk_test_real");
        assert!(c.get(&[1; 32], 100).is_none(), "read before generation 4: may be revoked");
        c.remember([5; 32], meta(4), "");
        assert!(c.get(&[5; 32], 100).is_none());
    }

    #[test]
    fn a_replica_gone_silent_is_not_trusted_even_with_its_stream_open() {
        let mut c = KeyCache::default();
        c.apply(&hello(3, 10_000), 10_000);
        c.remember([1; 32], meta(3), "Bearer sk_test_real");
        assert!(c.get(&[1; 32], 10_500).is_some());
        assert!(c.get(&[1; 32], 10_000 + TRUST_MS).is_none(), "frozen or cut off: decided by the control service");
        // A heartbeat echoes a recent time: trusted again, nothing applied, the generation unchanged.
        assert_eq!(c.apply(&beat(11_900), 12_000), 3);
        assert!(c.get(&[1; 32], 12_100).is_some(), "a heartbeat neither clears the cache nor moves the generation");
    }

    /// Found by the deterministic simulator (`sim --seed 5943`, before the
    /// fix): a stream delayed by over a second kept bringing heartbeats, so the
    /// worker trusted its cache while the revocation waited behind them; its
    /// replica had stopped waiting for it after a second, and the revocation
    /// was acknowledged before the worker's next read with the key.
    #[test]
    fn a_delayed_stream_is_not_trusted_however_recently_its_messages_arrived() {
        let mut c = KeyCache::default();
        c.apply(&hello(3, 10_000), 10_000);
        c.remember([1; 32], meta(3), "Bearer sk_test_real");
        // Heartbeats keep arriving, but what they echo is from 1.5 s ago.
        assert_eq!(c.apply(&beat(10_100), 11_600), 3);
        assert!(c.get(&[1; 32], 11_600).is_none());
        assert_eq!(c.apply(&beat(10_250), 11_750), 3);
        assert!(c.get(&[1; 32], 11_750).is_none());
        // Nothing echoed yet, or a time not yet come: no trust.
        c.apply(&hello(4, 0), 20_000);
        c.remember([1; 32], meta(4), "Bearer sk_test_real");
        assert!(c.get(&[1; 32], 20_000).is_none());
        c.apply(&beat(99_999), 20_000);
        assert!(c.get(&[1; 32], 20_000).is_none());
        c.apply(&beat(19_990), 20_000);
        assert!(c.get(&[1; 32], 20_000).is_some());
    }
}
