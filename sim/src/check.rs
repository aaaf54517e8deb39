//! What a run did, and the checker of Keybrake's promises over it. The
//! history is recorded by the simulator (what was forwarded, what the
//! upstream executed, what each client saw, when each revocation was
//! acknowledged, which FX rates were in force); the ledger and audit log are
//! read from the store after the run has healed and gone quiet.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use keybrake_control::clock::day_of;
use keybrake_control::model::{AuditRow, FxRate};
use keybrake_control::store::AuditQuery;
use keybrake_control::usd::{to_usd, FxTable};

use crate::world::World;

/// One line of the printed history; `tags` name the keys, operations and
/// calls it is about ("*" for events of the whole system: crashes, freezes).
#[derive(Debug, Clone)]
pub struct Line {
    pub t: i64,
    pub tags: Vec<String>,
    pub text: String,
}

/// A request the gateway let go to the upstream.
#[derive(Debug, Clone)]
pub struct Forward {
    pub t: i64,
    pub key: usize,
    pub op: String,
    pub call_id: String,
    /// When and by whom the call was allowed.
    pub decided: Option<(i64, String)>,
    pub method: String,
    pub path: String,
    pub idem: String,
    pub authorization: String,
    pub amount: i64,
    pub currency: String,
    pub body: String,
}

/// A charge the upstream executed.
#[derive(Debug, Clone)]
pub struct Exec {
    pub t: i64,
    pub fwd: usize,
    pub op: String,
    pub idem: String,
    pub amount: i64,
    pub currency: String,
    pub key: usize,
    pub charge: String,
}

/// What a client saw for one attempt (status 0: no answer).
#[derive(Debug, Clone)]
pub struct Saw {
    pub t: i64,
    /// When the client sent it.
    pub sent: i64,
    pub key: usize,
    pub op: String,
    pub post: bool,
    pub status: u32,
    pub call_id: String,
    pub charge: Option<String>,
    pub worker: Option<usize>,
}

#[derive(Debug, Default)]
pub struct History {
    pub lines: Vec<Line>,
    pub forwards: Vec<Forward>,
    pub execs: Vec<Exec>,
    pub saw: Vec<Saw>,
    /// Call id -> (when, by whom) the control service allowed it.
    pub decided: HashMap<String, (i64, String)>,
    /// Key -> (when its revocation was acknowledged to the operator, whether every worker had acknowledged it).
    pub revoked: BTreeMap<usize, (i64, bool)>,
    /// (from when, currency, rate) as the operator set them.
    pub fx: Vec<(i64, String, String)>,
    pub worker_crashes: Vec<(i64, usize)>,
    /// Call ids of read records acknowledged and lost.
    pub lost_batches: Vec<String>,
    pub lost_settlements: u64,
    pub bad_auth: Vec<usize>,
    pub stuck: bool,
}

impl History {
    pub fn line(&mut self, t: i64, tags: Vec<String>, text: String) {
        self.lines.push(Line { t, tags, text });
    }

    /// A digest of the whole history (two runs of a seed must print the same).
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for l in &self.lines {
            h.update(l.t.to_le_bytes());
            h.update(l.text.as_bytes());
        }
        h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// The FX table in force at `t`, as the operator set it.
    fn fx_at(&self, t: i64) -> FxTable {
        let mut table = FxTable::new();
        for (from, currency, rate) in &self.fx {
            if *from <= t {
                table.insert(
                    currency.clone(),
                    FxRate { currency: currency.clone(), usd_per_unit: rate.clone(), as_of: String::new() },
                );
            }
        }
        table
    }
}

/// `HH:MM:SS.mmm` of a time in microseconds.
pub fn time(us: i64) -> String {
    let t = keybrake_control::clock::rfc3339_us(us);
    t.get(11..23).unwrap_or(&t).to_owned()
}

#[derive(Debug, Clone)]
pub struct Violation {
    pub kind: &'static str,
    pub at: i64,
    pub tags: Vec<String>,
    pub text: String,
}

/// Figures a run reports besides its violations.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    /// Executions at a non-deduplicating upstream of a retry sent under the
    /// same upstream key (Stripe would have replayed them).
    pub same_key_repeats: u64,
    /// Calls allowed before a revocation was acknowledged and forwarded after it.
    pub forwarded_after_ack: u64,
    /// Charges authorized on one UTC day and executed on the next.
    pub across_midnight: u64,
    /// Keys whose charges executed on one UTC day (rather than authorized on
    /// it) add up to more than the cap: what a cap per day of execution would forbid.
    pub over_cap_by_execution_day: u64,
    /// Successful reads whose audit record was lost with a worker or a lost commit.
    pub reads_unaudited: u64,
}

/// Money a key moved on one UTC day.
#[derive(Debug, Default)]
struct Money {
    /// At the rates in force when each call was authorized.
    usd: i64,
    /// As the ledger priced each call.
    ledger_usd: i64,
    last: i64,
    charges: Vec<String>,
}

pub fn check(w: &World) -> (Vec<Violation>, Observed) {
    let mut v = Vec::new();
    let mut obs = Observed::default();
    let h = &w.hist;
    let query = AuditQuery { ascending: true, limit: 1_000_000, ..Default::default() };
    let audit: Vec<AuditRow> = match w.rt.block_on(w.store.read(move |l| l.query_audit(&query))) {
        Ok(rows) => rows,
        Err(e) => {
            v.push(Violation { kind: "ledger_unreadable", at: w.now, tags: vec![], text: e.to_string() });
            return (v, obs);
        }
    };
    if h.stuck {
        v.push(Violation { kind: "no_quiescence", at: w.now, tags: vec![], text: "the run did not end".into() });
    }
    for fwd in &h.bad_auth {
        let f = &h.forwards[*fwd];
        v.push(Violation {
            kind: "upstream_got_other_credentials",
            at: f.t,
            tags: vec![format!("k{}", f.key)],
            text: format!("fwd{fwd} reached the upstream without the real key"),
        });
    }

    // Intent rows, by the call that wrote them and by the upstream key they sent.
    let intents: Vec<&AuditRow> = audit.iter().filter(|r| r.entry.stage == "intent").collect();
    let intent_of_call: HashMap<&str, &AuditRow> = intents.iter().map(|r| (r.entry.call_id.as_str(), *r)).collect();
    // The intent whose reservation holds a call's money: its own, or for a
    // retry that took over an uncertain call (under the same upstream key), that
    // of the call it took over, and so on back to the first.
    let reserving = |call_id: &str| -> Option<&AuditRow> {
        let mut at = intents.iter().position(|r| r.entry.call_id == call_id)?;
        while intents[at].entry.reason == "retry_of_uncertain_call" {
            let key = intents[at].entry.forwarded_idempotency_key.as_str();
            match intents[..at].iter().rposition(|r| r.entry.forwarded_idempotency_key == key) {
                Some(earlier) => at = earlier,
                None => break,
            }
        }
        Some(intents[at])
    };
    let audited: BTreeSet<&str> = audit.iter().map(|r| r.entry.call_id.as_str()).collect();

    // 1. Nothing reaches the upstream unrecorded: every money-moving request
    // forwarded carries the upstream key of its own durable intent row.
    for (i, f) in h.forwards.iter().enumerate() {
        if f.method != "POST" {
            continue;
        }
        let key_id = w.keys.get(f.key).map(|k| k.id.as_str()).unwrap_or_default();
        let ok = intent_of_call
            .get(f.call_id.as_str())
            .is_some_and(|r| r.entry.key_id == key_id && r.entry.forwarded_idempotency_key == f.idem);
        if !ok {
            v.push(Violation {
                kind: "forwarded_unrecorded",
                at: f.t,
                tags: vec![format!("k{}", f.key), f.op.clone(), f.call_id.clone()],
                text: format!("fwd{i} ({} under {:?}) has no intent row of its own", f.op, f.idem),
            });
        }
    }

    // 2. Each logical operation is accepted upstream at most once: at a
    // deduplicating upstream, executed once; at one that does not, executed
    // under one upstream key (a retry of an uncertain call repeats the key by
    // design, and Stripe replays it).
    let mut by_op: BTreeMap<&str, Vec<&Exec>> = BTreeMap::new();
    for e in &h.execs {
        by_op.entry(e.op.as_str()).or_default().push(e);
    }
    for (op, execs) in &by_op {
        let keys: BTreeSet<&str> = execs.iter().map(|e| e.idem.as_str()).collect();
        obs.same_key_repeats += (execs.len() - keys.len()) as u64;
        let twice = if w.plan.dedup_upstream { execs.len() > 1 } else { keys.len() > 1 };
        if twice {
            let second = if w.plan.dedup_upstream {
                execs[1]
            } else {
                execs.iter().find(|e| e.idem != execs[0].idem).copied().unwrap_or(execs[1])
            };
            v.push(Violation {
                kind: "operation_executed_twice",
                at: second.t,
                tags: vec![op.to_string(), format!("k{}", second.key)],
                text: format!(
                    "{op} was executed {} times under upstream keys {:?} ({})",
                    execs.len(),
                    keys,
                    execs.iter().map(|e| e.charge.as_str()).collect::<Vec<_>>().join(", ")
                ),
            });
        }
    }

    // 3. Money accepted upstream per key and UTC day of its authorization stays
    // within the key's cap, in USD at the rates in force when it was
    // authorized; 4. the ledger counts at least that (in its own pricing), and
    // holds no reservation once every call settled or its lease ran out.
    let mut seen: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut money: BTreeMap<(String, i64), Money> = BTreeMap::new();
    let mut by_execution_day: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for e in &h.execs {
        if !seen.insert((e.op.as_str(), e.idem.as_str())) {
            continue; // what Stripe would have replayed
        }
        let Some(intent) = reserving(h.forwards[e.fwd].call_id.as_str()) else { continue };
        let decided_at = h.decided.get(&intent.entry.call_id).map(|(t, _)| *t).unwrap_or(intent.entry.at_us);
        let usd = to_usd(e.amount, &e.currency, false, &h.fx_at(decided_at)).map(|u| u.0).unwrap_or(i64::MAX / 4);
        let day = day_of(intent.entry.at_us);
        if day_of(e.t) != day {
            obs.across_midnight += 1;
        }
        *by_execution_day.entry((intent.entry.key_id.clone(), day_of(e.t))).or_default() += usd;
        let m = money.entry((intent.entry.key_id.clone(), day)).or_default();
        m.usd += usd;
        m.ledger_usd += intent.entry.usd_micros.unwrap_or(0);
        m.last = m.last.max(e.t);
        m.charges.push(e.charge.clone());
    }
    let caps: HashMap<&str, (usize, Option<i64>)> =
        w.keys.iter().enumerate().map(|(i, k)| (k.id.as_str(), (i, k.cap_cents))).collect();
    for ((key_id, day), Money { usd, ledger_usd, last, charges }) in &money {
        let Some((k, cap)) = caps.get(key_id.as_str()).copied() else { continue };
        if let Some(cap) = cap {
            if *usd > cap * 10_000 {
                v.push(Violation {
                    kind: "over_cap",
                    at: *last,
                    tags: vec![format!("k{k}")],
                    text: format!(
                        "k{k} ({key_id}): {} accepted upstream on day {} ({}) over its cap of {}",
                        dollars(*usd),
                        keybrake_control::clock::day_text(*day),
                        charges.join(", "),
                        dollars(cap * 10_000)
                    ),
                });
            }
        }
        let (id, d) = (key_id.clone(), *day);
        if let Ok(spend) = w.rt.block_on(w.store.read(move |l| l.spend(&id, d))) {
            if spend.committed + spend.uncertain < *ledger_usd {
                v.push(Violation {
                    kind: "ledger_short",
                    at: *last,
                    tags: vec![format!("k{k}")],
                    text: format!(
                        "k{k}: {} moved as the ledger priced it, the ledger counts {} committed + {} uncertain",
                        dollars(*ledger_usd),
                        dollars(spend.committed),
                        dollars(spend.uncertain)
                    ),
                });
            }
        }
    }
    for ((key_id, _), usd) in &by_execution_day {
        if caps.get(key_id.as_str()).and_then(|(_, cap)| *cap).is_some_and(|cap| *usd > cap * 10_000) {
            obs.over_cap_by_execution_day += 1;
        }
    }
    let start_day = day_of(w.plan.start_us);
    for (k, key) in w.keys.iter().enumerate() {
        for day in start_day..=start_day + 1 {
            let id = key.id.clone();
            if let Ok(spend) = w.rt.block_on(w.store.read(move |l| l.spend(&id, day))) {
                if spend.reserved != 0 {
                    v.push(Violation {
                        kind: "reservation_left",
                        at: w.now,
                        tags: vec![format!("k{k}")],
                        text: format!("k{k}: {} still reserved after every lease ran out", dollars(spend.reserved)),
                    });
                }
            }
        }
    }

    // 5. Nothing is allowed after its key's revocation was acknowledged.
    for (i, f) in h.forwards.iter().enumerate() {
        let Some((acked, _)) = h.revoked.get(&f.key) else { continue };
        let decided = f.decided.as_ref().map(|(t, _)| *t).unwrap_or(f.t);
        if decided > *acked {
            v.push(Violation {
                kind: "allowed_after_revocation",
                at: f.t,
                tags: vec![format!("k{}", f.key), f.op.clone(), f.call_id.clone()],
                text: format!(
                    "fwd{i} ({} {}) with k{} was allowed at {} by {}, after its revocation was acknowledged at {}",
                    f.method,
                    f.op,
                    f.key,
                    time(decided),
                    f.decided.as_ref().map(|(_, by)| by.as_str()).unwrap_or("?"),
                    time(*acked)
                ),
            });
        } else if f.t > *acked {
            obs.forwarded_after_ack += 1;
        }
    }

    // 6. Every call a client saw succeed is in the audit log; 7. and every
    // charge a client saw succeed was executed upstream, for its operation.
    let executed: HashMap<&str, &Exec> = h.execs.iter().map(|e| (e.charge.as_str(), e)).collect();
    for s in &h.saw {
        if !(200..300).contains(&s.status) {
            continue;
        }
        if !s.call_id.is_empty() && !audited.contains(s.call_id.as_str()) {
            // A read is recorded after it completed, from its worker's outbox, in
            // a batch committed without an fsync: a read whose worker died before
            // delivering it, or whose batch a machine crash lost, is missing.
            let lost_with_worker =
                s.worker.is_some_and(|w| h.worker_crashes.iter().any(|(t, c)| *c == w && *t >= s.sent));
            let lost_commit = h.lost_batches.contains(&s.call_id);
            if !s.post && (lost_with_worker || lost_commit) {
                obs.reads_unaudited += 1;
                continue;
            }
            v.push(Violation {
                kind: "success_not_audited",
                at: s.t,
                tags: vec![format!("k{}", s.key), s.op.clone(), s.call_id.clone()],
                text: format!("{} ({}) succeeded for its client and is not in the audit log", s.call_id, s.op),
            });
        }
        if s.post {
            let real = s.charge.as_deref().and_then(|c| executed.get(c)).is_some_and(|e| e.op == s.op);
            if !real {
                v.push(Violation {
                    kind: "phantom_success",
                    at: s.t,
                    tags: vec![format!("k{}", s.key), s.op.clone()],
                    text: format!(
                        "the client saw {} succeed with {:?}, which the upstream never executed",
                        s.op, s.charge
                    ),
                });
            }
        }
    }
    v.sort_by_key(|x| x.at);
    (v, obs)
}

fn dollars(micros: i64) -> String {
    format!("${}.{:06}", micros / 1_000_000, (micros % 1_000_000).abs())
}

/// The history a violation needs: the lines about its keys, operations and
/// calls (and the calls those lines name), and the system's own events, up to
/// the violation.
pub fn relevant_history(w: &World, violation: &Violation) -> Vec<String> {
    let mut tags: BTreeSet<String> = violation.tags.iter().cloned().collect();
    for _ in 0..2 {
        let more: Vec<String> = w
            .hist
            .lines
            .iter()
            .filter(|l| l.t <= violation.at && l.tags.iter().any(|t| tags.contains(t)))
            .flat_map(|l| l.tags.iter().filter(|t| t.starts_with("call_") || t.starts_with('k')).cloned())
            .collect();
        tags.extend(more);
    }
    w.hist
        .lines
        .iter()
        .filter(|l| l.t <= violation.at)
        .filter(|l| l.tags.iter().any(|t| t == "*" || tags.contains(t)))
        .map(|l| format!("{}  {}", time(l.t), l.text))
        .collect()
}
