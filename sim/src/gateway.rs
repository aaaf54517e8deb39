//! An Envoy worker: the real filter (`Root`, one `Flow` per HTTP stream, their
//! outbox and key cache) behind the real `Host` and `RootHost` traits, with
//! the simulator in place of Envoy: the HTTP codec and router, the gRPC client
//! (a deadline per call, a reset when the replica's connection drops), the
//! load balancing over replicas, and the upstream connection.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;

use keybrake_filter::call_ids::CallIds;
use keybrake_filter::flow::Flow;
use keybrake_filter::host::{header, Counter, Host, RootHost, Rpc, Step};
use keybrake_filter::root::Root;
use prost::Message;

use crate::rng::Rng;
use crate::world::{Answer, Ev, Hop, Http, NodeRef, Resp, RpcRec, World};

const FILTER_CONFIG: &[u8] = br#"{"control_cluster":"keybrake_control"}"#;

/// One HTTP stream's side of the host: what Envoy holds for the filter, and
/// what the filter asked Envoy to do (drained after each callback).
#[derive(Default)]
pub struct StreamIo {
    now_us: i64,
    pub req_headers: Vec<(String, String)>,
    pub req_body: Vec<u8>,
    resp_headers: Vec<(String, String)>,
    resp_body: Vec<u8>,
    details: Option<String>,
    grpc_body: Vec<u8>,
    local_reply: Option<Http>,
    dispatched: Vec<(u32, Rpc, Vec<u8>, u64)>,
    resumed_request: bool,
    resumed_response: bool,
    tokens: Rc<Cell<u32>>,
    ids: Rc<RefCell<CallIds>>,
    pub call_id: Option<String>,
    decided_locally: bool,
    /// Items this worker's flows put in its outbox.
    queued: Rc<Cell<u64>>,
}

fn set_header(headers: &mut Vec<(String, String)>, name: &str, value: Option<&str>) {
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    if let Some(v) = value {
        headers.push((name.to_owned(), v.to_owned()));
    }
}

impl Host for StreamIo {
    fn request_headers(&self) -> Vec<(String, String)> {
        self.req_headers.clone()
    }
    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        set_header(&mut self.req_headers, name, value);
    }
    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        Some(self.req_body.iter().take(size).copied().collect())
    }
    fn set_request_body(&mut self, size: usize, body: &[u8]) -> bool {
        let rest: Vec<u8> = self.req_body.iter().skip(size).copied().collect();
        self.req_body = [body, &rest].concat();
        true
    }
    fn response_headers(&self) -> Vec<(String, String)> {
        self.resp_headers.clone()
    }
    fn set_response_header(&mut self, name: &str, value: Option<&str>) {
        set_header(&mut self.resp_headers, name, value);
    }
    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        Some(self.resp_body.iter().take(size).copied().collect())
    }
    fn response_code_details(&self) -> Option<String> {
        self.details.clone()
    }
    fn send_local_reply(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.local_reply = Some((status, headers, body.to_vec()));
    }
    fn dispatch(&mut self, rpc: Rpc, message: &[u8], timeout_ms: u64) -> Option<u32> {
        let token = self.tokens.get() + 1;
        self.tokens.set(token);
        self.dispatched.push((token, rpc, message.to_vec(), timeout_ms));
        Some(token)
    }
    fn grpc_response_body(&self, _size: usize) -> Option<Vec<u8>> {
        Some(self.grpc_body.clone())
    }
    fn resume_request(&mut self) {
        self.resumed_request = true;
    }
    fn resume_response(&mut self) {
        self.resumed_response = true;
    }
    fn now_micros(&self) -> i64 {
        self.now_us
    }
    fn log_warn(&self, _message: &str) {}
    fn new_call_id(&mut self) -> Option<String> {
        let id = self.ids.try_borrow_mut().ok().and_then(|mut ids| ids.fresh());
        self.call_id = id.clone();
        id
    }
    fn count(&mut self, counter: Counter, _reason: Option<&str>) {
        match counter {
            Counter::DecidedLocally => self.decided_locally = true,
            Counter::OutboxQueued => self.queued.set(self.queued.get() + 1),
            _ => {}
        }
    }
}

/// The root context's side of the host.
pub struct RootIo {
    now_us: i64,
    rng: Rng,
    tick_ms: u64,
    tokens: Rc<Cell<u32>>,
    dispatched: Vec<(u32, Rpc, Vec<u8>, u64)>,
    opened: Vec<u32>,
    sent: Vec<(u32, Vec<u8>)>,
    cancelled: Vec<u32>,
    received: Vec<u8>,
    /// Outbox items delivered or dropped.
    gone: u64,
}

impl RootHost for RootIo {
    fn now_nanos(&self) -> u64 {
        u64::try_from(self.now_us).unwrap_or(0) * 1000
    }
    fn random_bytes(&mut self) -> Option<[u8; 16]> {
        Some(self.rng.bytes())
    }
    fn set_tick_period(&mut self, period_ms: u64) {
        self.tick_ms = period_ms;
    }
    fn dispatch(&mut self, _cluster: &str, rpc: Rpc, message: &[u8], timeout_ms: u64) -> Option<u32> {
        let token = self.tokens.get() + 1;
        self.tokens.set(token);
        self.dispatched.push((token, rpc, message.to_vec(), timeout_ms));
        Some(token)
    }
    fn open_revocation_stream(&mut self, _cluster: &str) -> Option<u32> {
        let token = self.tokens.get() + 1;
        self.tokens.set(token);
        self.opened.push(token);
        Some(token)
    }
    fn send_stream_message(&mut self, token: u32, message: &[u8]) {
        self.sent.push((token, message.to_vec()));
    }
    fn cancel_stream(&mut self, token: u32) {
        self.cancelled.push(token);
    }
    fn grpc_message(&self, size: usize) -> Option<Vec<u8>> {
        Some(self.received.iter().take(size).copied().collect())
    }
    fn count(&mut self, counter: Counter, by: u64) {
        if matches!(counter, Counter::OutboxDelivered | Counter::AuditDropped) {
            self.gone += by;
        }
    }
    fn log_warn(&self, _message: &str) {}
    fn log_error(&self, _message: &str) {}
}

pub struct HttpStream {
    pub attempt: usize,
    flow: Flow,
    pub io: StreamIo,
    forwarded: bool,
}

/// What a gRPC token of a worker belongs to.
enum GrpcUse {
    Flow(u64),
    Root,
}

/// The worker's end of its revocation stream.
struct WatchSide {
    link: u64,
    r: NodeRef,
    last_up: i64,
}

pub struct Worker {
    pub gateway: usize,
    pub inc: u32,
    pub up: bool,
    pub frozen_until: i64,
    root: Root,
    io: RootIo,
    pub streams: BTreeMap<u64, HttpStream>,
    grpc: BTreeMap<u32, GrpcUse>,
    watch: BTreeMap<u32, WatchSide>,
    tokens: Rc<Cell<u32>>,
    queued: Rc<Cell<u64>>,
    next_sid: u64,
}

impl Worker {
    /// Items in the outbox not yet delivered (what Envoy's counters show as queued - delivered - dropped).
    pub fn outbox_pending(&self) -> u64 {
        self.queued.get().saturating_sub(self.io.gone)
    }

    pub fn new(gateway: usize) -> Worker {
        let tokens = World::tokens();
        Worker {
            gateway,
            inc: 0,
            up: false,
            frozen_until: 0,
            root: Root::default(),
            io: RootIo {
                now_us: 0,
                rng: Rng::derive(0, "unused", 0),
                tick_ms: 100,
                tokens: tokens.clone(),
                dispatched: Vec::new(),
                opened: Vec::new(),
                sent: Vec::new(),
                cancelled: Vec::new(),
                received: Vec::new(),
                gone: 0,
            },
            streams: BTreeMap::new(),
            grpc: BTreeMap::new(),
            watch: BTreeMap::new(),
            tokens,
            queued: Rc::new(Cell::new(0)),
            next_sid: 0,
        }
    }
}

impl World<'_> {
    pub fn wref(&self, i: usize) -> NodeRef {
        NodeRef { idx: i, inc: self.workers[i].inc }
    }

    fn worker_live(&self, w: NodeRef) -> bool {
        self.workers.get(w.idx).is_some_and(|x| x.up && x.inc == w.inc)
    }

    pub fn start_worker(&mut self, i: usize) {
        let seed = self.plan.seed;
        let wk = &mut self.workers[i];
        wk.inc += 1;
        wk.up = true;
        wk.root = Root::default();
        wk.tokens.set(0);
        wk.queued.set(0);
        wk.io.gone = 0;
        wk.io.rng = Rng::derive(seed, "worker", (i as u64) << 16 | u64::from(wk.inc));
        wk.io.now_us = self.now;
        wk.streams.clear();
        wk.grpc.clear();
        wk.watch.clear();
        let configured = wk.root.configure(&mut wk.io, FILTER_CONFIG);
        let tick = i64::try_from(wk.io.tick_ms).unwrap_or(100) * 1000;
        let w = self.wref(i);
        self.event(format!("w{i} starts (configured: {configured})"));
        let first = self.misc.range(0, tick);
        self.after(first, Ev::Tick(w));
    }

    /// The worker's process dies: its streams, outbox and key cache go with it.
    pub fn crash_worker(&mut self, i: usize) {
        if !self.workers[i].up {
            return;
        }
        let wk = &mut self.workers[i];
        wk.up = false;
        wk.inc += 1;
        wk.frozen_until = 0;
        let streams = std::mem::take(&mut wk.streams);
        let watches = std::mem::take(&mut wk.watch);
        wk.grpc.clear();
        wk.root = Root::default();
        self.hist.worker_crashes.push((self.now, i));
        for (_, s) in streams {
            let d = self.latency(Hop::Client, false).unwrap_or(1_000);
            self.after(d, Ev::ClientGets { attempt: s.attempt, resp: None });
        }
        for (_, side) in watches {
            let d = self.latency(Hop::Control, false).unwrap_or(1_000);
            self.after(d, Ev::WatchGone { r: side.r, link: side.link });
        }
    }

    pub fn watch_peer(&self, link: u64) -> Option<(NodeRef, u32)> {
        self.watch_links.get(&link).copied()
    }

    pub fn tick(&mut self, w: NodeRef) {
        if !self.worker_live(w) {
            return;
        }
        let wk = &mut self.workers[w.idx];
        wk.io.now_us = self.now;
        wk.root.on_tick(&mut wk.io);
        let tick = i64::try_from(wk.io.tick_ms).unwrap_or(100) * 1000;
        self.root_effects(w.idx);
        self.after(tick, Ev::Tick(w));
    }

    /// A live replica for a new connection (Envoy's cluster: the hosts it can connect to).
    fn pick_replica(&mut self) -> Option<NodeRef> {
        let live: Vec<usize> = (0..self.replicas.len()).filter(|i| self.replicas[*i].app.is_some()).collect();
        if live.is_empty() {
            return None;
        }
        let i = live[self.net.index(live.len())];
        Some(NodeRef { idx: i, inc: self.replicas[i].inc })
    }

    /// Starts a unary call for a worker: Envoy's deadline, then the request on the wire.
    fn start_rpc(&mut self, w: NodeRef, token: u32, rpc: Rpc, body: Vec<u8>, timeout_ms: u64) {
        self.stats.rpcs += 1;
        let id = self.fresh_id();
        let Some(r) = self.pick_replica() else {
            self.after(1_000, Ev::GrpcDone { w, token, rpc: id, status: 14, body: Vec::new() });
            self.rpcs.insert(id, RpcRec { w, token, r: NodeRef { idx: 0, inc: 0 }, rpc, body, done: false });
            return;
        };
        self.rpcs.insert(id, RpcRec { w, token, r, rpc, body, done: false });
        let timeout = i64::try_from(timeout_ms).unwrap_or(10_000) * 1000;
        self.after(timeout, Ev::GrpcDone { w, token, rpc: id, status: 4, body: Vec::new() });
        if let Some(d) = self.latency(Hop::Control, true) {
            self.after(d, Ev::RpcArrive { r, rpc: id });
            if self.duplicate() {
                let d2 = d + self.net.range(0, 50_000);
                self.after(d2, Ev::RpcArrive { r, rpc: id });
            }
        }
    }

    /// What the root context asked of its host.
    fn root_effects(&mut self, i: usize) {
        let w = self.wref(i);
        let wk = &mut self.workers[i];
        let dispatched = std::mem::take(&mut wk.io.dispatched);
        let opened = std::mem::take(&mut wk.io.opened);
        let sent = std::mem::take(&mut wk.io.sent);
        let cancelled = std::mem::take(&mut wk.io.cancelled);
        for (token, rpc, body, timeout) in dispatched {
            self.workers[i].grpc.insert(token, GrpcUse::Root);
            if let Ok(batch) = keybrake_filter::wire::CallRecordBatch::decode(body.as_slice()) {
                let calls: Vec<&str> = batch
                    .records
                    .iter()
                    .map(|r| r.call_id.as_str())
                    .chain(batch.orphaned_settlements.iter().map(|s| s.call_id.as_str()))
                    .collect();
                let tags = calls.iter().flat_map(|c| self.call_tags(c)).collect();
                self.note(tags, format!("w{i} sends its outbox: {calls:?} (token {token})"));
            }
            self.start_rpc(w, token, rpc, body, timeout);
        }
        for token in opened {
            match self.pick_replica() {
                Some(r) => {
                    let link = self.fresh_id();
                    self.watch_links.insert(link, (w, token));
                    self.workers[i].watch.insert(token, WatchSide { link, r, last_up: 0 });
                    let d = self.latency(Hop::Control, false).unwrap_or(1_000);
                    self.after(d, Ev::WatchOpen { r, link });
                    self.workers[i].watch.entry(token).and_modify(|s| s.last_up = self.now + d);
                }
                None => self.after(1_000, Ev::WatchClosed { w, token }),
            }
        }
        for (token, body) in sent {
            let d = self.latency(Hop::Control, false).unwrap_or(1_000);
            let now = self.now;
            if let Some(side) = self.workers[i].watch.get_mut(&token) {
                let at = (now + d).max(side.last_up + 1);
                side.last_up = at;
                let (r, link) = (side.r, side.link);
                self.at(at, Ev::WatchToReplica { r, link, body });
            }
        }
        for token in cancelled {
            if let Some(side) = self.workers[i].watch.remove(&token) {
                let at = side.last_up + 1;
                self.at(at, Ev::WatchGone { r: side.r, link: side.link });
            }
        }
    }

    pub fn watch_to_worker(&mut self, w: NodeRef, token: u32, body: Vec<u8>) {
        if !self.worker_live(w) || !self.workers[w.idx].watch.contains_key(&token) {
            return;
        }
        let wk = &mut self.workers[w.idx];
        wk.io.now_us = self.now;
        let size = body.len();
        wk.io.received = body;
        wk.root.on_grpc_stream_message(&mut wk.io, token, size);
        self.root_effects(w.idx);
    }

    pub fn watch_closed(&mut self, w: NodeRef, token: u32) {
        if !self.worker_live(w) {
            return;
        }
        let wk = &mut self.workers[w.idx];
        if wk.watch.remove(&token).is_some() {
            wk.root.on_grpc_stream_close(token);
            self.event(format!("w{}'s revocation stream closed", w.idx));
        }
    }

    /// The network cuts a worker's revocation stream: both ends see it close.
    pub fn cut_stream(&mut self, i: usize) {
        let w = self.wref(i);
        let sides: Vec<(u32, NodeRef, u64)> = self.workers[i].watch.iter().map(|(t, s)| (*t, s.r, s.link)).collect();
        for (token, r, link) in sides {
            self.event(format!("the network cuts w{i}'s revocation stream"));
            let d = self.latency(Hop::Control, false).unwrap_or(1_000);
            self.after(d, Ev::WatchClosed { w, token });
            self.after(d, Ev::WatchGone { r, link });
        }
    }

    pub fn grpc_done(&mut self, w: NodeRef, token: u32, rpc: u64, status: u32, body: Vec<u8>) {
        let Some(call) = self.rpcs.get_mut(&rpc) else { return };
        if call.done {
            return;
        }
        call.done = true;
        if !self.worker_live(w) {
            return;
        }
        match self.workers[w.idx].grpc.remove(&token) {
            Some(GrpcUse::Root) => {
                if status != 0 {
                    self.note(
                        vec!["*".into()],
                        format!("w{}'s outbox batch (token {token}) failed: status {status}", w.idx),
                    );
                }
                let wk = &mut self.workers[w.idx];
                wk.io.now_us = self.now;
                wk.root.on_grpc_call_response(&mut wk.io, token, status);
                self.root_effects(w.idx);
            }
            Some(GrpcUse::Flow(sid)) => {
                let Some(s) = self.workers[w.idx].streams.get_mut(&sid) else { return };
                s.io.now_us = self.now;
                let size = body.len();
                s.io.grpc_body = body;
                s.flow.on_grpc_response(&mut s.io, token, status, size);
                self.stream_effects(w, sid, None);
            }
            None => {}
        }
    }

    /// A client's request reaches a worker.
    pub fn attempt_arrive(&mut self, attempt: usize, w: NodeRef) {
        if !self.worker_live(w) {
            let d = self.latency(Hop::Client, false).unwrap_or(1_000);
            self.after(d, Ev::ClientGets { attempt, resp: None });
            return;
        }
        let (headers, body) = self.request_of(attempt);
        let wk = &mut self.workers[w.idx];
        wk.next_sid += 1;
        let sid = wk.next_sid;
        let io = StreamIo {
            now_us: self.now,
            req_headers: headers,
            req_body: body,
            tokens: wk.tokens.clone(),
            ids: wk.root.ids(),
            queued: wk.queued.clone(),
            ..Default::default()
        };
        let s = HttpStream { attempt, flow: wk.root.new_flow(), io, forwarded: false };
        wk.streams.insert(sid, s);
        self.attempts[attempt].at = Some((w, sid));
        let Some(s) = self.workers[w.idx].streams.get_mut(&sid) else { return };
        let has_body = !s.io.req_body.is_empty();
        let step = s.flow.on_request_headers(&mut s.io, !has_body);
        if !self.stream_effects(w, sid, Some(step)) || !has_body {
            return;
        }
        let Some(s) = self.workers[w.idx].streams.get_mut(&sid) else { return };
        if s.forwarded {
            return;
        }
        let size = s.io.req_body.len();
        let step = s.flow.on_request_body(&mut s.io, size, true);
        self.stream_effects(w, sid, Some(step));
    }

    /// What a flow asked Envoy to do in its last callback; false when the stream ended.
    fn stream_effects(&mut self, w: NodeRef, sid: u64, request_step: Option<Step>) -> bool {
        let Some(s) = self.workers[w.idx].streams.get_mut(&sid) else { return false };
        let dispatched = std::mem::take(&mut s.io.dispatched);
        let local = s.io.local_reply.take();
        let resume_request = std::mem::take(&mut s.io.resumed_request);
        let resume_response = std::mem::take(&mut s.io.resumed_response);
        let forwarded = s.forwarded;
        for (token, rpc, body, timeout) in dispatched {
            self.workers[w.idx].grpc.insert(token, GrpcUse::Flow(sid));
            self.start_rpc(w, token, rpc, body, timeout);
        }
        if let Some((status, headers, body)) = local {
            self.finish(w, sid, Some((status, headers, body)));
            return false;
        }
        if !forwarded && (resume_request || request_step == Some(Step::Continue)) {
            self.forward(w, sid);
        }
        if resume_response {
            self.finish(w, sid, None);
            return false;
        }
        true
    }

    /// The stream ends: the client gets `local` (a local reply) or the
    /// response the filter released; then Envoy logs the stream.
    fn finish(&mut self, w: NodeRef, sid: u64, local: Resp) {
        let Some(mut s) = self.workers[w.idx].streams.remove(&sid) else { return };
        let resp = match local {
            Some(r) => Some(r),
            None => {
                let status = header(&s.io.resp_headers, ":status").and_then(|v| v.parse().ok()).unwrap_or(0);
                Some((status, s.io.resp_headers.clone(), s.io.resp_body.clone()))
            }
        };
        s.io.now_us = self.now;
        s.flow.on_log(&mut s.io);
        let d = self.latency(Hop::Client, false).unwrap_or(1_000);
        self.after(d, Ev::ClientGets { attempt: s.attempt, resp });
    }

    /// The client went away: Envoy resets the stream (its callouts die with it) and logs it.
    pub fn client_reset(&mut self, w: NodeRef, sid: u64) {
        if !self.worker_live(w) {
            return;
        }
        let Some(mut s) = self.workers[w.idx].streams.remove(&sid) else { return };
        self.workers[w.idx].grpc.retain(|_, u| !matches!(u, GrpcUse::Flow(x) if *x == sid));
        s.io.now_us = self.now;
        s.flow.on_log(&mut s.io);
    }

    /// The filter let the request go: it leaves for the upstream as the flow left it.
    fn forward(&mut self, w: NodeRef, sid: u64) {
        let Some(s) = self.workers[w.idx].streams.get_mut(&sid) else { return };
        s.forwarded = true;
        let call_id = s.io.call_id.clone().unwrap_or_default();
        let decided = if s.io.decided_locally {
            self.stats.cached_reads += 1;
            Some((self.now, format!("w{}'s key cache", w.idx)))
        } else {
            self.hist.decided.get(&call_id).cloned()
        };
        let headers = s.io.req_headers.clone();
        let body = s.io.req_body.clone();
        let attempt = s.attempt;
        let fwd = self.record_forward(w.idx, attempt, call_id, decided, &headers, &body);
        if self.net.chance(self.cond.connect_fail) {
            let answer = envoy_reset("connection_failure");
            let d = self.net.range(1_000, 20_000);
            let tags = self.call_tags(&self.hist.forwards[fwd].call_id.clone());
            self.note(tags, format!("fwd{fwd}: the upstream connection fails; nothing sent"));
            self.after(d, Ev::UpstreamAnswer { w, sid, answer });
            return;
        }
        let d = self.latency(Hop::Upstream, false).unwrap_or(10_000);
        self.after(d, Ev::UpstreamGets { fwd, w, sid });
    }

    /// The upstream's answer (or Envoy's, for a reset) reaches the worker.
    pub fn upstream_answer(&mut self, w: NodeRef, sid: u64, answer: Answer) {
        if !self.worker_live(w) {
            return;
        }
        let Some(s) = self.workers[w.idx].streams.get_mut(&sid) else { return };
        s.io.now_us = self.now;
        let mut headers = vec![(":status".to_owned(), answer.status.to_string())];
        headers.extend(answer.headers);
        s.io.resp_headers = headers;
        s.io.resp_body = answer.body;
        s.io.details = Some(answer.details);
        let step = s.flow.on_response_headers(&mut s.io, false);
        if !self.stream_effects(w, sid, None) {
            return;
        }
        let Some(s) = self.workers[w.idx].streams.get_mut(&sid) else { return };
        let size = s.io.resp_body.len();
        let body_step = s.flow.on_response_body(&mut s.io, size, true);
        if !self.stream_effects(w, sid, None) {
            return;
        }
        if step == Step::Continue && body_step == Step::Continue {
            self.finish(w, sid, None);
        }
    }
}

/// The local reply Envoy makes when the upstream connection resets or fails.
pub fn envoy_reset(reason: &str) -> Answer {
    Answer {
        status: 503,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: format!("upstream connect error or disconnect/reset before headers. reset reason: {reason}").into_bytes(),
        details: format!("upstream_reset_before_response_started{{{reason}}}"),
    }
}
