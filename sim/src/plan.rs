//! What one run does, drawn from its seed before it starts: the topology, the
//! jobs (what our users' jobs do, with their keys and amounts) and the faults
//! (each a separate item, so a failing run can be shrunk by dropping items and
//! replayed with `--drop`).

use std::collections::BTreeSet;
use std::fmt;

use crate::rng::Rng;

/// 2026-01-01T00:00:00Z in microseconds.
const YEAR_START_US: i64 = 1_767_225_600_000_000;
const DAY_US: i64 = 86_400_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// A Ray task re-run from its first line (a fresh SDK `Idempotency-Key`
    /// each run) after a failure, and sometimes after a success; content dedup.
    Rerun { runs: u32 },
    /// A Kestra task retried with a stable content-hash `Idempotency-Key`
    /// (key in `idempotency_key` mode).
    Stable { attempts: u32 },
    /// A Ray Serve request delivered again, each delivery with a newly issued
    /// vault key (content dedup across keys).
    Serve { deliveries: u32 },
    /// An Actor's concurrent calls: on one shared capped key, or one key per customer.
    Actor { calls: u32, shared: bool },
    /// Dollars passed as cents: a hundred times the amount.
    Cents,
    /// Reads of a charge (decided from the workers' key caches once known).
    Reader { reads: u32 },
}

#[derive(Debug, Clone)]
pub struct JobSpec {
    pub id: usize,
    pub kind: JobKind,
    pub start_ms: i64,
    pub currency: &'static str,
    /// In the currency's minor unit.
    pub amount: i64,
    /// The key's daily cap in US cents (None: uncapped).
    pub cap_cents: Option<i64>,
    pub ttl_secs: i64,
    /// The SDK's own retries of one call (same `Idempotency-Key`).
    pub sdk_retries: u32,
    /// The client's read timeout per attempt.
    pub timeout_ms: i64,
    /// Calls Stripe's paths at the listener's root (`/v1/...`, stripe-node) rather than `/stripe/v1/...`.
    pub root_route: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FaultKind {
    /// A replica's process dies (its memory is lost; the database keeps what
    /// it committed) and starts again after `down_ms`; with `mid_rpc`, right
    /// after it committed a call and before its answer left.
    CrashReplica {
        replica: usize,
        down_ms: i64,
        mid_rpc: bool,
    },
    /// A replica stops (SIGSTOP): it answers nothing, runs nothing, then resumes.
    FreezeReplica {
        replica: usize,
        ms: i64,
    },
    /// An Envoy worker dies with its outbox and key cache, and starts again.
    CrashWorker {
        worker: usize,
        down_ms: i64,
    },
    /// An Envoy worker's event loop stalls.
    FreezeWorker {
        worker: usize,
        ms: i64,
    },
    /// An operator revokes the job's current key through a replica.
    Revoke {
        job: usize,
        replica: usize,
    },
    /// An operator sets a new FX rate through a replica.
    SetFx {
        currency: &'static str,
        rate: &'static str,
        replica: usize,
    },
    /// For `ms`, a replica's settlements and audit batches are acknowledged and
    /// then lost (a machine crash before the group's fsync, with nothing reading them first).
    LostCommits {
        replica: usize,
        ms: i64,
    },
    /// A worker's revocation stream is cut by the network.
    CutStream {
        worker: usize,
    },
    NetDrop {
        p: f64,
    },
    NetDuplicate {
        p: f64,
    },
    /// Some messages take up to `max_ms` (reordered past later ones).
    NetSlow {
        p: f64,
        max_ms: i64,
    },
    /// The upstream executes, and its answer is lost (a reset after it took the request).
    UpLoseAnswer {
        p: f64,
    },
    /// The connection resets before the upstream got the request (nothing executed; Envoy cannot tell).
    UpResetBefore {
        p: f64,
    },
    /// The connection to the upstream fails (nothing sent; Envoy knows).
    UpConnectFail {
        p: f64,
    },
    UpDecline {
        p: f64,
    },
    UpSlow {
        p: f64,
        max_ms: i64,
    },
}

impl FaultKind {
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::CrashReplica { mid_rpc: false, .. } => "replica_crash",
            FaultKind::CrashReplica { mid_rpc: true, .. } => "replica_crash_after_commit",
            FaultKind::FreezeReplica { .. } => "replica_freeze",
            FaultKind::CrashWorker { .. } => "worker_crash",
            FaultKind::FreezeWorker { .. } => "worker_freeze",
            FaultKind::Revoke { .. } => "revocation",
            FaultKind::SetFx { .. } => "fx_change",
            FaultKind::LostCommits { .. } => "lost_commits",
            FaultKind::CutStream { .. } => "stream_cut",
            FaultKind::NetDrop { .. } => "net_drop",
            FaultKind::NetDuplicate { .. } => "net_duplicate",
            FaultKind::NetSlow { .. } => "net_slow",
            FaultKind::UpLoseAnswer { .. } => "upstream_lose_answer",
            FaultKind::UpResetBefore { .. } => "upstream_reset_before",
            FaultKind::UpConnectFail { .. } => "upstream_connect_fail",
            FaultKind::UpDecline { .. } => "upstream_decline",
            FaultKind::UpSlow { .. } => "upstream_slow",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Fault {
    pub id: usize,
    pub at_ms: i64,
    pub kind: FaultKind,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub replicas: usize,
    pub gateways: usize,
    pub workers_per_gateway: usize,
    /// The upstream keeps Stripe's 24 h idempotency (else it executes every request it gets).
    pub dedup_upstream: bool,
    pub lease_secs: i64,
    pub start_us: i64,
    pub jobs: Vec<JobSpec>,
    pub faults: Vec<Fault>,
}

/// Items left out of a plan (`--drop j3,f2`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropped {
    pub jobs: BTreeSet<usize>,
    pub faults: BTreeSet<usize>,
}

impl Dropped {
    pub fn parse(text: &str) -> Result<Dropped, String> {
        let mut d = Dropped::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (set, num) = match item.split_at(1) {
                ("j", n) => (&mut d.jobs, n),
                ("f", n) => (&mut d.faults, n),
                _ => return Err(format!("--drop takes items like j3 or f2, not {item:?}")),
            };
            set.insert(num.parse().map_err(|_| format!("--drop: {item:?} is not j<number> or f<number>"))?);
        }
        Ok(d)
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.faults.is_empty()
    }
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> =
            self.jobs.iter().map(|j| format!("j{j}")).chain(self.faults.iter().map(|x| format!("f{x}"))).collect();
        f.write_str(&items.join(","))
    }
}

impl Plan {
    pub fn from_seed(seed: u64) -> Plan {
        let mut r = Rng::derive(seed, "plan", 0);
        let replicas = 1 + r.index(3);
        let gateways = 1 + r.index(2);
        let workers_per_gateway = 1 + r.index(2);
        let workers = gateways * workers_per_gateway;
        let day = r.range(0, 365);
        let time_of_day = if r.chance(0.4) {
            // The run crosses UTC midnight.
            DAY_US - r.range(2_000_000, 20_000_000)
        } else {
            r.range(0, DAY_US - 60_000_000)
        };
        let start_us = YEAR_START_US + day * DAY_US + time_of_day;
        let njobs = 2 + r.index(5);
        let jobs = (0..njobs).map(|id| job(seed, id)).collect();

        let mut faults = Vec::new();
        let mut add = |at_ms: i64, kind: FaultKind| {
            let id = faults.len();
            faults.push(Fault { id, at_ms, kind });
        };
        let standing: [(f64, FaultKind); 8] = [
            (0.3, FaultKind::NetDrop { p: [0.005, 0.02, 0.05][r.index(3)] }),
            (0.3, FaultKind::NetDuplicate { p: [0.01, 0.05][r.index(2)] }),
            (0.4, FaultKind::NetSlow { p: [0.02, 0.1][r.index(2)], max_ms: [300, 1_500, 4_000][r.index(3)] }),
            (0.5, FaultKind::UpLoseAnswer { p: [0.05, 0.2, 0.4][r.index(3)] }),
            (0.25, FaultKind::UpResetBefore { p: [0.05, 0.2][r.index(2)] }),
            (0.2, FaultKind::UpConnectFail { p: [0.05, 0.2][r.index(2)] }),
            (0.3, FaultKind::UpDecline { p: [0.1, 0.3][r.index(2)] }),
            (0.25, FaultKind::UpSlow { p: [0.05, 0.2][r.index(2)], max_ms: [2_000, 12_000][r.index(2)] }),
        ];
        for (p, kind) in standing {
            if r.chance(p) {
                add(0, kind);
            }
        }
        let timed = r.index(7);
        for _ in 0..timed {
            let at_ms = r.range(0, 14_000);
            let replica = r.index(replicas);
            let worker = r.index(workers);
            let kind = match r.index(10) {
                0 => FaultKind::CrashReplica { replica, down_ms: r.range(100, 4_000), mid_rpc: r.chance(0.5) },
                1 => FaultKind::FreezeReplica { replica, ms: r.range(200, 7_000) },
                2 => FaultKind::CrashWorker { worker, down_ms: r.range(50, 2_000) },
                3 => FaultKind::FreezeWorker { worker, ms: r.range(100, 3_000) },
                4 | 5 => FaultKind::Revoke { job: r.index(njobs), replica },
                6 => FaultKind::SetFx {
                    currency: ["eur", "jpy"][r.index(2)],
                    rate: ["0.9", "1.25", "1.6", "0.0067", "0.012"][r.index(5)],
                    replica,
                },
                7 => FaultKind::LostCommits { replica, ms: r.range(100, 3_000) },
                _ => FaultKind::CutStream { worker },
            };
            // A rate is for the currency it names: eur about 1, jpy about 0.01.
            let kind = match kind {
                FaultKind::SetFx { currency: "jpy", rate, replica } if !rate.starts_with("0.0") => {
                    FaultKind::SetFx { currency: "jpy", rate: "0.0095", replica }
                }
                FaultKind::SetFx { currency: "eur", rate, replica } if rate.starts_with("0.0") => {
                    FaultKind::SetFx { currency: "eur", rate: "1.4", replica }
                }
                k => k,
            };
            add(at_ms, kind);
        }
        Plan {
            seed,
            replicas,
            gateways,
            workers_per_gateway,
            dedup_upstream: r.chance(0.5),
            lease_secs: r.range(2, 7),
            start_us,
            jobs,
            faults,
        }
    }

    /// The plan without the dropped items (ids are kept, so names stay).
    pub fn without(&self, dropped: &Dropped) -> Plan {
        let mut p = self.clone();
        p.jobs.retain(|j| !dropped.jobs.contains(&j.id));
        p.faults.retain(|f| !dropped.faults.contains(&f.id));
        p
    }

    pub fn workers(&self) -> usize {
        self.gateways * self.workers_per_gateway
    }

    pub fn describe(&self) -> String {
        let mut s = format!(
            "seed {}: {} replica(s), {} gateway(s) x {} worker(s), upstream {}, lease {} s, start {}\n",
            self.seed,
            self.replicas,
            self.gateways,
            self.workers_per_gateway,
            if self.dedup_upstream { "deduplicating (Stripe's 24 h idempotency)" } else { "not deduplicating" },
            self.lease_secs,
            keybrake_control::clock::rfc3339_us(self.start_us),
        );
        for j in &self.jobs {
            s.push_str(&format!(
                "  j{}: {:?} at +{} ms, {} {} cap {} ttl {} s, {} SDK retries, timeout {} ms{}\n",
                j.id,
                j.kind,
                j.start_ms,
                j.amount,
                j.currency,
                j.cap_cents.map(|c| format!("${}.{:02}", c / 100, c % 100)).unwrap_or_else(|| "none".into()),
                j.ttl_secs,
                j.sdk_retries,
                j.timeout_ms,
                if j.root_route { ", root route" } else { "" },
            ));
        }
        for f in &self.faults {
            s.push_str(&format!("  f{}: at +{} ms {:?}\n", f.id, f.at_ms, f.kind));
        }
        s
    }
}

fn job(seed: u64, id: usize) -> JobSpec {
    let mut r = Rng::derive(seed, "jobspec", id as u64);
    let kind = match r.index(9) {
        0 | 1 => JobKind::Rerun { runs: 1 + r.below(4) as u32 },
        2 => JobKind::Stable { attempts: 1 + r.below(4) as u32 },
        3 => JobKind::Serve { deliveries: 1 + r.below(3) as u32 },
        4 | 5 => JobKind::Actor { calls: 2 + r.below(6) as u32, shared: r.chance(0.6) },
        6 => JobKind::Cents,
        _ => JobKind::Reader { reads: 3 + r.below(10) as u32 },
    };
    let (currency, amount) = match r.index(10) {
        0 | 1 => ("eur", r.range(500, 3_000)),
        2 => ("jpy", r.range(500, 5_000)),
        _ => ("usd", r.range(500, 3_000)),
    };
    let cap_cents = match kind {
        JobKind::Actor { shared: true, .. } => Some(r.range(3_000, 8_000)),
        _ if r.chance(0.1) => None,
        _ => Some(r.range(2_000, 10_000)),
    };
    JobSpec {
        id,
        kind,
        start_ms: r.range(0, 6_000),
        currency,
        amount,
        cap_cents,
        ttl_secs: if r.chance(0.15) { r.range(2, 15) } else { 3_600 },
        sdk_retries: r.below(3) as u32,
        timeout_ms: [2_000, 5_000, 15_000, 30_000][r.index(4)],
        root_route: r.chance(0.3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_reproducible_and_droppable() {
        let a = Plan::from_seed(42);
        let b = Plan::from_seed(42);
        assert_eq!(a.describe(), b.describe());
        let d = Dropped::parse("j0,f1").unwrap();
        assert_eq!(d.to_string(), "j0,f1");
        let smaller = a.without(&d);
        assert!(smaller.jobs.iter().all(|j| j.id != 0));
        assert!(Dropped::parse("x1").is_err());
    }
}
