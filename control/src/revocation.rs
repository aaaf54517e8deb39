//! Keeping the Envoy workers' key caches honest. Each worker caches the
//! metadata of keys it may decide on alone (reads) and holds a
//! `WatchRevocations` stream open to one replica. A revocation is written to
//! the store's revocation log; every replica relays new log entries to its
//! watchers, waits for their acks, and records how far they got. The admin
//! call that revoked returns once every live replica reports its watchers
//! applied it — so the very next request through any worker is refused.
//! A watcher that falls behind is disconnected, and a worker without its
//! stream decides nothing from its cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, oneshot, Notify};

use crate::clock::Clock;
use crate::replica_cache::ReplicaCache;
use crate::store::{Store, StoreResult};
use crate::wire::Revocation;

/// How long a watcher may lag behind before it is disconnected.
const ACK_DEADLINE: Duration = Duration::from_secs(1);
/// How recently this replica must have read the revocation log to decide from
/// its key cache: well inside LIVE_WINDOW_MS, after which a revoker stops
/// waiting for a replica it has not heard from (paused, partitioned, swapped
/// out). Past it, keys are read from the store.
pub const CACHE_TRUST: Duration = Duration::from_secs(1);
/// Replicas heard from within this are waited for.
const LIVE_WINDOW_MS: i64 = 3_000;
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

struct Watcher {
    acked: i64,
    behind_since: Option<Instant>,
    kick: Option<oneshot::Sender<Kick>>,
}

/// Why a worker's stream is closed by this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// It fell behind on revocations: it must start over with an empty cache.
    Lagging,
    /// The replica is stopping: streams end so that it can.
    ShuttingDown,
}

/// A worker's subscription.
pub struct Subscription {
    pub id: u64,
    pub generation: i64,
    pub updates: broadcast::Receiver<Revocation>,
    /// Fires when the worker is disconnected (lagging, or the replica stopping).
    pub kicked: oneshot::Receiver<Kick>,
}

pub struct Revocations {
    replica_id: String,
    relayed: AtomicI64,
    tx: broadcast::Sender<Revocation>,
    watchers: Mutex<HashMap<u64, Watcher>>,
    next_id: AtomicU64,
    wake: Notify,
    /// When the relay last read the revocation log.
    synced: Mutex<Option<Instant>>,
}

impl Revocations {
    pub fn new(replica_id: String, generation: i64) -> Revocations {
        let (tx, _) = broadcast::channel(1024);
        Revocations {
            replica_id,
            relayed: AtomicI64::new(generation),
            tx,
            watchers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            wake: Notify::new(),
            synced: Mutex::new(None),
        }
    }

    /// The generation this replica's watchers have been sent.
    pub fn generation(&self) -> i64 {
        self.relayed.load(Ordering::SeqCst)
    }

    pub fn subscribe(&self) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let updates = self.tx.subscribe();
        let generation = self.generation();
        let (kick, kicked) = oneshot::channel();
        if let Ok(mut w) = self.watchers.lock() {
            w.insert(id, Watcher { acked: generation, behind_since: None, kick: Some(kick) });
        }
        Subscription { id, generation, updates, kicked }
    }

    pub fn ack(&self, id: u64, generation: i64) {
        if let Ok(mut w) = self.watchers.lock() {
            if let Some(watcher) = w.get_mut(&id) {
                watcher.acked = watcher.acked.max(generation);
            }
        }
        self.wake.notify_one();
    }

    pub fn unsubscribe(&self, id: u64) {
        if let Ok(mut w) = self.watchers.lock() {
            w.remove(&id);
        }
        self.wake.notify_one();
    }

    /// Closes every worker's stream: a stopping replica's graceful shutdown
    /// waits for open streams, and these never end on their own. The workers
    /// forget their caches and reconnect (to another replica, or this one restarted).
    pub fn disconnect_all(&self) {
        if let Ok(mut w) = self.watchers.lock() {
            for watcher in w.values_mut() {
                if let Some(kick) = watcher.kick.take() {
                    let _ = kick.send(Kick::ShuttingDown);
                }
            }
        }
    }

    pub fn watcher_count(&self) -> usize {
        self.watchers.lock().map(|w| w.len()).unwrap_or(0)
    }

    /// Starts relaying after `generation` (the log's newest entry at start).
    pub fn fast_forward(&self, generation: i64) {
        self.relayed.fetch_max(generation, Ordering::SeqCst);
    }

    /// Whether the relay read the revocation log within `within` before
    /// `now`: only then may keys be decided from this replica's cache.
    pub fn in_sync(&self, now: Instant, within: Duration) -> bool {
        self.synced.lock().ok().and_then(|s| *s).is_some_and(|at| now.saturating_duration_since(at) < within)
    }

    fn mark_synced(&self, at: Instant) {
        if let Ok(mut s) = self.synced.lock() {
            *s = Some(at);
        }
    }

    /// Asks the relay to look at the log now.
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// How far every watcher got; disconnects the ones lagging too long.
    fn acked_by_all(&self, now: Instant) -> i64 {
        let relayed = self.generation();
        let Ok(mut w) = self.watchers.lock() else { return 0 };
        let mut acked = relayed;
        w.retain(|_, watcher| {
            if watcher.acked >= relayed {
                watcher.behind_since = None;
                return true;
            }
            let since = *watcher.behind_since.get_or_insert(now);
            if now.duration_since(since) > ACK_DEADLINE {
                if let Some(kick) = watcher.kick.take() {
                    let _ = kick.send(Kick::Lagging);
                }
                return false;
            }
            acked = acked.min(watcher.acked);
            true
        });
        acked
    }
}

/// The relay: pushes new revocations from the log to this replica's watchers
/// and records in the store how far they applied them. It needs four parts
/// of the replica, not the replica.
pub struct Relay {
    pub store: Store,
    pub hub: Arc<Revocations>,
    pub keys: Arc<ReplicaCache>,
    pub clock: Arc<dyn Clock>,
    last_beat: Option<(i64, Instant)>,
}

impl Relay {
    pub fn new(store: Store, hub: Arc<Revocations>, keys: Arc<ReplicaCache>, clock: Arc<dyn Clock>) -> Relay {
        Relay { store, hub, keys, clock, last_beat: None }
    }

    /// Relays for as long as the replica runs.
    pub async fn run(mut self) {
        loop {
            let _ = tokio::time::timeout(Duration::from_millis(20), self.hub.wake.notified()).await;
            self.step().await;
        }
    }

    /// One pass: new log entries evicted and pushed, then the heartbeat when due.
    /// [`Relay::run`] runs it every 20 ms and when poked or acknowledged; the
    /// deterministic simulator (`sim/`) runs it as one of its events.
    pub async fn step(&mut self) {
        let (store, hub) = (&self.store, &self.hub);
        let after = hub.generation();
        let reading = self.clock.monotonic();
        match store.read(move |l| l.revocations_after(after, 256)).await {
            Ok(rows) => {
                for (generation, hashes) in rows {
                    // Evicted before anyone acknowledges it (this replica's heartbeat below).
                    self.keys.evict(&hashes);
                    hub.relayed.store(generation, Ordering::SeqCst);
                    let _ = hub.tx.send(Revocation {
                        generation: generation as u64,
                        key_hashes: hashes.iter().map(|h| h.to_vec()).collect(),
                        ..Default::default()
                    });
                }
                // In sync as of the read's start: a revocation committed after it is not seen yet.
                hub.mark_synced(reading);
            }
            Err(e) => tracing::warn!(error = %e, "revocation relay: cannot read the log"),
        }
        let now = self.clock.monotonic();
        let acked = hub.acked_by_all(now);
        let due = match self.last_beat {
            Some((a, at)) => a != acked || now.saturating_duration_since(at) >= HEARTBEAT_EVERY,
            None => true,
        };
        if due {
            let (replica, now_ms) = (hub.replica_id.clone(), self.clock.now_us() / 1000);
            match store.write_applied(move |l| l.heartbeat(&replica, acked, now_ms)).await {
                Ok(()) => self.last_beat = Some((acked, now)),
                Err(e) => tracing::warn!(error = %e, "revocation relay: cannot record the heartbeat"),
            }
        }
    }
}

/// Whether every replica heard from since `now_ms - LIVE_WINDOW_MS` reports
/// its watchers applied `generation` (and there is one): one look at what
/// [`wait_propagated`] waits for.
pub async fn propagated(store: &Store, generation: i64, now_ms: i64) -> StoreResult<bool> {
    let since = now_ms - LIVE_WINDOW_MS;
    let replicas = store.read(move |l| l.live_replicas(since)).await?;
    Ok(replicas.iter().all(|(_, acked)| *acked >= generation) && !replicas.is_empty())
}

/// Waits until every live replica's watchers applied `generation`; false on timeout.
pub async fn wait_propagated(
    store: &Store,
    hub: &Revocations,
    generation: i64,
    now_ms: i64,
    timeout: Duration,
) -> StoreResult<bool> {
    hub.poke();
    let deadline = Instant::now() + timeout;
    loop {
        if propagated(store, generation, now_ms).await? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slowest_watcher_decides_and_a_laggard_is_kicked() {
        let hub = Revocations::new("r1".into(), 5);
        let mut a = hub.subscribe();
        let b = hub.subscribe();
        assert_eq!(hub.acked_by_all(Instant::now()), 5);
        hub.relayed.store(6, Ordering::SeqCst);
        hub.ack(a.id, 6);
        assert_eq!(hub.acked_by_all(Instant::now()), 5, "b has not applied 6");
        hub.ack(b.id, 6);
        assert_eq!(hub.acked_by_all(Instant::now()), 6);
        hub.relayed.store(7, Ordering::SeqCst);
        if let Ok(mut w) = hub.watchers.lock() {
            for watcher in w.values_mut() {
                watcher.behind_since = Some(Instant::now() - ACK_DEADLINE * 2);
            }
        }
        assert_eq!(hub.acked_by_all(Instant::now()), 7, "laggards are dropped, not waited for");
        assert_eq!(hub.watcher_count(), 0);
        assert!(a.kicked.try_recv().is_ok());
    }

    #[test]
    fn the_cache_is_trusted_only_right_after_a_read_of_the_log() {
        let hub = Revocations::new("r1".into(), 0);
        let now = Instant::now();
        assert!(!hub.in_sync(now, CACHE_TRUST), "never read: not in sync");
        hub.mark_synced(now);
        assert!(hub.in_sync(now, CACHE_TRUST));
        assert!(hub.in_sync(now + CACHE_TRUST / 2, CACHE_TRUST));
        hub.mark_synced(now - CACHE_TRUST * 2);
        assert!(!hub.in_sync(now, CACHE_TRUST), "a replica that was paused or starved decides from the store");
    }
}
