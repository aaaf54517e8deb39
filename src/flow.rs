//! One request's life in the filter, as a state machine over plain data.
//!
//! ```text
//! headers ──► (body, held) ──► Authorize ──┬─► deny / replay: local reply
//!                                          └─► allow: rewrite, forward
//! response headers ──► (body, held) ──► Settle ──► response released
//! ```
//!
//! Nothing is forwarded before the control service said "allow", and for calls
//! with durable state (reservation, idempotency record) the response is held
//! until the outcome is settled, so a retry right after it sees a completed
//! record. Every host interaction goes through [`Host`].

use std::cell::RefCell;
use std::rc::Rc;

use keybrake_core::pricing::{self, Price};
use keybrake_core::scope::Method;
use keybrake_core::stripe_error::StripeError;
use keybrake_core::vault_key::KeyHash;
use prost::Message;

use crate::config::FilterConfig;
use crate::credentials;
use crate::host::{header, Counter, Host, Rpc, Step};
use crate::key_cache::KeyCache;
use crate::outbox::Outbox;
use crate::refusal::Refusal;
use crate::request::{is_vendor_route, Incoming, Priced, FORM_CONTENT_TYPE};
use crate::wire::{self, authorize_response::Verdict, Outcome};

/// Response headers worth keeping for an idempotent replay.
const REPLAYED_HEADERS: &[&str] =
    &["content-type", "request-id", "stripe-version", "original-request", "stripe-account"];

/// The only request headers forwarded to the vendor (besides pseudo-headers):
/// the ones Stripe reads, with the values the filter checked or set. Anything
/// else a lenient server might honour (`X-Original-URL`, `X-HTTP-Method`,
/// `Content-Encoding`, forwarding headers) never leaves the gateway.
const FORWARDED_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "content-length",
    "idempotency-key",
    "stripe-account",
    "stripe-context",
    "stripe-version",
    "user-agent",
    "x-stripe-client-user-agent",
    "accept",
    "accept-language",
    // Set by Envoy itself (`use_remote_address`); its router needs it to match the route.
    "x-forwarded-proto",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Not a vendor route, or nothing left to do on the request path.
    Idle,
    ReadingBody,
    Authorizing(u32),
    Forwarded,
    ReadingResponse,
    Settling(u32),
    /// A local reply was sent (refusal, denial or replay), or the outcome is settled.
    Finished,
}

#[derive(Debug, Clone, Default)]
struct Call {
    call_id: String,
    key_id: String,
    settle: bool,
    settled: bool,
}

#[derive(Debug, Clone, Default)]
/// What the upstream answered, as far as the response headers tell.
struct Answered {
    status: u32,
    request_id: String,
    detail: String,
    at_us: i64,
}

pub struct Flow {
    config: Rc<FilterConfig>,
    outbox: Rc<RefCell<Outbox>>,
    cache: Rc<RefCell<KeyCache>>,
    stage: Stage,
    started_us: i64,
    incoming: Option<Incoming>,
    priced: Option<Priced>,
    body_size: usize,
    call: Option<Call>,
    refused: Option<Refusal>,
    /// The well-formed vault key of a request refused before it was read in full.
    refused_key: Option<KeyHash>,
    /// Denied or replayed by the control service, which recorded the call itself.
    decided_remotely: bool,
    /// The call id sent with Authorize: if its answer is lost, the control service
    /// may still hold a reservation for it, which a NOT_SENT settlement releases.
    asked: Option<String>,
    /// Items put in the outbox and not yet counted in the metrics.
    queued: u32,
    response: Option<Answered>,
    /// The settlement sent with Settle, kept until acknowledged: when Settle
    /// fails or the stream ends first, the outbox delivers this one, with the
    /// answer's body and headers (the record replays them).
    unacknowledged: Option<wire::SettleRequest>,
}

impl Flow {
    pub fn new(config: Rc<FilterConfig>, outbox: Rc<RefCell<Outbox>>, cache: Rc<RefCell<KeyCache>>) -> Flow {
        Flow {
            config,
            outbox,
            cache,
            stage: Stage::Idle,
            started_us: 0,
            incoming: None,
            priced: None,
            body_size: 0,
            call: None,
            refused: None,
            refused_key: None,
            decided_remotely: false,
            asked: None,
            queued: 0,
            response: None,
            unacknowledged: None,
        }
    }

    pub fn on_request_headers(&mut self, host: &mut impl Host, end_of_stream: bool) -> Step {
        let headers = host.request_headers();
        if !is_vendor_route(&self.config, &headers) {
            return Step::Continue;
        }
        self.started_us = host.now_micros();
        match Incoming::from_headers(&self.config, &headers) {
            Err(refusal) => {
                // The audit record names the key even when the rest of the request was refused.
                self.refused_key = credentials::vault_key(&headers).ok().map(|k| k.hash());
                self.refuse(host, refusal)
            }
            Ok(incoming) => {
                self.incoming = Some(incoming);
                if end_of_stream {
                    self.authorize(host, &[])
                } else {
                    self.stage = Stage::ReadingBody;
                    Step::Pause
                }
            }
        }
    }

    pub fn on_request_body(&mut self, host: &mut impl Host, body_size: usize, end_of_stream: bool) -> Step {
        match self.stage {
            Stage::ReadingBody => {
                self.body_size = body_size;
                if body_size > self.config.max_request_body_bytes {
                    return self.refuse(host, Refusal::BodyTooLarge(self.config.max_request_body_bytes));
                }
                if !end_of_stream {
                    return Step::Pause;
                }
                let body = host.request_body(body_size).unwrap_or_default();
                self.authorize(host, &body)
            }
            // Any Continue before the decision would send the original headers upstream.
            Stage::Authorizing(_) | Stage::Finished => Step::Pause,
            _ => Step::Continue,
        }
    }

    /// Trailers end the request body when present (HTTP/2 clients may send them).
    pub fn on_request_trailers(&mut self, host: &mut impl Host) -> Step {
        match self.stage {
            Stage::ReadingBody => {
                let body = host.request_body(self.body_size).unwrap_or_default();
                self.authorize(host, &body)
            }
            Stage::Authorizing(_) | Stage::Finished => Step::Pause,
            _ => Step::Continue,
        }
    }

    fn authorize(&mut self, host: &mut impl Host, body: &[u8]) -> Step {
        let Some(incoming) = &self.incoming else {
            return self.refuse(host, Refusal::ControlUnavailable);
        };
        let priced = match incoming.price_body(body) {
            Ok(p) => p,
            Err(refusal) => return self.refuse(host, refusal),
        };
        // From here on the upstream can only ever receive what was priced.
        if !replace_body(host, incoming.method, self.body_size, &priced.body) {
            host.log_warn("keybrake: the request body could not be replaced; refusing the call");
            return self.refuse(host, Refusal::BodyNotReplaced);
        }
        let Some(call_id) = host.new_call_id() else {
            // Never an id another call may hold: that call's settlement would settle this one.
            host.log_warn("keybrake: no call id could be made; refusing the call");
            return self.refuse(host, Refusal::NoCallId);
        };
        // Reads with a key this worker knows are decided here, without a round trip.
        let stateless = !pricing::holds_state(
            incoming.method,
            &incoming.target.path,
            priced.price == Price::Free,
            !incoming.idempotency_key.is_empty(),
        );
        let cached = if stateless {
            let now_ms = u64::try_from(host.now_micros() / 1000).unwrap_or(0);
            self.cache.try_borrow().ok().and_then(|c| c.get(&incoming.key_hash, now_ms).cloned())
        } else {
            None
        };
        if let Some(key) = cached.filter(|k| k.allows(incoming, host.now_micros() / 1_000_000)) {
            let allow = wire::Allow {
                upstream_authorization: key.upstream_authorization().to_owned(),
                forwarded_idempotency_key: String::new(),
                call_id,
                settle: false,
            };
            self.priced = Some(priced);
            host.count(Counter::DecidedLocally, None);
            self.forward(host, allow, Some(key.metadata), false);
            return Step::Continue;
        }
        let request = wire::AuthorizeRequest {
            call_id: call_id.clone(),
            vault_key_hash: incoming.key_hash.to_vec(),
            vendor: incoming.vendor.clone(),
            method: incoming.method.as_str().to_owned(),
            path: incoming.target.path.clone(),
            stripe_account: incoming.stripe_account.clone(),
            stripe_context: incoming.stripe_context.clone(),
            mcp_tool: incoming.mcp_tool.clone(),
            idempotency_key: incoming.idempotency_key.clone(),
            price: Some(wire::Price::from(&priced.price)),
            fingerprint: priced.fingerprint.clone(),
        };
        self.priced = Some(priced);
        match host.dispatch(Rpc::Authorize, &request.encode_to_vec(), self.config.authorize_timeout_ms) {
            Some(token) => {
                self.asked = Some(call_id);
                self.stage = Stage::Authorizing(token);
                Step::Pause
            }
            None => {
                host.count(Counter::CalloutFailed, Some("authorize"));
                self.refuse(host, Refusal::ControlUnavailable)
            }
        }
    }

    /// A reply to one of this request's calls. `status` is the gRPC status (0 = OK).
    pub fn on_grpc_response(&mut self, host: &mut impl Host, token: u32, status: u32, size: usize) {
        match self.stage {
            Stage::Authorizing(t) if t == token => {
                let reply = (status == 0)
                    .then(|| host.grpc_response_body(size).unwrap_or_default())
                    .and_then(|b| wire::AuthorizeResponse::decode(b.as_slice()).ok());
                match reply.and_then(|r| r.verdict.map(|v| (v, r.key))) {
                    Some((Verdict::Allow(allow), key)) => {
                        if let (Some(k), Some(incoming), false) = (&key, &self.incoming, allow.settle) {
                            if let Ok(mut cache) = self.cache.try_borrow_mut() {
                                cache.remember(incoming.key_hash, k.clone(), &allow.upstream_authorization);
                            }
                        }
                        self.forward(host, allow, key, true)
                    }
                    Some((Verdict::Deny(deny), _)) => {
                        self.asked = None;
                        let code = deny.denial_code().map_or("keybrake_refused", |c| c.as_str());
                        host.count(Counter::Denied, Some(code));
                        self.decided_remotely = true;
                        self.reply_error(host, &deny.to_stripe_error());
                    }
                    Some((Verdict::Replay(replay), _)) => {
                        self.asked = None;
                        host.count(Counter::Replayed, None);
                        let mut headers: Vec<(&str, &str)> =
                            replay.headers.iter().map(|h| (h.name.as_str(), h.value.as_str())).collect();
                        headers.push(("idempotent-replayed", "true"));
                        host.send_local_reply(replay.http_status, &headers, &replay.body);
                        self.decided_remotely = true;
                        self.stage = Stage::Finished;
                    }
                    None => {
                        host.count(Counter::CalloutFailed, Some("authorize"));
                        host.log_warn(&format!("keybrake: Authorize failed (gRPC status {status}); refusing the call"));
                        self.release_unanswered();
                        self.refuse(host, Refusal::ControlUnavailable);
                    }
                }
            }
            Stage::Settling(t) if t == token => {
                if status == 0 {
                    if let Some(call) = &mut self.call {
                        call.settled = true;
                    }
                } else {
                    host.count(Counter::CalloutFailed, Some("settle"));
                    host.log_warn("keybrake: settle failed; queued for the root context");
                }
                self.stage = Stage::Finished;
                host.resume_response();
            }
            _ => {}
        }
    }

    /// Rewrites the request for the upstream. `resume` when the request was
    /// held for the control service's answer (a local decision never held it).
    fn forward(&mut self, host: &mut impl Host, allow: wire::Allow, key: Option<wire::KeyMetadata>, resume: bool) {
        self.asked = None;
        let Some(incoming) = &self.incoming else {
            return;
        };
        for (name, _) in host.request_headers() {
            let forwarded = name.starts_with(':') || FORWARDED_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h));
            if !forwarded {
                host.set_request_header(&name, None);
            }
        }
        host.set_request_header("authorization", Some(&allow.upstream_authorization));
        let path = incoming.forwarded_path();
        if incoming.raw_path != path {
            host.set_request_header(":path", Some(&path));
        }
        if incoming.method_rewritten {
            host.set_request_header(":method", Some(incoming.method.as_str()));
        }
        if !allow.forwarded_idempotency_key.is_empty() {
            host.set_request_header("idempotency-key", Some(&allow.forwarded_idempotency_key));
        }
        host.count(Counter::Allowed, None);
        self.call = Some(Call {
            call_id: allow.call_id,
            key_id: key.map(|k| k.key_id).unwrap_or_default(),
            settle: allow.settle,
            settled: false,
        });
        self.stage = Stage::Forwarded;
        if resume {
            host.resume_request();
        }
    }

    pub fn on_response_headers(&mut self, host: &mut impl Host, end_of_stream: bool) -> Step {
        if self.stage != Stage::Forwarded {
            return Step::Continue;
        }
        let headers = host.response_headers();
        self.response = Some(Answered {
            status: header(&headers, ":status").and_then(|s| s.parse().ok()).unwrap_or(0),
            request_id: header(&headers, "request-id").unwrap_or_default().to_owned(),
            detail: host.response_code_details().unwrap_or_default(),
            at_us: host.now_micros(),
        });
        let Some(call) = &self.call else {
            return Step::Continue;
        };
        if !call.call_id.is_empty() {
            host.set_response_header("keybrake-call-id", Some(&call.call_id));
        }
        if !call.settle {
            self.stage = Stage::Finished;
            return Step::Continue;
        }
        if end_of_stream {
            self.settle(host, Vec::new(), false)
        } else {
            self.stage = Stage::ReadingResponse;
            Step::Pause
        }
    }

    pub fn on_response_body(&mut self, host: &mut impl Host, body_size: usize, end_of_stream: bool) -> Step {
        match self.stage {
            Stage::ReadingResponse if end_of_stream => {
                let keep = body_size.min(self.config.max_response_body_bytes);
                let body = host.response_body(keep).unwrap_or_default();
                self.settle(host, body, body_size > keep)
            }
            Stage::ReadingResponse | Stage::Settling(_) => Step::Pause,
            _ => Step::Continue,
        }
    }

    fn settle(&mut self, host: &mut impl Host, body: Vec<u8>, truncated: bool) -> Step {
        let headers = host.response_headers();
        let mut request = self.settlement(Some(&headers));
        request.body = body;
        request.body_truncated = truncated;
        let bytes = request.encode_to_vec();
        self.unacknowledged = Some(request);
        match host.dispatch(Rpc::Settle, &bytes, self.config.settle_timeout_ms) {
            Some(token) => {
                self.stage = Stage::Settling(token);
                Step::Pause
            }
            None => {
                // The money already moved (or not): the caller gets the answer either way,
                // and the root context delivers the settlement.
                host.count(Counter::CalloutFailed, Some("settle"));
                self.stage = Stage::Finished;
                Step::Continue
            }
        }
    }

    /// The settlement of this call as known now.
    fn settlement(&self, headers: Option<&[(String, String)]>) -> wire::SettleRequest {
        let (outcome, status, request_id, detail, at_us) = match &self.response {
            Some(seen) => (
                classify(&seen.detail, seen.status),
                seen.status,
                seen.request_id.clone(),
                seen.detail.clone(),
                seen.at_us,
            ),
            // Forwarded, and the stream ended before any answer came back.
            None => (Outcome::Uncertain, 0, String::new(), "no_response".to_owned(), self.started_us),
        };
        let kept = headers
            .unwrap_or_default()
            .iter()
            .filter(|(k, _)| REPLAYED_HEADERS.iter().any(|h| k.eq_ignore_ascii_case(h)))
            .map(|(k, v)| wire::Header { name: k.to_ascii_lowercase(), value: v.clone() })
            .collect();
        wire::SettleRequest {
            call_id: self.call.as_ref().map(|c| c.call_id.clone()).unwrap_or_default(),
            outcome: outcome as i32,
            http_status: status,
            request_id,
            headers: kept,
            body: Vec::new(),
            body_truncated: false,
            latency_us: u64::try_from(at_us - self.started_us).unwrap_or(0),
            detail,
        }
    }

    /// Authorize's answer never arrived, so nothing was forwarded; whatever the
    /// control service reserved for the call is released by a NOT_SENT settlement.
    fn release_unanswered(&mut self) {
        if let Some(call_id) = self.asked.take() {
            let settlement = wire::SettleRequest {
                call_id,
                outcome: Outcome::NotSent as i32,
                detail: "authorize_unanswered".to_owned(),
                ..Default::default()
            };
            self.queue(None, Some(settlement));
        }
    }

    /// Hands a record or settlement to the worker's outbox.
    fn queue(&mut self, record: Option<wire::CallRecord>, settlement: Option<wire::SettleRequest>) {
        if let Ok(mut outbox) = self.outbox.try_borrow_mut() {
            if let Some(r) = record {
                outbox.push_record(r);
                self.queued += 1;
            }
            if let Some(s) = settlement {
                outbox.push_settlement(s);
                self.queued += 1;
            }
        }
    }

    /// The stream is over: hand what is still owed to the root context.
    pub fn on_log(&mut self, host: &mut impl Host) {
        if matches!(self.stage, Stage::Authorizing(_)) {
            self.release_unanswered();
        }
        self.report_queued(host);
        if (self.incoming.is_none() && self.refused.is_none()) || self.decided_remotely {
            return;
        }
        if let Some(call) = &self.call {
            if call.settle {
                if !call.settled {
                    let settlement = match self.unacknowledged.take() {
                        Some(sent) => sent,
                        None => {
                            // The stream ended before the answer was read: what it
                            // said is not known in full, so it is not kept for replay.
                            let mut s = self.settlement(None);
                            s.body_truncated = self.response.is_some();
                            s
                        }
                    };
                    self.queue(None, Some(settlement));
                }
                self.report_queued(host);
                return;
            }
        }
        let record = self.record(host);
        self.queue(Some(record), None);
        self.report_queued(host);
    }

    fn report_queued(&mut self, host: &mut impl Host) {
        for _ in 0..self.queued {
            host.count(Counter::OutboxQueued, None);
        }
        self.queued = 0;
    }

    /// The audit record of a call that holds no durable state in the control service.
    fn record(&self, host: &impl Host) -> wire::CallRecord {
        let incoming = self.incoming.as_ref();
        let (decision, reason) = match (&self.refused, &self.call) {
            (Some(r), _) => ("denied", r.code().to_owned()),
            (None, Some(_)) => ("allowed", String::new()),
            // The request ended before the decision came back.
            (None, None) => ("abandoned", "stream_ended_before_decision".to_owned()),
        };
        let seen = self.response.clone().unwrap_or_default();
        let outcome = match (&self.call, &self.response) {
            (Some(_), Some(s)) => classify(&s.detail, s.status),
            (Some(_), None) => Outcome::Uncertain,
            (None, _) => Outcome::NotSent,
        };
        wire::CallRecord {
            call_id: self.call.as_ref().map(|c| c.call_id.clone()).unwrap_or_default(),
            key_id: self.call.as_ref().map(|c| c.key_id.clone()).unwrap_or_default(),
            vendor: incoming.map(|i| i.vendor.clone()).unwrap_or_default(),
            method: incoming.map(|i| i.method.as_str().to_owned()).unwrap_or_default(),
            path: incoming.map(|i| i.target.path.clone()).unwrap_or_default(),
            decision: decision.to_owned(),
            reason,
            http_status: seen.status,
            outcome: outcome as i32,
            request_id: seen.request_id,
            latency_us: u64::try_from(host.now_micros() - self.started_us).unwrap_or(0),
            idempotency_key: incoming.map(|i| i.idempotency_key.clone()).unwrap_or_default(),
            fingerprint: self.priced.as_ref().map(|p| p.fingerprint.clone()).unwrap_or_default(),
            stripe_account: incoming.map(|i| i.stripe_account.clone()).unwrap_or_default(),
            stripe_context: incoming.map(|i| i.stripe_context.clone()).unwrap_or_default(),
            vault_key_hash: incoming.map(|i| i.key_hash).or(self.refused_key).map(|h| h.to_vec()).unwrap_or_default(),
            mcp_tool: incoming.map(|i| i.mcp_tool.clone()).unwrap_or_default(),
            at_us: self.started_us,
            price: self.priced.as_ref().map(|p| wire::Price::from(&p.price)),
            detail: seen.detail,
        }
    }

    fn refuse(&mut self, host: &mut impl Host, refusal: Refusal) -> Step {
        host.count(Counter::Denied, Some(refusal.code()));
        self.reply_error(host, &refusal.to_stripe_error());
        self.refused = Some(refusal);
        Step::Pause
    }

    fn reply_error(&mut self, host: &mut impl Host, error: &StripeError) {
        let headers = error.headers();
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        host.send_local_reply(u32::from(error.status), &pairs, error.body().as_bytes());
        self.stage = Stage::Finished;
    }
}

/// Makes the request's body the priced parameters, re-encoded, with headers
/// that say so. `received` is the size of the body as it came (0 if none).
fn replace_body(host: &mut impl Host, method: Method, received: usize, body: &str) -> bool {
    host.set_request_header("content-encoding", None);
    host.set_request_header("transfer-encoding", None);
    if method != Method::Post {
        // Priced with no body: none is sent.
        host.set_request_header("content-type", None);
        return true;
    }
    if (received > 0 || !body.is_empty()) && !host.set_request_body(received, body.as_bytes()) {
        return false;
    }
    host.set_request_header("content-type", Some(FORM_CONTENT_TYPE));
    host.set_request_header("content-length", Some(&body.len().to_string()));
    true
}

/// What Envoy's response code details say about whether the request reached the upstream.
pub fn classify(detail: &str, status: u32) -> Outcome {
    const NOT_SENT: &[&str] =
        &["connection_failure", "no_healthy_upstream", "overflow", "cluster_not_found", "route_not_found", "no_route"];
    if detail == "via_upstream" {
        Outcome::Responded
    } else if NOT_SENT.iter().any(|d| detail.contains(d)) {
        Outcome::NotSent
    } else if detail.is_empty() && status != 0 && status < 500 {
        Outcome::Responded
    } else {
        Outcome::Uncertain
    }
}
