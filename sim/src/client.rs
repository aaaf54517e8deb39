//! The clients and the upstream. Clients behave like our users' jobs (see
//! `plan::JobKind`) through an SDK that behaves like stripe-python's: a random
//! `Idempotency-Key` per call unless the job passes one, and its own retries of
//! a call under the same key after a network error, a 409, a 5xx or
//! `Stripe-Should-Retry: true`, never after `Stripe-Should-Retry: false`.
//! The upstream is Stripe's charge API, with or without its 24 h idempotency.

use std::collections::HashMap;

use keybrake_control::issuing::CreateKey;
use keybrake_core::vault_key::VaultKey;
use sha2::{Digest, Sha256};

use crate::check::{Exec, Forward, Saw};
use crate::gateway::envoy_reset;
use crate::plan::{JobKind, JobSpec};
use crate::rng::Rng;
use crate::world::{Answer, Ev, Hop, Http, NodeRef, Resp, World, REAL_KEY};

pub struct SimKey {
    pub id: String,
    secret: String,
    pub cap_cents: Option<i64>,
}

pub struct Job {
    pub spec: JobSpec,
    rng: Rng,
    pub keys: Vec<usize>,
    pub done: bool,
    /// SDK calls in progress and next steps scheduled.
    outstanding: u32,
    /// Re-runs, attempts, deliveries or reads left.
    left: u32,
}

impl Job {
    pub fn new(seed: u64, spec: JobSpec) -> Job {
        let rng = Rng::derive(seed, "job", spec.id as u64);
        Job { spec, rng, keys: Vec::new(), done: false, outstanding: 0, left: 0 }
    }
}

pub struct SdkCall {
    job: usize,
    pub key: usize,
    pub op: String,
    method: &'static str,
    path: String,
    body: String,
    idem: String,
    retries_left: u32,
    tries: u32,
}

pub struct Attempt {
    pub sdk: usize,
    started: i64,
    pub at: Option<(NodeRef, u64)>,
    done: bool,
}

pub struct Upstream {
    dedup: bool,
    /// Stripe's idempotency records: (account, key) -> (request body, answer).
    stored: HashMap<String, (String, Answer)>,
    /// Whether the card behind an upstream key is declined: the same for every
    /// request under that key, as Stripe would answer it (a non-deduplicating
    /// upstream executes each request again, but answers alike).
    declined: HashMap<String, bool>,
    next_charge: u64,
}

impl Upstream {
    pub fn new(dedup: bool) -> Upstream {
        Upstream { dedup, stored: HashMap::new(), declined: HashMap::new(), next_charge: 0 }
    }
}

fn form_value<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
}

fn json_answer(status: u32, value: serde_json::Value, request_id: String) -> Answer {
    Answer {
        status,
        headers: vec![("content-type".into(), "application/json".into()), ("request-id".into(), request_id)],
        body: value.to_string().into_bytes(),
        details: "via_upstream".into(),
    }
}

impl World<'_> {
    fn issue_key(&mut self, j: usize, dedup: &str) -> usize {
        let spec = self.jobs[j].spec.clone();
        let n = self.keys.len();
        let mut body = serde_json::json!({
            "label": format!("sim-j{}-k{n}", spec.id),
            "vendor": "stripe",
            "allowed_endpoints": ["POST /v1/charges", "GET /v1/charges/*"],
            "expires_in_seconds": spec.ttl_secs,
            "dedup": dedup,
        });
        if let Some(c) = spec.cap_cents {
            body["daily_usd_cap"] = serde_json::Value::String(format!("{}.{:02}", c / 100, c % 100));
        }
        let vault_key = VaultKey::from_entropy(self.jobs[j].rng.bytes());
        let id = format!("key_{n:03}");
        let record = serde_json::from_value::<CreateKey>(body)
            .map_err(|e| e.to_string())
            .and_then(|k| k.validate().map_err(|e| e.message))
            .map(|v| v.into_record(id.clone(), vault_key.hash(), self.now / 1_000_000));
        match record {
            Ok(record) => {
                let expires = record.expires_at;
                if let Err(e) = self.wait(self.store.write(move |l| l.insert_key(&record))) {
                    self.note(vec![], format!("issuing a key failed: {e}"));
                }
                self.note(
                    vec![format!("k{n}"), format!("j{}", spec.id)],
                    format!(
                        "j{} gets k{n} ({id}, {dedup} dedup, cap {:?} cents, expires {})",
                        spec.id,
                        spec.cap_cents,
                        keybrake_control::clock::rfc3339(expires)
                    ),
                );
            }
            Err(e) => self.note(vec![], format!("a key request was refused: {e}")),
        }
        self.keys.push(SimKey { id, secret: vault_key.expose().to_owned(), cap_cents: spec.cap_cents });
        self.key_by_hash.insert(vault_key.hash(), n);
        self.jobs[j].keys.push(n);
        n
    }

    fn fresh_idem(&mut self, j: usize) -> String {
        let b: [u8; 16] = self.jobs[j].rng.bytes();
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        format!("{}-{}-4{}-a{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
    }

    fn op_name(&self, j: usize, i: u32) -> String {
        format!("j{}-op{i}", self.jobs[j].spec.id)
    }

    fn charge(&mut self, j: usize, key: usize, op_index: u32, amount: i64, idem: String) {
        let spec = &self.jobs[j].spec;
        let op = self.op_name(j, op_index);
        let path = if spec.root_route { "/v1/charges" } else { "/stripe/v1/charges" };
        let body =
            format!("amount={amount}&currency={}&customer=cus_{}_{op_index}&description={op}", spec.currency, spec.id);
        self.sdk_call(j, key, op, "POST", path.to_owned(), body, idem);
    }

    fn read(&mut self, j: usize, key: usize, charge: &str) {
        let path = if self.jobs[j].spec.root_route { "" } else { "/stripe" };
        let op = format!("read-{}", self.jobs[j].spec.id);
        self.sdk_call(j, key, op, "GET", format!("{path}/v1/charges/{charge}"), String::new(), String::new());
    }

    #[allow(clippy::too_many_arguments)]
    fn sdk_call(
        &mut self,
        j: usize,
        key: usize,
        op: String,
        method: &'static str,
        path: String,
        body: String,
        idem: String,
    ) {
        let retries = self.jobs[j].spec.sdk_retries;
        self.jobs[j].outstanding += 1;
        let c = self.sdk.len();
        self.sdk.push(SdkCall { job: j, key, op, method, path, body, idem, retries_left: retries, tries: 0 });
        self.at(self.now, Ev::AttemptSend(c));
    }

    pub fn job_start(&mut self, j: usize) {
        let spec = self.jobs[j].spec.clone();
        let tag = format!("j{}", spec.id);
        self.note(vec![tag], format!("j{} starts: {:?}", spec.id, spec.kind));
        match spec.kind {
            JobKind::Rerun { runs } | JobKind::Serve { deliveries: runs } => {
                self.jobs[j].left = runs.saturating_sub(1);
                let key = self.issue_key(j, "content");
                let idem = self.fresh_idem(j);
                self.charge(j, key, 0, spec.amount, idem);
            }
            JobKind::Stable { attempts } => {
                self.jobs[j].left = attempts.saturating_sub(1);
                let key = self.issue_key(j, "idempotency_key");
                let idem = self.stable_idem(j);
                self.charge(j, key, 0, spec.amount, idem);
            }
            JobKind::Actor { calls, shared } => {
                let mut key = if shared { Some(self.issue_key(j, "content")) } else { None };
                for i in 0..calls {
                    let k = match key {
                        Some(k) => k,
                        None => self.issue_key(j, "content"),
                    };
                    if shared {
                        key = Some(k);
                    }
                    let idem = self.fresh_idem(j);
                    self.charge(j, k, i, spec.amount, idem);
                }
            }
            JobKind::Cents => {
                let key = self.issue_key(j, "content");
                let idem = self.fresh_idem(j);
                self.charge(j, key, 0, spec.amount * 100, idem);
            }
            JobKind::Reader { reads } => {
                self.jobs[j].left = reads.saturating_sub(1);
                let key = self.issue_key(j, "content");
                let charge = format!("ch_of_j{}", spec.id);
                self.read(j, key, &charge);
            }
        }
        self.maybe_done(j);
    }

    fn stable_idem(&self, j: usize) -> String {
        let digest = Sha256::digest(self.op_name(j, 0).as_bytes());
        digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }

    pub fn job_next(&mut self, j: usize) {
        self.jobs[j].outstanding -= 1;
        let spec = self.jobs[j].spec.clone();
        let Some(&key) = self.jobs[j].keys.last() else { return };
        match spec.kind {
            JobKind::Rerun { .. } => {
                self.note(vec![format!("j{}", spec.id)], format!("j{} is re-run from its first line", spec.id));
                let idem = self.fresh_idem(j);
                self.charge(j, key, 0, spec.amount, idem);
            }
            JobKind::Stable { .. } => {
                let idem = self.stable_idem(j);
                self.charge(j, key, 0, spec.amount, idem);
            }
            JobKind::Serve { .. } => {
                self.note(vec![format!("j{}", spec.id)], format!("j{}'s request is delivered again", spec.id));
                let key = self.issue_key(j, "content");
                let idem = self.fresh_idem(j);
                self.charge(j, key, 0, spec.amount, idem);
            }
            JobKind::Reader { .. } => {
                let charge = format!("ch_of_j{}", spec.id);
                self.read(j, key, &charge);
            }
            JobKind::Actor { .. } | JobKind::Cents => {}
        }
        self.maybe_done(j);
    }

    fn maybe_done(&mut self, j: usize) {
        if self.jobs[j].outstanding == 0 && !self.jobs[j].done {
            self.jobs[j].done = true;
            let id = self.jobs[j].spec.id;
            self.note(vec![format!("j{id}")], format!("j{id} is done"));
        }
    }

    fn next_step(&mut self, j: usize, lo_ms: i64, hi_ms: i64) {
        self.jobs[j].left -= 1;
        self.jobs[j].outstanding += 1;
        let d = self.jobs[j].rng.range(lo_ms, hi_ms) * 1000;
        self.after(d, Ev::JobNext(j));
    }

    /// An SDK call is over: the job decides what to do next.
    fn sdk_done(&mut self, c: usize, success: bool, charge: Option<String>) {
        let j = self.sdk[c].job;
        self.jobs[j].outstanding -= 1;
        let is_read = self.sdk[c].method == "GET";
        let key = self.sdk[c].key;
        let left = self.jobs[j].left;
        let kind = self.jobs[j].spec.kind;
        match kind {
            JobKind::Rerun { .. } if !is_read => {
                let again = !success || self.jobs[j].rng.chance(0.3);
                if again && left > 0 {
                    self.next_step(j, 100, 1_500);
                } else if let (true, Some(ch)) = (success && self.jobs[j].rng.chance(0.5), charge) {
                    self.read(j, key, &ch);
                }
            }
            JobKind::Stable { .. } if !success && left > 0 => self.next_step(j, 100, 2_000),
            JobKind::Serve { .. } if left > 0 && (!success || self.jobs[j].rng.chance(0.3)) => {
                self.next_step(j, 50, 1_000)
            }
            JobKind::Reader { .. } if left > 0 => self.next_step(j, 50, 600),
            _ => {}
        }
        self.maybe_done(j);
    }

    pub fn attempt_send(&mut self, c: usize) {
        let j = self.sdk[c].job;
        let gateway = self.jobs[j].rng.index(self.plan.gateways);
        let workers: Vec<usize> =
            (0..self.workers.len()).filter(|i| self.workers[*i].gateway == gateway && self.workers[*i].up).collect();
        let a = self.attempts.len();
        self.attempts.push(Attempt { sdk: c, started: self.now, at: None, done: false });
        self.sdk[c].tries += 1;
        self.stats.attempts += 1;
        if workers.is_empty() {
            self.after(1_000, Ev::ClientGets { attempt: a, resp: None });
            return;
        }
        let w = workers[self.jobs[j].rng.index(workers.len())];
        let w = self.wref(w);
        let d = self.latency(Hop::Client, false).unwrap_or(1_000);
        self.after(d, Ev::AttemptArrive { attempt: a, w });
        let timeout = self.jobs[j].spec.timeout_ms * 1000;
        self.after(timeout, Ev::AttemptTimeout(a));
    }

    /// The request an attempt sends, as the SDK writes it.
    pub fn request_of(&self, attempt: usize) -> (Vec<(String, String)>, Vec<u8>) {
        let call = &self.sdk[self.attempts[attempt].sdk];
        let mut h: Vec<(String, String)> = vec![
            (":method".into(), call.method.into()),
            (":path".into(), call.path.clone()),
            (":authority".into(), "gateway:10000".into()),
            (":scheme".into(), "http".into()),
            ("authorization".into(), format!("Bearer {}", self.keys[call.key].secret)),
            ("user-agent".into(), "Stripe/v1 PythonBindings/12.0.0".into()),
            ("stripe-version".into(), "2025-03-31.basil".into()),
            ("x-forwarded-proto".into(), "http".into()),
        ];
        if call.method == "POST" {
            h.push(("content-type".into(), "application/x-www-form-urlencoded".into()));
            h.push(("content-length".into(), call.body.len().to_string()));
            if !call.idem.is_empty() {
                h.push(("idempotency-key".into(), call.idem.clone()));
            }
        }
        (h, call.body.clone().into_bytes())
    }

    pub fn attempt_timeout(&mut self, a: usize) {
        if self.attempts[a].done {
            return;
        }
        self.attempts[a].done = true;
        let c = self.attempts[a].sdk;
        let (key, op) = (self.sdk[c].key, self.sdk[c].op.clone());
        self.note(vec![format!("k{key}"), op.clone()], format!("a{a} ({op}): the client times out and hangs up"));
        if let Some((w, sid)) = self.attempts[a].at {
            let d = self.latency(Hop::Client, false).unwrap_or(1_000);
            self.after(d, Ev::ClientReset { w, sid });
        }
        self.record_saw(a, None);
        self.attempt_ended(c, None);
    }

    pub fn client_gets(&mut self, a: usize, resp: Resp) {
        if self.attempts[a].done {
            return;
        }
        self.attempts[a].done = true;
        let c = self.attempts[a].sdk;
        self.record_saw(a, resp.as_ref());
        self.attempt_ended(c, resp);
    }

    fn record_saw(&mut self, a: usize, resp: Option<&Http>) {
        let c = self.attempts[a].sdk;
        let call = &self.sdk[c];
        let (status, call_id, replayed, charge, code) = match resp {
            None => (0, String::new(), false, None, String::new()),
            Some((status, headers, body)) => {
                let h = |n: &str| keybrake_filter::host::header(headers, n).unwrap_or_default().to_owned();
                let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
                let charge = json.as_ref().and_then(|v| v.get("id")?.as_str().map(str::to_owned));
                let code = json
                    .as_ref()
                    .and_then(|v| v.get("error")?.get("code")?.as_str().map(str::to_owned))
                    .unwrap_or_default();
                (*status, h("keybrake-call-id"), h("idempotent-replayed") == "true", charge, code)
            }
        };
        let saw = Saw {
            t: self.now,
            sent: self.attempts[a].started,
            key: call.key,
            op: call.op.clone(),
            post: call.method == "POST",
            status,
            call_id: call_id.clone(),
            charge: charge.clone(),
            worker: self.attempts[a].at.map(|(w, _)| w.idx),
        };
        let what = match resp {
            None => "no answer".to_owned(),
            Some(_) => format!(
                "{status}{}{}{}",
                if code.is_empty() { String::new() } else { format!(" {code}") },
                if replayed { " (replayed)" } else { "" },
                charge.map(|c| format!(" {c}")).unwrap_or_default()
            ),
        };
        let mut tags = vec![format!("k{}", call.key), call.op.clone()];
        if !call_id.is_empty() {
            tags.push(call_id.clone());
        }
        self.note(tags, format!("a{a} ({} {}) gets {what} [{call_id}]", call.method, call.op));
        self.hist.saw.push(saw);
    }

    fn attempt_ended(&mut self, c: usize, resp: Resp) {
        let retry = match &resp {
            None => true,
            Some((status, headers, _)) if !(200..300).contains(status) => {
                match keybrake_filter::host::header(headers, "stripe-should-retry") {
                    Some("true") => true,
                    Some("false") => false,
                    _ => *status == 409 || *status >= 500,
                }
            }
            Some(_) => false,
        };
        if retry && self.sdk[c].retries_left > 0 {
            self.sdk[c].retries_left -= 1;
            let j = self.sdk[c].job;
            let base = (500_000i64 << self.sdk[c].tries.min(3)).min(2_000_000);
            let d = base / 2 + self.jobs[j].rng.range(0, base / 2);
            self.after(d, Ev::AttemptSend(c));
            return;
        }
        let success = matches!(&resp, Some((s, _, _)) if (200..300).contains(s));
        let charge = resp
            .as_ref()
            .and_then(|(_, _, b)| serde_json::from_slice::<serde_json::Value>(b).ok())
            .and_then(|v| v.get("id")?.as_str().map(str::to_owned));
        self.sdk_done(c, success, charge);
    }

    /// Records a request the gateway let go, with who decided it and when.
    pub fn record_forward(
        &mut self,
        w: usize,
        attempt: usize,
        call_id: String,
        decided: Option<(i64, String)>,
        headers: &[(String, String)],
        body: &[u8],
    ) -> usize {
        let c = self.attempts[attempt].sdk;
        let key = self.sdk[c].key;
        let h = |n: &str| keybrake_filter::host::header(headers, n).unwrap_or_default().to_owned();
        let body = String::from_utf8_lossy(body).into_owned();
        let f = Forward {
            t: self.now,
            key,
            op: self.sdk[c].op.clone(),
            call_id: call_id.clone(),
            decided: decided.clone(),
            method: h(":method"),
            path: h(":path"),
            idem: h("idempotency-key"),
            authorization: h("authorization"),
            amount: form_value(&body, "amount").and_then(|a| a.parse().ok()).unwrap_or(0),
            currency: form_value(&body, "currency").unwrap_or_default().to_owned(),
            body,
        };
        let fwd = self.hist.forwards.len();
        let by = decided.map(|(t, by)| format!("decided by {by} at {}", crate::check::time(t))).unwrap_or_default();
        self.call_key.insert(call_id.clone(), key);
        self.note(
            vec![format!("k{key}"), f.op.clone(), call_id.clone()],
            format!("w{w} forwards {call_id} as fwd{fwd}: {} {} upstream key {:?} ({by})", f.method, f.path, f.idem),
        );
        self.hist.forwards.push(f);
        fwd
    }

    /// A forwarded request reaches the upstream (unless the connection resets first).
    pub fn upstream_gets(&mut self, fwd: usize, w: NodeRef, sid: u64) {
        self.stats.upstream_requests += 1;
        let f = self.hist.forwards[fwd].clone();
        let tags = vec![format!("k{}", f.key), f.op.clone(), f.call_id.clone()];
        let mut answer = if self.net.chance(self.cond.reset_before) {
            self.note(tags.clone(), format!("fwd{fwd}: the connection resets before the upstream gets it"));
            envoy_reset("connection_termination")
        } else if f.authorization != format!("Bearer {REAL_KEY}") {
            self.hist.bad_auth.push(fwd);
            json_answer(401, serde_json::json!({"error": {"type": "invalid_request_error"}}), "req_x".into())
        } else if f.method == "GET" {
            let id = f.path.rsplit('/').next().unwrap_or_default().to_owned();
            json_answer(200, serde_json::json!({"id": id, "object": "charge"}), format!("req_r{fwd}"))
        } else {
            self.execute(fwd, &f, tags.clone())
        };
        if answer.details == "via_upstream" && self.net.chance(self.cond.lose_answer) {
            self.note(
                tags.clone(),
                format!("fwd{fwd}: the upstream's answer is lost (reset after it took the request)"),
            );
            answer = envoy_reset("connection_termination");
        }
        let mut d = self.latency(Hop::Upstream, false).unwrap_or(10_000);
        if self.net.chance(self.cond.up_slow) {
            d += self.net.range(0, self.cond.up_slow_max_ms * 1000);
        }
        self.after(d, Ev::UpstreamAnswer { w, sid, answer });
    }

    /// `POST /v1/charges` at the upstream: replayed under a known key (when it
    /// deduplicates), declined, or executed.
    fn execute(&mut self, fwd: usize, f: &Forward, tags: Vec<String>) -> Answer {
        let account = String::new();
        let record = format!("{account}\u{0}{}", f.idem);
        if self.up.dedup && !f.idem.is_empty() {
            if let Some((body, stored)) = self.up.stored.get(&record) {
                if *body != f.body {
                    return json_answer(
                        400,
                        serde_json::json!({"error": {"type": "idempotency_error"}}),
                        format!("req_{fwd}"),
                    );
                }
                let mut replay = stored.clone();
                replay.headers.push(("idempotent-replayed".into(), "true".into()));
                self.note(tags, format!("fwd{fwd}: the upstream replays its answer for key {:?}", f.idem));
                return replay;
            }
        }
        let decline = self.net.chance(self.cond.decline);
        let decline =
            if f.idem.is_empty() { decline } else { *self.up.declined.entry(f.idem.clone()).or_insert(decline) };
        let answer = if decline {
            self.note(tags, format!("fwd{fwd}: the upstream declines the card"));
            let error = serde_json::json!({"error": {"type": "card_error", "code": "card_declined"}});
            json_answer(402, error, format!("req_{fwd}"))
        } else {
            self.up.next_charge += 1;
            let id = format!("ch_{:04}", self.up.next_charge);
            let key = self.keys.get(f.key).map(|k| k.id.clone()).unwrap_or_default();
            self.note(tags, format!("fwd{fwd}: the upstream charges {} {} as {id} ({key})", f.amount, f.currency));
            self.hist.execs.push(Exec {
                t: self.now,
                fwd,
                op: f.op.clone(),
                idem: f.idem.clone(),
                amount: f.amount,
                currency: f.currency.clone(),
                key: f.key,
                charge: id.clone(),
            });
            let charge = serde_json::json!({
                "id": id, "object": "charge", "amount": f.amount, "currency": f.currency,
                "description": f.op, "status": "succeeded",
            });
            json_answer(200, charge, format!("req_{fwd}"))
        };
        if self.up.dedup && !f.idem.is_empty() {
            self.up.stored.insert(record, (f.body.clone(), answer.clone()));
        }
        answer
    }
}
