//! The worker's root context as plain code: configuration and call-id
//! seeding, the outbox drain (one batch in flight, requeued with backoff on
//! failure), and the revocation stream that keeps the key cache trustworthy.
//! Every host interaction goes through [`RootHost`]; `glue.rs` only forwards
//! proxy-wasm's root callbacks here, and the tests drive it through
//! `mock::MockRootHost`.

use std::cell::RefCell;
use std::rc::Rc;

use prost::Message;

use crate::backoff::Backoff;
use crate::call_ids::CallIds;
use crate::config::FilterConfig;
use crate::flow::Flow;
use crate::host::{Counter, RootHost, Rpc};
use crate::key_cache::KeyCache;
use crate::outbox::Outbox;
use crate::wire::{CallRecordBatch, Revocation, WatchRequest};

/// The shortest wait between two attempts to open the revocation stream.
pub const WATCH_RETRY_MS: u64 = 1_000;
/// How often, at most, the worker sends its clock on the revocation stream
/// for its replica to echo (on the tick: every 100 ms by default).
pub const PING_EVERY_MS: u64 = 250;

/// The per-worker root context: configuration, the outbox drain, the key
/// cache's revocation stream, and what its HTTP streams share.
#[derive(Default)]
pub struct Root {
    config: Rc<FilterConfig>,
    outbox: Rc<RefCell<Outbox>>,
    ids: Rc<RefCell<CallIds>>,
    cache: Rc<RefCell<KeyCache>>,
    in_flight: Option<(u32, CallRecordBatch)>,
    /// After a failed delivery, wait before the next (the control service may be struggling).
    backoff: Backoff,
    reported_drops: u64,
    /// The open revocation stream, and when the last attempt to open one was made.
    watch: Option<u32>,
    watch_tried_at: Option<u64>,
    /// When the worker last sent on the revocation stream.
    watch_sent_at: u64,
}

impl Root {
    /// Reads the plugin configuration; false (and a log line) when it is invalid.
    pub fn configure(&mut self, host: &mut impl RootHost, bytes: &[u8]) -> bool {
        let config = match FilterConfig::parse(bytes) {
            Ok(config) => config,
            Err(e) => {
                host.log_error(&format!("keybrake: {e}"));
                return false;
            }
        };
        // Seed this VM's call ids with the host's randomness: the time alone
        // was seen to seed two workers' VMs alike, and a call id used twice
        // settles the wrong call. The time stays in as a fallback for a host
        // without `random_get`.
        let mut material = match host.random_bytes() {
            Some(random) => random.to_vec(),
            None => {
                host.log_warn("keybrake: the host gave no random bytes; call ids are seeded from the time");
                Vec::new()
            }
        };
        material.extend_from_slice(&u128::from(host.now_nanos()).to_le_bytes());
        material.extend_from_slice(&bytes.len().to_le_bytes());
        if let Ok(mut ids) = self.ids.try_borrow_mut() {
            *ids = CallIds::seeded(&material);
        }
        if let Ok(mut outbox) = self.outbox.try_borrow_mut() {
            outbox.set_limit(config.audit_queue_limit);
        }
        host.set_tick_period(config.audit_flush_interval_ms);
        self.config = Rc::new(config);
        true
    }

    pub fn on_tick(&mut self, host: &mut impl RootHost) {
        self.flush(host);
        self.watch_revocations(host);
    }

    /// A new HTTP stream's flow, sharing this worker's outbox and key cache.
    pub fn new_flow(&self) -> Flow {
        Flow::new(self.config.clone(), self.outbox.clone(), self.cache.clone())
    }

    pub fn config(&self) -> &FilterConfig {
        &self.config
    }

    /// The worker's call ids (its HTTP streams' hosts make ids from them).
    pub fn ids(&self) -> Rc<RefCell<CallIds>> {
        self.ids.clone()
    }

    /// Sends one batch from the outbox, if none is in flight.
    fn flush(&mut self, host: &mut impl RootHost) {
        if self.in_flight.is_some() || !self.backoff.ready(now_millis(host)) {
            return;
        }
        let Ok(mut outbox) = self.outbox.try_borrow_mut() else {
            return;
        };
        let dropped = outbox.dropped.saturating_sub(self.reported_drops);
        if dropped > 0 {
            host.count(Counter::AuditDropped, dropped);
        }
        self.reported_drops = outbox.dropped;
        let Some(batch) = outbox.take_batch(self.config.audit_batch_size) else {
            return;
        };
        let bytes = batch.encode_to_vec();
        match host.dispatch(&self.config.control_cluster, Rpc::RecordCalls, &bytes, self.config.settle_timeout_ms) {
            Some(token) => self.in_flight = Some((token, batch)),
            None => outbox.requeue(batch),
        }
    }

    /// Opens the revocation stream if it is not open (at most once a second);
    /// on an open one, sends the worker's clock every [`PING_EVERY_MS`].
    fn watch_revocations(&mut self, host: &mut impl RootHost) {
        let now = now_millis(host);
        if let Some(token) = self.watch {
            if now.saturating_sub(self.watch_sent_at) >= PING_EVERY_MS {
                let generation = self.cache.try_borrow().map(|c| c.generation()).unwrap_or(0);
                self.send_watch(host, token, generation);
            }
            return;
        }
        if self.watch_tried_at.is_some_and(|t| now.saturating_sub(t) < WATCH_RETRY_MS) {
            return;
        }
        self.watch_tried_at = Some(now);
        match host.open_revocation_stream(&self.config.control_cluster) {
            Some(token) => {
                self.watch = Some(token);
                self.send_watch(host, token, 0);
            }
            None => host.log_warn("keybrake: cannot open the revocation stream; reads go to the control service"),
        }
    }

    /// A message on a gRPC stream: on the revocation stream, a revocation to
    /// apply and acknowledge; anything unreadable ends the stream and the
    /// cache's trust.
    pub fn on_grpc_stream_message(&mut self, host: &mut impl RootHost, token: u32, size: usize) {
        if self.watch != Some(token) {
            return;
        }
        let bytes = host.grpc_message(size).unwrap_or_default();
        let Ok(revocation) = Revocation::decode(bytes.as_slice()) else {
            // Unreadable: stop trusting the cache until a new stream starts over.
            if let Ok(mut cache) = self.cache.try_borrow_mut() {
                cache.disconnect();
            }
            host.cancel_stream(token);
            self.watch = None;
            return;
        };
        let heard_at_ms = host.now_nanos() / 1_000_000;
        let acked = match self.cache.try_borrow_mut() {
            Ok(mut cache) => cache.apply(&revocation, heard_at_ms),
            Err(_) => return,
        };
        if !revocation.heartbeat {
            self.send_watch(host, token, acked);
        }
    }

    /// Tells the replica which revocations this worker applied, and the
    /// worker's clock for it to echo (see [`KeyCache`]).
    fn send_watch(&mut self, host: &mut impl RootHost, token: u32, generation: u64) {
        let now = now_millis(host);
        self.watch_sent_at = now;
        let msg = WatchRequest { acked_generation: generation, sent_at_ms: now };
        host.send_stream_message(token, &msg.encode_to_vec());
    }

    pub fn on_grpc_stream_close(&mut self, token: u32) {
        if self.watch == Some(token) {
            self.watch = None;
            if let Ok(mut cache) = self.cache.try_borrow_mut() {
                cache.disconnect();
            }
        }
    }

    /// The answer to a batch: counted when delivered (and the next one sent at
    /// once), requeued ahead of newer items with backoff when not.
    pub fn on_grpc_call_response(&mut self, host: &mut impl RootHost, token: u32, status: u32) {
        match self.in_flight.take() {
            Some((t, batch)) if t == token => {
                if status == 0 {
                    let n = batch.records.len() + batch.orphaned_settlements.len();
                    host.count(Counter::OutboxDelivered, n as u64);
                    self.backoff.succeeded();
                    // Delivered: send the next batch now rather than at the next tick.
                    if !self.outbox_empty() {
                        self.flush(host);
                    }
                } else {
                    if self.backoff.failed(now_millis(host)) {
                        host.log_warn("keybrake: audit batch not delivered; retrying with backoff");
                    }
                    if let Ok(mut outbox) = self.outbox.try_borrow_mut() {
                        outbox.requeue(batch);
                    }
                }
            }
            other => self.in_flight = other,
        }
    }

    /// Envoy is stopping this VM. On a worker this runs after its event loop
    /// stopped, so nothing can be sent any more: a clean shutdown drains Envoy
    /// first (see `scripts/run-local.sh`), giving the tick time to flush. What
    /// is still queued here is reported, not silently dropped.
    pub fn on_done(&mut self, host: &mut impl RootHost) -> bool {
        let left = self.outbox.try_borrow().map(|o| o.len()).unwrap_or(0);
        if left > 0 {
            host.log_warn(&format!(
                "keybrake: {left} audit records or settlements undelivered at shutdown (drain Envoy before stopping it)"
            ));
        }
        true
    }

    fn outbox_empty(&self) -> bool {
        self.outbox.try_borrow().map(|o| o.is_empty()).unwrap_or(false)
    }
}

fn now_millis(host: &impl RootHost) -> u64 {
    host.now_nanos() / 1_000_000
}

#[cfg(test)]
#[path = "root_tests.rs"]
mod tests;
