//! Running plans: one at a time on a thread's own runtime and database
//! directory (on tmpfs when there is one), in batches over several threads,
//! and shrinking a failing one.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::runtime::Runtime;

use crate::check::{check, relevant_history, Observed, Violation};
use crate::plan::{Dropped, Plan};
use crate::world::{Stats, World};

static PANICS: AtomicU64 = AtomicU64::new(0);
static PANIC_TEXT: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Counts panics on any thread (the control service's store threads too):
/// a run during which one happened has violated "no panic".
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        let thread = std::thread::current().name().unwrap_or("?").to_owned();
        if let Ok(mut t) = PANIC_TEXT.lock() {
            t.push(format!("thread {thread}: {info}"));
        }
    }));
}

fn last_panic() -> String {
    PANIC_TEXT.lock().ok().and_then(|t| t.last().cloned()).unwrap_or_default()
}

pub struct Out {
    pub violations: Vec<Violation>,
    pub observed: Observed,
    pub stats: Stats,
    pub digest: String,
    /// The whole history (when asked for).
    pub lines: Vec<String>,
    /// The history of the first violation (of the kind asked for).
    pub relevant: Vec<String>,
}

pub struct Runner {
    rt: Runtime,
    dir: PathBuf,
    n: u64,
}

fn runtime() -> Result<Runtime, String> {
    tokio::runtime::Builder::new_current_thread().enable_time().build().map_err(|e| e.to_string())
}

impl Runner {
    pub fn new() -> Result<Runner, String> {
        let shm = std::path::Path::new("/dev/shm");
        let root = if shm.is_dir() { shm.to_owned() } else { std::env::temp_dir() };
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = root.join(format!("keybrake-sim-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Runner { rt: runtime()?, dir, n: 0 })
    }

    /// A freshly migrated database, made once per runner and copied for each
    /// run (migrating each run's database costs more than the run's calls).
    fn template(&mut self) -> Result<PathBuf, String> {
        let path = self.dir.join("template.db");
        if path.exists() {
            return Ok(path);
        }
        let store = keybrake_control::store::sqlite::SqliteStore::open(&path).map_err(|e| e.to_string())?;
        drop(store);
        // The last connection to close folds the WAL into the file and removes it.
        let wal = self.dir.join("template.db-wal");
        let started = std::time::Instant::now();
        while wal.exists() {
            if started.elapsed() > std::time::Duration::from_secs(10) {
                return Err("the template database's WAL was not folded in".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Ok(path)
    }

    pub fn run(&mut self, plan: &Plan, keep_lines: bool) -> Out {
        self.run_focused(plan, keep_lines, None)
    }

    fn run_focused(&mut self, plan: &Plan, keep_lines: bool, focus: Option<&str>) -> Out {
        self.n += 1;
        let db = self.dir.join(format!("s{}-{}.db", plan.seed, self.n));
        if let Err(e) = self.template().and_then(|t| std::fs::copy(t, &db).map_err(|e| e.to_string())) {
            return failed("setup_failed", e);
        }
        let panics = PANICS.load(Ordering::SeqCst);
        let rt = &self.rt;
        let result = catch_unwind(AssertUnwindSafe(|| -> Result<Out, String> {
            let mut w = World::new(plan.clone(), rt, db.clone())?;
            w.run();
            w.stats.store_ops = w.store_ops.get();
            w.stats.simulated_us = w.now - plan.start_us;
            let (violations, observed) = check(&w);
            let target = violations.iter().find(|v| focus.is_none_or(|k| v.kind == k)).or(violations.first());
            let relevant = target.map(|v| relevant_history(&w, v)).unwrap_or_default();
            let lines = if keep_lines {
                w.hist.lines.iter().map(|l| format!("{}  {}", crate::check::time(l.t), l.text)).collect()
            } else {
                Vec::new()
            };
            Ok(Out { violations, observed, stats: w.stats.clone(), digest: w.hist.digest(), lines, relevant })
        }));
        for suffix in ["", "-wal", "-shm"] {
            let mut p = db.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
        let mut out = match result {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => failed("setup_failed", e),
            Err(_) => {
                // The runtime may be left in any state by a panic inside it.
                if let Ok(rt) = runtime() {
                    self.rt = rt;
                }
                failed("panic", last_panic())
            }
        };
        if PANICS.load(Ordering::SeqCst) != panics && !out.violations.iter().any(|v| v.kind == "panic") {
            out.violations.insert(0, Violation { kind: "panic", at: 0, tags: vec![], text: last_panic() });
        }
        out
    }

    pub fn replay(&mut self, seed: u64, dropped: &Dropped) -> (Dropped, Out) {
        (dropped.clone(), self.run(&Plan::from_seed(seed).without(dropped), false))
    }

    /// Drops jobs and faults one at a time while the first violation's kind persists.
    pub fn shrink(&mut self, seed: u64, dropped: &Dropped) -> (Dropped, Out) {
        let base = Plan::from_seed(seed);
        let mut d = dropped.clone();
        let mut best = self.run(&base.without(&d), false);
        let Some(kind) = best.violations.first().map(|v| v.kind) else { return (d, best) };
        loop {
            let mut changed = false;
            let items: Vec<(bool, usize)> = base
                .jobs
                .iter()
                .map(|j| (true, j.id))
                .chain(base.faults.iter().map(|f| (false, f.id)))
                .filter(|(job, id)| if *job { !d.jobs.contains(id) } else { !d.faults.contains(id) })
                .collect();
            for (job, id) in items {
                let mut trial = d.clone();
                if job {
                    trial.jobs.insert(id);
                } else {
                    trial.faults.insert(id);
                }
                let out = self.run_focused(&base.without(&trial), false, Some(kind));
                if out.violations.iter().any(|v| v.kind == kind) {
                    d = trial;
                    best = out;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        // The shortest history of the kind that was found first.
        let out = self.run_focused(&base.without(&d), false, Some(kind));
        if out.violations.iter().any(|v| v.kind == kind) {
            best = out;
            if let Some(i) = best.violations.iter().position(|v| v.kind == kind) {
                let v = best.violations.remove(i);
                best.violations.insert(0, v);
            }
        }
        (d, best)
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn failed(kind: &'static str, text: String) -> Out {
    Out {
        violations: vec![Violation { kind, at: 0, tags: vec![], text }],
        observed: Observed::default(),
        stats: Stats::default(),
        digest: String::new(),
        lines: Vec::new(),
        relevant: Vec::new(),
    }
}

#[derive(Debug, Default)]
pub struct Summary {
    pub seeds: u64,
    pub attempts: u64,
    pub upstream_requests: u64,
    pub rpcs: u64,
    pub events: u64,
    pub store_ops: u64,
    pub simulated_us: i64,
    pub cached_reads: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub observed: Observed,
    /// Failing seeds and their first violation's kind.
    pub failed: Vec<(u64, String)>,
}

impl Summary {
    fn add(&mut self, seed: u64, out: &Out) {
        self.seeds += 1;
        self.attempts += out.stats.attempts;
        self.upstream_requests += out.stats.upstream_requests;
        self.rpcs += out.stats.rpcs;
        self.events += out.stats.events;
        self.store_ops += out.stats.store_ops;
        self.cached_reads += out.stats.cached_reads;
        self.simulated_us += out.stats.simulated_us;
        for (k, n) in &out.stats.faults {
            *self.faults.entry(k).or_default() += n;
        }
        self.observed.same_key_repeats += out.observed.same_key_repeats;
        self.observed.forwarded_after_ack += out.observed.forwarded_after_ack;
        self.observed.across_midnight += out.observed.across_midnight;
        self.observed.over_cap_by_execution_day += out.observed.over_cap_by_execution_day;
        self.observed.reads_unaudited += out.observed.reads_unaudited;
        if let Some(v) = out.violations.first() {
            self.failed.push((seed, v.kind.to_owned()));
        }
    }

    fn merge(&mut self, other: Summary) {
        self.seeds += other.seeds;
        self.attempts += other.attempts;
        self.upstream_requests += other.upstream_requests;
        self.rpcs += other.rpcs;
        self.events += other.events;
        self.store_ops += other.store_ops;
        self.cached_reads += other.cached_reads;
        self.simulated_us += other.simulated_us;
        for (k, n) in other.faults {
            *self.faults.entry(k).or_default() += n;
        }
        self.observed.same_key_repeats += other.observed.same_key_repeats;
        self.observed.forwarded_after_ack += other.observed.forwarded_after_ack;
        self.observed.across_midnight += other.observed.across_midnight;
        self.observed.over_cap_by_execution_day += other.observed.over_cap_by_execution_day;
        self.observed.reads_unaudited += other.observed.reads_unaudited;
        self.failed.extend(other.failed);
    }
}

/// Runs `seeds` over `threads` threads (seed i on thread i mod threads).
pub fn batch(seeds: &[u64], threads: usize, dropped: &Dropped) -> Result<Summary, String> {
    let seeds = Arc::new(seeds.to_vec());
    let done = Arc::new(AtomicU64::new(0));
    let total = seeds.len() as u64;
    let mut handles = Vec::new();
    for t in 0..threads {
        let (seeds, done, dropped) = (seeds.clone(), done.clone(), dropped.clone());
        handles.push(std::thread::spawn(move || -> Result<Summary, String> {
            let mut runner = Runner::new()?;
            let mut s = Summary::default();
            for seed in seeds.iter().skip(t).step_by(threads) {
                let out = runner.run(&Plan::from_seed(*seed).without(&dropped), false);
                s.add(*seed, &out);
                let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                if n % 1000 == 0 || n == total {
                    println!("  {n}/{total} seeds");
                }
            }
            Ok(s)
        }));
    }
    let mut total = Summary::default();
    for h in handles {
        match h.join() {
            Ok(Ok(s)) => total.merge(s),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("a simulation thread panicked".into()),
        }
    }
    total.failed.sort();
    Ok(total)
}
