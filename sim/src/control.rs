//! A control replica: the real `App` (authorize, settle, record calls, the
//! revocation hub and relay, the sweep) with the simulator in place of tonic
//! and of the loops' timers. What this file does itself is the transport:
//! decoding the request bytes, answering, and pumping each `WatchRevocations`
//! stream the way `grpc.rs` does (a first message, every relayed revocation, a
//! heartbeat every 250 ms, each echoing the worker's latest clock, new
//! acknowledgements into the hub, the stream closed when the hub drops a
//! laggard).

use std::collections::BTreeMap;
use std::sync::Arc;

use keybrake_control::app::{App, Limits};
use keybrake_control::revocation::{propagated, Relay, Subscription};
use keybrake_control::store::RevokeSelector;
use keybrake_control::wire as cw;
use keybrake_filter::host::Rpc;
use prost::Message;
use tokio::sync::broadcast::error::TryRecvError;

use crate::world::{Ev, Hop, NodeRef, World};

/// How often the relay runs on its own (the service's loop wakes every 20 ms;
/// pokes and acknowledgements run it at once here too). Slower only delays
/// propagation; a replica is trusted for [`keybrake_control::revocation::CACHE_TRUST`] after a read.
const RELAY_EVERY_US: i64 = 300_000;
const SWEEP_EVERY_US: i64 = 1_000_000;
const HEARTBEAT_EVERY_US: i64 = 250_000;
/// `revoke_and_propagate`'s patience. It looks every 5 ms; what it looks at
/// (the replicas' heartbeat rows) changes only when a relay records one, so
/// here it looks right after every relay iteration, and once more at the end.
const PROPAGATION_TIMEOUT_US: i64 = 5_000_000;

pub struct Link {
    sub: Subscription,
    w: NodeRef,
    token: u32,
    last_down: i64,
    /// The latest clock the worker sent, and the generation it acknowledged.
    echo: u64,
    acked: i64,
}

pub struct Replica {
    pub inc: u32,
    pub app: Option<Arc<App>>,
    relay: Option<Relay>,
    pub frozen_until: i64,
    links: BTreeMap<u64, Link>,
    pub lost_until: i64,
    /// Crash right after the next committed call, staying down this long.
    pub crash_armed: Option<i64>,
    skew_us: i64,
    poked: bool,
}

/// A revocation waiting for every worker's acknowledgement.
pub struct PendingRevoke {
    key: usize,
    /// The replica the operator's call waits on.
    r: NodeRef,
    generation: i64,
    since_ms: i64,
    started: i64,
    done: bool,
}

impl Replica {
    pub fn new(skew_us: i64) -> Replica {
        Replica {
            inc: 0,
            app: None,
            relay: None,
            frozen_until: 0,
            links: BTreeMap::new(),
            lost_until: 0,
            crash_armed: None,
            skew_us,
            poked: false,
        }
    }
}

impl World<'_> {
    fn rref(&self, i: usize) -> NodeRef {
        NodeRef { idx: i, inc: self.replicas[i].inc }
    }

    /// The live app of the replica an event is for.
    fn app_of(&self, r: NodeRef) -> Option<Arc<App>> {
        let rep = self.replicas.get(r.idx)?;
        if rep.inc != r.inc {
            return None;
        }
        rep.app.clone()
    }

    pub fn start_replica(&mut self, i: usize) {
        let limits = Limits { lease_secs: self.plan.lease_secs, ..Limits::default() };
        let app =
            Arc::new(App::new(self.store.clone(), World::vault(), self.clock_for(self.replicas[i].skew_us), limits));
        if let Err(e) = self.wait(keybrake_control::serve::prepare(&app)) {
            self.event(format!("r{i} could not start: {e}"));
            self.after(200_000, Ev::RestartReplica(i));
            return;
        }
        let relay = Relay::new(app.store.clone(), app.revocations.clone(), app.keys.clone(), app.clock.clone());
        let rep = &mut self.replicas[i];
        rep.inc += 1;
        rep.app = Some(app);
        rep.relay = Some(relay);
        rep.links.clear();
        rep.poked = false;
        let r = self.rref(i);
        self.event(format!("r{i} starts"));
        let first = self.misc.range(0, RELAY_EVERY_US);
        self.after(first, Ev::Relay { r, periodic: true });
        let first = self.misc.range(0, SWEEP_EVERY_US);
        self.after(first, Ev::Sweep(r));
    }

    /// The replica's process dies: its memory goes, calls in flight to it fail
    /// when their connections reset, its workers' streams close.
    pub fn crash_replica(&mut self, i: usize) {
        let old = self.rref(i);
        let rep = &mut self.replicas[i];
        if rep.app.is_none() {
            return;
        }
        rep.app = None;
        rep.inc += 1;
        rep.frozen_until = 0;
        let links = std::mem::take(&mut rep.links);
        for (_, link) in links {
            let d = self.latency(Hop::Control, false).unwrap_or(1_000);
            self.after(d, Ev::WatchClosed { w: link.w, token: link.token });
        }
        let mut failed: Vec<(u64, NodeRef, u32)> =
            self.rpcs.iter().filter(|(_, c)| c.r == old && !c.done).map(|(id, c)| (*id, c.w, c.token)).collect();
        failed.sort_by_key(|(id, _, _)| *id);
        for (rpc, w, token) in failed {
            let d = self.latency(Hop::Control, false).unwrap_or(1_000);
            self.after(d, Ev::GrpcDone { w, token, rpc, status: 14, body: Vec::new() });
        }
    }

    /// A worker's unary call arrives at a replica, which runs it to completion.
    pub fn rpc_arrive(&mut self, r: NodeRef, id: u64) {
        let Some(app) = self.app_of(r) else { return };
        self.last_rpc_arrival = self.now;
        let Some(call) = self.rpcs.get(&id) else { return };
        let (kind, body, w, token) = (call.rpc, call.body.clone(), call.w, call.token);
        let lost = self.replicas[r.idx].lost_until > self.now;
        let (status, reply) = match kind {
            Rpc::Authorize => match cw::AuthorizeRequest::decode(body.as_slice()) {
                Ok(req) => {
                    let key = <[u8; 32]>::try_from(req.vault_key_hash.as_slice())
                        .ok()
                        .and_then(|h| self.key_by_hash.get(&h).copied());
                    let call_id = req.call_id.clone();
                    let what = format!("{} {}", req.method, req.path);
                    let resp = self.wait(app.authorize(req));
                    let verdict = match &resp.verdict {
                        Some(cw::authorize_response::Verdict::Allow(a)) => {
                            self.hist.decided.entry(call_id.clone()).or_insert((self.now, format!("r{}", r.idx)));
                            format!("allow (upstream key {:?})", short(&a.forwarded_idempotency_key))
                        }
                        Some(cw::authorize_response::Verdict::Deny(d)) => format!("deny {}", d.code),
                        Some(cw::authorize_response::Verdict::Replay(p)) => format!("replay {}", p.http_status),
                        None => "no verdict".into(),
                    };
                    if let Some(k) = key {
                        self.call_key.insert(call_id.clone(), k);
                    }
                    let tags = self.call_tags(&call_id);
                    self.note(tags, format!("r{} decides {call_id} ({what}) with k{}: {verdict}", r.idx, opt(key)));
                    (0, resp.encode_to_vec())
                }
                Err(_) => (3, Vec::new()),
            },
            Rpc::Settle => match cw::SettleRequest::decode(body.as_slice()) {
                Ok(req) if lost => {
                    let tags = self.call_tags(&req.call_id);
                    self.note(tags, format!("r{} acknowledges the settlement of {} and loses it", r.idx, req.call_id));
                    self.hist.lost_settlements += 1;
                    (0, cw::SettleResponse {}.encode_to_vec())
                }
                Ok(req) => {
                    let (call_id, outcome, status) = (req.call_id.clone(), req.outcome, req.http_status);
                    let settled = self.wait(app.settle(req));
                    let tags = self.call_tags(&call_id);
                    self.note(
                        tags,
                        format!("r{} settles {call_id}: outcome {outcome} status {status}: {}", r.idx, ok(&settled)),
                    );
                    match settled {
                        Ok(()) => (0, cw::SettleResponse {}.encode_to_vec()),
                        Err(_) => (14, Vec::new()),
                    }
                }
                Err(_) => (3, Vec::new()),
            },
            Rpc::RecordCalls => match cw::CallRecordBatch::decode(body.as_slice()) {
                Ok(batch) if lost => {
                    let tags = batch_tags(self, &batch);
                    self.note(
                        tags,
                        format!(
                            "r{} acknowledges a batch of {} records and {} settlements and loses it",
                            r.idx,
                            batch.records.len(),
                            batch.orphaned_settlements.len()
                        ),
                    );
                    self.hist.lost_batches.extend(batch.records.iter().map(|c| c.call_id.clone()));
                    self.hist.lost_settlements += batch.orphaned_settlements.len() as u64;
                    (0, cw::RecordCallsResponse {}.encode_to_vec())
                }
                Ok(batch) => {
                    let what = format!(
                        "{} records {:?}, settlements {:?}",
                        batch.records.len(),
                        batch.records.iter().map(|c| c.call_id.as_str()).collect::<Vec<_>>(),
                        batch.orphaned_settlements.iter().map(|s| s.call_id.as_str()).collect::<Vec<_>>()
                    );
                    let tags = batch_tags(self, &batch);
                    let recorded = self.wait(app.record_calls(batch));
                    self.note(tags, format!("r{} records {what}: {}", r.idx, ok(&recorded)));
                    match recorded {
                        Ok(()) => (0, cw::RecordCallsResponse {}.encode_to_vec()),
                        Err(_) => (14, Vec::new()),
                    }
                }
                Err(_) => (3, Vec::new()),
            },
        };
        if let Some(down_ms) = self.replicas[r.idx].crash_armed.take() {
            self.event(format!("r{} crashes after committing, before its answer leaves", r.idx));
            self.crash_replica(r.idx);
            self.after(down_ms * 1000, Ev::RestartReplica(r.idx));
            return;
        }
        if let Some(d) = self.latency(Hop::Control, true) {
            self.after(d, Ev::GrpcDone { w, token, rpc: id, status, body: reply });
        }
    }

    pub fn watch_open(&mut self, r: NodeRef, link: u64) {
        let Some((w, token)) = self.watch_peer(link) else { return };
        let Some(app) = self.app_of(r) else {
            let d = self.latency(Hop::Control, false).unwrap_or(1_000);
            self.after(d, Ev::WatchClosed { w, token });
            return;
        };
        let sub = app.revocations.subscribe();
        let hello = cw::Revocation { generation: u64::try_from(sub.generation).unwrap_or(0), ..Default::default() };
        let acked = sub.generation;
        self.replicas[r.idx].links.insert(link, Link { sub, w, token, last_down: 0, echo: 0, acked });
        self.event(format!("r{} serves w{}'s revocation stream from generation {}", r.idx, w.idx, hello.generation));
        self.send_down(r.idx, link, hello.encode_to_vec());
        self.after(HEARTBEAT_EVERY_US, Ev::Beat { r, link });
    }

    /// Sends a message down a worker's stream, in order.
    fn send_down(&mut self, i: usize, link: u64, body: Vec<u8>) {
        let d = self.latency(Hop::Control, false).unwrap_or(1_000);
        let now = self.now;
        let Some(l) = self.replicas[i].links.get_mut(&link) else { return };
        let at = (now + d).max(l.last_down + 1);
        l.last_down = at;
        let (w, token) = (l.w, l.token);
        self.at(at, Ev::WatchToWorker { w, token, body });
    }

    fn close_link(&mut self, i: usize, link: u64) {
        if let Some(l) = self.replicas[i].links.remove(&link) {
            if let Some(app) = &self.replicas[i].app {
                app.revocations.unsubscribe(l.sub.id);
            }
            let d = self.latency(Hop::Control, false).unwrap_or(1_000);
            self.at((self.now + d).max(l.last_down + 1), Ev::WatchClosed { w: l.w, token: l.token });
        }
    }

    pub fn watch_to_replica(&mut self, r: NodeRef, link: u64, body: Vec<u8>) {
        let Some(app) = self.app_of(r) else { return };
        let Some(l) = self.replicas[r.idx].links.get_mut(&link) else { return };
        let Ok(ack) = cw::WatchRequest::decode(body.as_slice()) else { return };
        l.echo = l.echo.max(ack.sent_at_ms);
        let generation = i64::try_from(ack.acked_generation).unwrap_or(0);
        if generation > l.acked {
            l.acked = generation;
            app.revocations.ack(l.sub.id, generation);
            // `ack` wakes the relay.
            self.poke(r);
        }
    }

    pub fn watch_gone(&mut self, r: NodeRef, link: u64) {
        let Some(app) = self.app_of(r) else { return };
        if let Some(l) = self.replicas[r.idx].links.remove(&link) {
            app.revocations.unsubscribe(l.sub.id);
        }
    }

    pub fn beat(&mut self, r: NodeRef, link: u64) {
        if self.app_of(r).is_none() || !self.replicas[r.idx].links.contains_key(&link) {
            return;
        }
        let echo_ms = self.replicas[r.idx].links.get(&link).map(|l| l.echo).unwrap_or(0);
        let beat = cw::Revocation { heartbeat: true, echo_ms, ..Default::default() };
        self.send_down(r.idx, link, beat.encode_to_vec());
        self.after(HEARTBEAT_EVERY_US, Ev::Beat { r, link });
    }

    fn poke(&mut self, r: NodeRef) {
        if !self.replicas[r.idx].poked {
            self.replicas[r.idx].poked = true;
            self.after(10, Ev::Relay { r, periodic: false });
        }
    }

    /// One iteration of the real relay, then each stream's pump.
    pub fn relay(&mut self, r: NodeRef, periodic: bool) {
        if self.app_of(r).is_none() {
            return;
        }
        if !periodic {
            self.replicas[r.idx].poked = false;
        }
        if let Some(mut relay) = self.replicas[r.idx].relay.take() {
            self.wait(relay.step());
            self.replicas[r.idx].relay = Some(relay);
        }
        let ids: Vec<u64> = self.replicas[r.idx].links.keys().copied().collect();
        for link in ids {
            let mut out = Vec::new();
            let mut close = false;
            if let Some(l) = self.replicas[r.idx].links.get_mut(&link) {
                loop {
                    match l.sub.updates.try_recv() {
                        Ok(m) => out.push(cw::Revocation { echo_ms: l.echo, ..m }),
                        Err(TryRecvError::Empty) => break,
                        Err(_) => {
                            close = true;
                            break;
                        }
                    }
                }
                if !matches!(l.sub.kicked.try_recv(), Err(tokio::sync::oneshot::error::TryRecvError::Empty)) {
                    close = true;
                }
            }
            for m in out {
                if !m.key_hashes.is_empty() {
                    let keys: Vec<String> = m
                        .key_hashes
                        .iter()
                        .filter_map(|h| <[u8; 32]>::try_from(h.as_slice()).ok())
                        .filter_map(|h| self.key_by_hash.get(&h).map(|k| format!("k{k}")))
                        .collect();
                    let w = self.replicas[r.idx].links.get(&link).map(|l| l.w.idx).unwrap_or(0);
                    let mut tags = keys;
                    tags.push("*".into());
                    self.note(tags, format!("r{} pushes revocation {} to w{w}", r.idx, m.generation));
                }
                self.send_down(r.idx, link, m.encode_to_vec());
            }
            if close {
                let w = self.replicas[r.idx].links.get(&link).map(|l| l.w.idx).unwrap_or(0);
                self.event(format!("r{} closes w{w}'s revocation stream (behind)", r.idx));
                self.close_link(r.idx, link);
            }
        }
        self.poll_revocations();
        if periodic {
            let next = RELAY_EVERY_US + self.misc.range(0, 20_000);
            self.after(next, Ev::Relay { r, periodic: true });
        }
    }

    pub fn sweep(&mut self, r: NodeRef) {
        let Some(app) = self.app_of(r) else { return };
        match self.wait(keybrake_control::serve::sweep_once(&app)) {
            Ok((expired, _)) if expired > 0 => {
                self.event(format!("r{} sweeps: {expired} calls past their lease are uncertain", r.idx))
            }
            Ok(_) => {}
            Err(e) => self.event(format!("r{} sweep failed: {e}", r.idx)),
        }
        self.after(SWEEP_EVERY_US, Ev::Sweep(r));
    }

    /// A live replica for an operator's call: the one asked for, else the next up.
    fn admin_replica(&self, wanted: usize) -> Option<NodeRef> {
        let n = self.replicas.len();
        (0..n).map(|k| (wanted + k) % n).find(|i| self.replicas[*i].app.is_some()).map(|i| self.rref(i))
    }

    pub fn revoke(&mut self, job: usize, replica: usize) {
        let Some(j) = self.jobs.iter().position(|j| j.spec.id == job) else { return };
        let Some(&key) = self.jobs[j].keys.last() else {
            self.note(vec![format!("j{job}")], format!("revocation of j{job}'s key: it has none yet"));
            return;
        };
        let Some(r) = self.admin_replica(replica) else {
            self.after(200_000, Ev::Revoke { job, replica });
            return;
        };
        // The operator's HTTP call runs on that replica: frozen, it answers later.
        if self.replicas[r.idx].frozen_until > self.now {
            let at = self.replicas[r.idx].frozen_until + 1;
            self.at(at, Ev::Revoke { job, replica: r.idx });
            return;
        }
        let Some(app) = self.app_of(r) else { return };
        let key_id = self.keys[key].id.clone();
        let started = self.now;
        let now_ms = app.clock.now_us() / 1000;
        match self.wait(keybrake_control::admin::revoke_in_store(&app, RevokeSelector::Id(key_id))) {
            Ok((revoked, generation)) => {
                self.note(
                    vec![format!("k{key}")],
                    format!(
                        "operator revokes k{key} at r{} ({} revoked, generation {generation})",
                        r.idx,
                        revoked.len()
                    ),
                );
                if generation == 0 {
                    self.ack_revocation(key, true);
                    return;
                }
                self.poke(r);
                self.pending_revokes.push(PendingRevoke { key, r, generation, since_ms: now_ms, started, done: false });
                let pending = self.pending_revokes.len() - 1;
                self.after(PROPAGATION_TIMEOUT_US, Ev::RevokePoll { r, pending });
            }
            Err(e) => self.note(vec![format!("k{key}")], format!("revocation of k{key} failed: {e}")),
        }
    }

    /// One look at whether a revocation has propagated (after a relay
    /// iteration, or at the end of the operator's patience).
    pub fn revoke_poll(&mut self, r: NodeRef, pending: usize) {
        let Some(p) = self.pending_revokes.get(pending) else { return };
        if p.done || p.r != r {
            return;
        }
        let (key, generation, since_ms, started) = (p.key, p.generation, p.since_ms, p.started);
        if self.app_of(r).is_none() {
            self.pending_revokes[pending].done = true;
            self.note(vec![format!("k{key}")], format!("revocation of k{key}: its replica died before answering"));
            return;
        }
        match self.wait(propagated(&self.store, generation, since_ms)) {
            Ok(true) => {
                self.pending_revokes[pending].done = true;
                self.ack_revocation(key, true);
            }
            Ok(false) if self.now - started >= PROPAGATION_TIMEOUT_US => {
                self.pending_revokes[pending].done = true;
                self.ack_revocation(key, false);
            }
            Ok(false) => {}
            Err(e) => {
                self.pending_revokes[pending].done = true;
                self.note(vec![format!("k{key}")], format!("revocation of k{key}: {e}"));
            }
        }
    }

    /// Revocations waiting: each looks again (on its replica, as its own event).
    fn poll_revocations(&mut self) {
        let waiting: Vec<(usize, NodeRef)> =
            self.pending_revokes.iter().enumerate().filter(|(_, p)| !p.done).map(|(i, p)| (i, p.r)).collect();
        for (pending, r) in waiting {
            self.after(1, Ev::RevokePoll { r, pending });
        }
    }

    fn ack_revocation(&mut self, key: usize, propagated: bool) {
        self.note(
            vec![format!("k{key}")],
            format!("revocation of k{key} acknowledged to the operator (every worker acknowledged: {propagated})"),
        );
        self.hist.revoked.entry(key).or_insert((self.now, propagated));
    }

    pub fn set_fx(&mut self, currency: &'static str, rate: &'static str, replica: usize) {
        let Some(r) = self.admin_replica(replica) else {
            self.after(200_000, Ev::SetFx { currency, rate, replica });
            return;
        };
        if self.replicas[r.idx].frozen_until > self.now {
            let at = self.replicas[r.idx].frozen_until + 1;
            self.at(at, Ev::SetFx { currency, rate, replica: r.idx });
            return;
        }
        let Some(app) = self.app_of(r) else { return };
        let rates = vec![keybrake_control::model::FxRate {
            currency: currency.into(),
            usd_per_unit: rate.into(),
            as_of: "2026-01-02".into(),
        }];
        match self.wait(keybrake_control::admin::set_rates(&app, rates)) {
            Ok(()) => {
                self.event(format!("operator sets {currency} = {rate} USD at r{}", r.idx));
                self.hist.fx.push((self.now, currency.to_owned(), rate.to_owned()));
            }
            Err(e) => self.note(vec![], format!("setting {currency} failed: {e}")),
        }
    }
}

fn short(s: &str) -> String {
    s.chars().take(12).collect()
}

fn opt(k: Option<usize>) -> String {
    k.map(|k| k.to_string()).unwrap_or_else(|| "?".into())
}

fn ok<E: std::fmt::Display>(r: &Result<(), E>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("failed: {e}"),
    }
}

fn batch_tags(w: &World, batch: &cw::CallRecordBatch) -> Vec<String> {
    batch
        .records
        .iter()
        .map(|c| c.call_id.as_str())
        .chain(batch.orphaned_settlements.iter().map(|s| s.call_id.as_str()))
        .flat_map(|c| w.call_tags(c))
        .collect()
}
