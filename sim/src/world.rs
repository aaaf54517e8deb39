//! The simulated world: one discrete-event scheduler in simulated time, the
//! nodes (control replicas, Envoy workers, the upstream, the clients) and the
//! network between them. Every event runs to completion before the next one,
//! in the order of (time, sequence number), so a run is a function of its plan
//! and seed. The control service's async code runs inside an event with
//! `block_on` on a current-thread runtime: its store's writer thread and
//! read pool do the work while the scheduler waits, so the order of effects
//! is the scheduler's.

use std::cell::Cell;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keybrake_control::clock::Clock;
use keybrake_control::secrets::{Secret, Vault};
use keybrake_control::store::sqlite::SqliteStore;
use keybrake_control::store::Store;
use tokio::runtime::Runtime;

use crate::check::History;
use crate::client::{Attempt, Job, SdkCall, SimKey, Upstream};
use crate::control::Replica;
use crate::gateway::Worker;
use crate::plan::{FaultKind, Plan};
use crate::rng::Rng;

/// The real key the control service holds (what the upstream must receive).
pub const REAL_KEY: &str = "sk_test_keybrake_sim_real_key";
const ADMIN_KEY: &str = "admin-key-of-the-simulator";

/// The clock of one control replica: the simulated time (plus the replica's
/// skew), and a monotonic instant that moves with it.
pub struct SimClock {
    now: Arc<AtomicI64>,
    start_us: i64,
    base: Instant,
    skew_us: i64,
}

impl Clock for SimClock {
    fn now_us(&self) -> i64 {
        self.now.load(Ordering::SeqCst) + self.skew_us
    }

    fn monotonic(&self) -> Instant {
        let elapsed = self.now.load(Ordering::SeqCst).saturating_sub(self.start_us).max(0);
        self.base + Duration::from_micros(elapsed as u64)
    }
}

/// A node and the incarnation an event is for (a restarted node is a new one:
/// what was addressed to the old one is lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRef {
    pub idx: usize,
    pub inc: u32,
}

/// An HTTP response: status, headers, body.
pub type Http = (u32, Vec<(String, String)>, Vec<u8>);
/// An HTTP response as the client sees it, or a broken connection (`None`).
pub type Resp = Option<Http>;

/// What the upstream (or Envoy, for a failed upstream connection) answers a forwarded request.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Envoy's `response.code_details`.
    pub details: String,
}

pub enum Ev {
    JobStart(usize),
    JobNext(usize),
    AttemptSend(usize),
    AttemptArrive { attempt: usize, w: NodeRef },
    AttemptTimeout(usize),
    ClientGets { attempt: usize, resp: Resp },
    ClientReset { w: NodeRef, sid: u64 },
    Tick(NodeRef),
    GrpcDone { w: NodeRef, token: u32, rpc: u64, status: u32, body: Vec<u8> },
    RpcArrive { r: NodeRef, rpc: u64 },
    WatchOpen { r: NodeRef, link: u64 },
    WatchToReplica { r: NodeRef, link: u64, body: Vec<u8> },
    WatchGone { r: NodeRef, link: u64 },
    WatchToWorker { w: NodeRef, token: u32, body: Vec<u8> },
    WatchClosed { w: NodeRef, token: u32 },
    Beat { r: NodeRef, link: u64 },
    Relay { r: NodeRef, periodic: bool },
    Sweep(NodeRef),
    Revoke { job: usize, replica: usize },
    RevokePoll { r: NodeRef, pending: usize },
    SetFx { currency: &'static str, rate: &'static str, replica: usize },
    UpstreamGets { fwd: usize, w: NodeRef, sid: u64 },
    UpstreamAnswer { w: NodeRef, sid: u64, answer: Answer },
    Fault(usize),
    RestartReplica(usize),
    RestartWorker(usize),
    Heal,
    Quiet,
}

impl Ev {
    /// The replica or worker an event runs on (a frozen one runs it later).
    fn node(&self) -> Option<(bool, NodeRef)> {
        match self {
            Ev::RpcArrive { r, .. }
            | Ev::WatchOpen { r, .. }
            | Ev::WatchToReplica { r, .. }
            | Ev::WatchGone { r, .. }
            | Ev::Beat { r, .. }
            | Ev::Relay { r, .. }
            | Ev::Sweep(r)
            | Ev::RevokePoll { r, .. } => Some((true, *r)),
            Ev::AttemptArrive { w, .. }
            | Ev::ClientReset { w, .. }
            | Ev::Tick(w)
            | Ev::GrpcDone { w, .. }
            | Ev::WatchToWorker { w, .. }
            | Ev::WatchClosed { w, .. }
            | Ev::UpstreamAnswer { w, .. } => Some((false, *w)),
            _ => None,
        }
    }
}

impl Ev {
    /// The connection (or timer) an event arrives on, for the order a thawed node reads them in.
    fn connection(&self) -> u64 {
        match self {
            Ev::RpcArrive { rpc, .. } => *rpc,
            Ev::WatchOpen { link, .. }
            | Ev::WatchToReplica { link, .. }
            | Ev::WatchGone { link, .. }
            | Ev::Beat { link, .. } => *link,
            Ev::AttemptArrive { attempt, .. } => *attempt as u64,
            Ev::ClientReset { sid, .. } | Ev::UpstreamAnswer { sid, .. } => *sid,
            Ev::GrpcDone { token, .. } | Ev::WatchToWorker { token, .. } | Ev::WatchClosed { token, .. } => {
                u64::from(*token)
            }
            Ev::Relay { .. } => 1,
            Ev::Sweep(_) => 2,
            Ev::RevokePoll { pending, .. } => 3 + *pending as u64,
            _ => 0,
        }
    }
}

struct Sched {
    at: i64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Sched {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Sched {}
impl PartialOrd for Sched {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Sched {
    // Reversed: BinaryHeap is a max-heap and the earliest event goes first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A unary gRPC call from a worker to a replica.
pub struct RpcRec {
    pub w: NodeRef,
    pub token: u32,
    pub r: NodeRef,
    pub rpc: keybrake_filter::host::Rpc,
    pub body: Vec<u8>,
    pub done: bool,
}

/// Which kind of hop a message takes (its latency and faults differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    Client,
    Control,
    Upstream,
}

/// The standing faults in force.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    pub drop: f64,
    pub dup: f64,
    pub slow: f64,
    pub slow_max_ms: i64,
    pub lose_answer: f64,
    pub reset_before: f64,
    pub connect_fail: f64,
    pub decline: f64,
    pub up_slow: f64,
    pub up_slow_max_ms: i64,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub events: u64,
    pub attempts: u64,
    pub rpcs: u64,
    pub upstream_requests: u64,
    pub store_ops: u64,
    pub simulated_us: i64,
    /// Reads a worker decided from its key cache.
    pub cached_reads: u64,
    pub faults: BTreeMap<&'static str, u64>,
}

pub struct World<'rt> {
    pub plan: Plan,
    pub rt: &'rt Runtime,
    pub now: i64,
    clock: Arc<AtomicI64>,
    base: Instant,
    seq: u64,
    queue: BinaryHeap<Sched>,
    pub store: Store,
    pub net: Rng,
    pub misc: Rng,
    pub cond: Conditions,
    pub replicas: Vec<Replica>,
    pub workers: Vec<Worker>,
    pub up: Upstream,
    pub jobs: Vec<Job>,
    pub keys: Vec<SimKey>,
    pub key_by_hash: HashMap<[u8; 32], usize>,
    pub sdk: Vec<SdkCall>,
    pub attempts: Vec<Attempt>,
    pub rpcs: HashMap<u64, RpcRec>,
    pub next_id: u64,
    pub pending_revokes: Vec<crate::control::PendingRevoke>,
    /// A revocation stream: (worker, its token) by link id.
    pub watch_links: HashMap<u64, (NodeRef, u32)>,
    /// The key of each call the control service saw (for the history's tags).
    pub call_key: HashMap<String, usize>,
    pub hist: History,
    pub stats: Stats,
    pub healing: bool,
    pub end_at: Option<i64>,
    hard_end: i64,
    /// When a request last reached a replica (it may have reserved then).
    pub last_rpc_arrival: i64,
    /// Calls into the control service's async code (each one or more store operations).
    pub store_ops: Cell<u64>,
}

impl<'rt> World<'rt> {
    pub fn new(plan: Plan, rt: &'rt Runtime, db: PathBuf) -> Result<World<'rt>, String> {
        let store = Store::Sqlite(SqliteStore::open(&db).map_err(|e| format!("opening {}: {e}", db.display()))?);
        let seed = plan.seed;
        let dedup = plan.dedup_upstream;
        let mut w = World {
            now: plan.start_us,
            clock: Arc::new(AtomicI64::new(plan.start_us)),
            base: Instant::now(),
            seq: 0,
            queue: BinaryHeap::new(),
            store,
            net: Rng::derive(seed, "net", 0),
            misc: Rng::derive(seed, "misc", 0),
            cond: Conditions::default(),
            replicas: Vec::new(),
            workers: Vec::new(),
            up: Upstream::new(dedup),
            jobs: Vec::new(),
            keys: Vec::new(),
            key_by_hash: HashMap::new(),
            sdk: Vec::new(),
            attempts: Vec::new(),
            rpcs: HashMap::new(),
            next_id: 1,
            pending_revokes: Vec::new(),
            watch_links: HashMap::new(),
            call_key: HashMap::new(),
            hist: History::default(),
            stats: Stats::default(),
            healing: false,
            end_at: None,
            hard_end: i64::MAX,
            last_rpc_arrival: 0,
            store_ops: Cell::new(0),
            rt,
            plan,
        };
        w.setup()?;
        Ok(w)
    }

    fn setup(&mut self) -> Result<(), String> {
        // The operator's FX table before anything starts.
        let now_s = self.now / 1_000_000;
        let initial = [("eur", "1.08"), ("jpy", "0.0067")];
        let store = self.store.clone();
        self.wait(store.write(move |l| {
            for (c, r) in initial {
                let rate = keybrake_control::model::FxRate {
                    currency: c.into(),
                    usd_per_unit: r.into(),
                    as_of: "2026-01-01".into(),
                };
                l.put_fx_rate(&rate, now_s)?;
            }
            Ok(())
        }))
        .map_err(|e| format!("setting FX rates: {e}"))?;
        for (c, r) in initial {
            self.hist.fx.push((self.now, c.to_owned(), r.to_owned()));
        }
        for i in 0..self.plan.replicas {
            let skew = self.misc.range(-20_000, 20_000);
            self.replicas.push(Replica::new(skew));
            self.start_replica(i);
        }
        for i in 0..self.plan.workers() {
            self.workers.push(Worker::new(i / self.plan.workers_per_gateway));
            self.start_worker(i);
        }
        for j in 0..self.plan.jobs.len() {
            self.jobs.push(Job::new(self.plan.seed, self.plan.jobs[j].clone()));
            let at = self.now + self.plan.jobs[j].start_ms * 1000;
            self.at(at, Ev::JobStart(j));
        }
        for f in 0..self.plan.faults.len() {
            let at = self.now + self.plan.faults[f].at_ms * 1000;
            self.at(at, Ev::Fault(f));
        }
        Ok(())
    }

    /// The clock a replica's `App` reads.
    pub fn clock_for(&self, skew_us: i64) -> Arc<dyn Clock> {
        Arc::new(SimClock { now: self.clock.clone(), start_us: self.plan.start_us, base: self.base, skew_us })
    }

    pub fn vault() -> Vault {
        // Both are valid by construction (checked by the unit tests of `Vault`).
        #[allow(clippy::expect_used)]
        Vault::new(Secret::new(REAL_KEY.into()), &Secret::new(ADMIN_KEY.into())).expect("a valid vault")
    }

    /// Runs the control service's async code to completion (its store's threads do the work).
    pub fn wait<F: std::future::Future>(&self, f: F) -> F::Output {
        self.store_ops.set(self.store_ops.get() + 1);
        self.rt.block_on(f)
    }

    pub fn at(&mut self, at: i64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Sched { at: at.max(self.now), seq: self.seq, ev });
    }

    pub fn after(&mut self, delay_us: i64, ev: Ev) {
        self.at(self.now + delay_us.max(0), ev);
    }

    pub fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// One hop's latency in microseconds, or `None` when the message is lost.
    pub fn latency(&mut self, hop: Hop, droppable: bool) -> Option<i64> {
        if droppable && self.net.chance(self.cond.drop) {
            return None;
        }
        let base = match hop {
            Hop::Client => self.net.range(200, 2_000),
            Hop::Control => self.net.range(50, 800),
            Hop::Upstream => self.net.range(5_000, 60_000),
        };
        let slow = if self.net.chance(self.cond.slow) { self.net.range(0, self.cond.slow_max_ms * 1000) } else { 0 };
        Some(base + slow)
    }

    pub fn duplicate(&mut self) -> bool {
        self.net.chance(self.cond.dup)
    }

    pub fn note(&mut self, tags: Vec<String>, text: String) {
        self.hist.line(self.now, tags, text);
    }

    /// A line about the whole system (a crash, a freeze): shown with every violation's history.
    pub fn event(&mut self, text: String) {
        self.hist.line(self.now, vec!["*".into()], text);
    }

    /// The tags of a call: its id and, when known, its key.
    pub fn call_tags(&self, call_id: &str) -> Vec<String> {
        let mut tags = vec![call_id.to_owned()];
        if let Some(k) = self.call_key.get(call_id) {
            tags.push(format!("k{k}"));
        }
        tags
    }

    /// Runs the plan to its end: the jobs, then healing and quiet until every
    /// call has settled or its lease has run out.
    pub fn run(&mut self) {
        const MAX_EVENTS: u64 = 3_000_000;
        let job_deadline = self.plan.start_us + 120_000_000;
        self.at(job_deadline, Ev::Heal);
        while let Some(s) = self.queue.pop() {
            if let Some(end) = self.end_at {
                if s.at > end {
                    break;
                }
            }
            self.now = s.at;
            self.clock.store(self.now, Ordering::SeqCst);
            self.stats.events += 1;
            if self.stats.events > MAX_EVENTS {
                self.hist.stuck = true;
                break;
            }
            // A frozen node runs what arrives later, in an order the network decides.
            if let Some((replica, node)) = s.ev.node() {
                let frozen_until = if replica {
                    self.replicas.get(node.idx).map(|r| r.frozen_until).unwrap_or(0)
                } else {
                    self.workers.get(node.idx).map(|w| w.frozen_until).unwrap_or(0)
                };
                if frozen_until > self.now {
                    // What a connection delivered meanwhile is read in one go, in order.
                    let jitter = (s.ev.connection().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 3_000;
                    self.at(frozen_until + jitter as i64, s.ev);
                    continue;
                }
            }
            self.dispatch(s.ev);
            if !self.healing && self.jobs.iter().all(|j| j.done) {
                self.at(self.now, Ev::Heal);
                self.healing = true;
            }
        }
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::JobStart(j) => self.job_start(j),
            Ev::JobNext(j) => self.job_next(j),
            Ev::AttemptSend(c) => self.attempt_send(c),
            Ev::AttemptArrive { attempt, w } => self.attempt_arrive(attempt, w),
            Ev::AttemptTimeout(a) => self.attempt_timeout(a),
            Ev::ClientGets { attempt, resp } => self.client_gets(attempt, resp),
            Ev::ClientReset { w, sid } => self.client_reset(w, sid),
            Ev::Tick(w) => self.tick(w),
            Ev::GrpcDone { w, token, rpc, status, body } => self.grpc_done(w, token, rpc, status, body),
            Ev::RpcArrive { r, rpc } => self.rpc_arrive(r, rpc),
            Ev::WatchOpen { r, link } => self.watch_open(r, link),
            Ev::WatchToReplica { r, link, body } => self.watch_to_replica(r, link, body),
            Ev::WatchGone { r, link } => self.watch_gone(r, link),
            Ev::WatchToWorker { w, token, body } => self.watch_to_worker(w, token, body),
            Ev::WatchClosed { w, token } => self.watch_closed(w, token),
            Ev::Beat { r, link } => self.beat(r, link),
            Ev::Relay { r, periodic } => self.relay(r, periodic),
            Ev::Sweep(r) => self.sweep(r),
            Ev::Revoke { job, replica } => self.revoke(job, replica),
            Ev::RevokePoll { r, pending } => self.revoke_poll(r, pending),
            Ev::SetFx { currency, rate, replica } => self.set_fx(currency, rate, replica),
            Ev::UpstreamGets { fwd, w, sid } => self.upstream_gets(fwd, w, sid),
            Ev::UpstreamAnswer { w, sid, answer } => self.upstream_answer(w, sid, answer),
            Ev::Fault(f) => self.fault(f),
            Ev::RestartReplica(r) if self.replicas[r].app.is_none() => self.start_replica(r),
            Ev::RestartWorker(w) if !self.workers[w].up => self.start_worker(w),
            Ev::RestartReplica(_) | Ev::RestartWorker(_) => {}
            Ev::Heal => self.heal(),
            Ev::Quiet => self.quiet(),
        }
    }

    fn fault(&mut self, f: usize) {
        let kind = self.plan.faults[f].kind.clone();
        let id = self.plan.faults[f].id;
        if self.healing {
            return;
        }
        *self.stats.faults.entry(kind.name()).or_default() += 1;
        match kind {
            FaultKind::CrashReplica { replica, down_ms, mid_rpc } => {
                if mid_rpc {
                    self.event(format!("f{id}: r{replica} will crash right after its next commit"));
                    self.replicas[replica].crash_armed = Some(down_ms);
                } else {
                    self.event(format!("f{id}: r{replica} crashes, back in {down_ms} ms"));
                    self.crash_replica(replica);
                    self.after(down_ms * 1000, Ev::RestartReplica(replica));
                }
            }
            FaultKind::FreezeReplica { replica, ms } => {
                self.event(format!("f{id}: r{replica} frozen for {ms} ms"));
                let r = &mut self.replicas[replica];
                r.frozen_until = r.frozen_until.max(self.now + ms * 1000);
            }
            FaultKind::CrashWorker { worker, down_ms } => {
                self.event(format!("f{id}: w{worker} crashes with its outbox, back in {down_ms} ms"));
                self.crash_worker(worker);
                self.after(down_ms * 1000, Ev::RestartWorker(worker));
            }
            FaultKind::FreezeWorker { worker, ms } => {
                self.event(format!("f{id}: w{worker} stalls for {ms} ms"));
                let w = &mut self.workers[worker];
                w.frozen_until = w.frozen_until.max(self.now + ms * 1000);
            }
            FaultKind::Revoke { job, replica } => self.at(self.now, Ev::Revoke { job, replica }),
            FaultKind::SetFx { currency, rate, replica } => self.at(self.now, Ev::SetFx { currency, rate, replica }),
            FaultKind::LostCommits { replica, ms } => {
                self.event(format!("f{id}: r{replica}'s settlements are lost for {ms} ms"));
                self.replicas[replica].lost_until = self.now + ms * 1000;
            }
            FaultKind::CutStream { worker } => self.cut_stream(worker),
            FaultKind::NetDrop { p } => self.cond.drop = p,
            FaultKind::NetDuplicate { p } => self.cond.dup = p,
            FaultKind::NetSlow { p, max_ms } => {
                self.cond.slow = p;
                self.cond.slow_max_ms = max_ms;
            }
            FaultKind::UpLoseAnswer { p } => self.cond.lose_answer = p,
            FaultKind::UpResetBefore { p } => self.cond.reset_before = p,
            FaultKind::UpConnectFail { p } => self.cond.connect_fail = p,
            FaultKind::UpDecline { p } => self.cond.decline = p,
            FaultKind::UpSlow { p, max_ms } => {
                self.cond.up_slow = p;
                self.cond.up_slow_max_ms = max_ms;
            }
        }
    }

    /// Every fault ends: nodes restart (frozen ones thaw when their freeze
    /// ends), the network and the upstream behave; the run goes on until every
    /// lease has run out and every outbox is delivered.
    fn heal(&mut self) {
        if self.hard_end != i64::MAX {
            return;
        }
        self.healing = true;
        self.event("heal: every fault ends".into());
        self.cond = Conditions::default();
        for i in 0..self.replicas.len() {
            self.replicas[i].lost_until = 0;
            self.replicas[i].crash_armed = None;
            if self.replicas[i].app.is_none() {
                self.start_replica(i);
            }
        }
        for i in 0..self.workers.len() {
            if !self.workers[i].up {
                self.start_worker(i);
            }
        }
        // What a frozen node held arrives when it would have thawed; calls
        // reserved then need their lease to run out and a sweep to see it.
        let thawed = self
            .replicas
            .iter()
            .map(|r| r.frozen_until)
            .chain(self.workers.iter().map(|w| w.frozen_until))
            .fold(self.now, i64::max);
        let quiet_from = thawed + (self.plan.lease_secs + 2) * 1_000_000;
        self.hard_end = self.now + 60_000_000;
        self.at(quiet_from, Ev::Quiet);
    }

    /// The run ends once every lease has run out and every worker's outbox is
    /// delivered (its deadline and backoff can take some ten seconds).
    fn quiet(&mut self) {
        // A request that reached a replica late (delayed in the network, or a
        // duplicate), or is still on its way, may reserve: its lease must run
        // out, and a sweep see it, before the run ends.
        let queued = self.queue.iter().filter(|s| matches!(s.ev, Ev::RpcArrive { .. })).map(|s| s.at).max();
        let last = queued.unwrap_or(0).max(self.last_rpc_arrival);
        let settled_by = last + (self.plan.lease_secs + 2) * 1_000_000;
        if self.now < settled_by && self.now < self.hard_end {
            self.at(settled_by.min(self.hard_end), Ev::Quiet);
            return;
        }
        let pending: u64 = self.workers.iter().filter(|w| w.up).map(|w| w.outbox_pending()).sum();
        if pending == 0 || self.now >= self.hard_end {
            self.end_at = Some(self.now + 1_100_000);
        } else {
            self.after(500_000, Ev::Quiet);
        }
    }

    pub fn tokens() -> Rc<Cell<u32>> {
        Rc::new(Cell::new(0))
    }
}
