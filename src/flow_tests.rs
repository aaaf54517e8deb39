//! The request flow, driven natively through [`MockHost`].

use std::cell::RefCell;
use std::rc::Rc;

use keybrake_core::vault_key::VaultKey;
use prost::Message;

use crate::config::FilterConfig;
use crate::flow::{classify, Flow};
use crate::host::{Counter, Rpc, Step};
use crate::key_cache::KeyCache;
use crate::mock::MockHost;
use crate::outbox::Outbox;
use crate::wire::{self, authorize_response::Verdict, price::Kind, Outcome};

fn key() -> VaultKey {
    VaultKey::from_entropy([42; 32])
}

fn setup(method: &str, path: &str, extra: &[(&str, &str)]) -> (Flow, MockHost, Rc<RefCell<Outbox>>) {
    let outbox = Rc::new(RefCell::new(Outbox::new(100)));
    let flow = Flow::new(Rc::new(FilterConfig::default()), outbox.clone(), Rc::new(RefCell::new(KeyCache::default())));
    let mut host = MockHost { now: 1_000, ..Default::default() };
    host.request_headers = vec![
        (":method".into(), method.into()),
        (":path".into(), path.into()),
        ("authorization".into(), format!("Bearer {}", key().expose())),
    ];
    host.request_headers.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    (flow, host, outbox)
}

fn authorize_request(host: &MockHost) -> wire::AuthorizeRequest {
    let (rpc, bytes) = host.dispatched.last().expect("a dispatched call");
    assert_eq!(*rpc, Rpc::Authorize);
    wire::AuthorizeRequest::decode(bytes.as_slice()).unwrap()
}

fn reply(host: &mut MockHost, verdict: Verdict) {
    let key = wire::KeyMetadata { key_id: "key_1".into(), ..Default::default() };
    host.grpc_body = wire::AuthorizeResponse { verdict: Some(verdict), key: Some(key) }.encode_to_vec();
}

fn allow(settle: bool, forwarded: &str) -> Verdict {
    Verdict::Allow(wire::Allow {
        upstream_authorization: "Bearer sk_test_real".into(),
        forwarded_idempotency_key: forwarded.into(),
        call_id: "call_1".into(),
        settle,
    })
}

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

/// A `POST /v1/charges` with `body`, read and sent to Authorize (token 1).
fn asked_charge(body: &[u8]) -> (Flow, MockHost, Rc<RefCell<Outbox>>) {
    let (mut flow, mut host, outbox) = setup("POST", "/stripe/v1/charges", &[FORM]);
    host.request_body = body.to_vec();
    flow.on_request_headers(&mut host, false);
    let n = host.request_body.len();
    flow.on_request_body(&mut host, n, true);
    (flow, host, outbox)
}

/// ... and allowed with a settlement owed (call id `call_1`), so it is forwarded.
fn forwarded_charge() -> (Flow, MockHost, Rc<RefCell<Outbox>>) {
    let (mut flow, mut host, outbox) = asked_charge(b"amount=1&currency=usd");
    reply(&mut host, allow(true, ""));
    flow.on_grpc_response(&mut host, 1, 0, 0);
    (flow, host, outbox)
}

#[test]
fn other_routes_pass_untouched() {
    let (mut flow, mut host, outbox) = setup("GET", "/admin/vault_keys", &[]);
    assert_eq!(flow.on_request_headers(&mut host, true), Step::Continue);
    assert!(host.dispatched.is_empty());
    flow.on_log(&mut host);
    assert!(outbox.borrow().is_empty());
}

#[test]
fn a_read_is_authorized_forwarded_and_recorded_in_the_outbox() {
    let (mut flow, mut host, outbox) = setup("GET", "/stripe/v1/charges/ch_1?expand[]=customer", &[]);
    assert_eq!(flow.on_request_headers(&mut host, true), Step::Pause);
    let req = authorize_request(&host);
    assert_eq!(req.vault_key_hash, key().hash().to_vec());
    assert_eq!((req.method.as_str(), req.path.as_str()), ("GET", "/v1/charges/ch_1"));
    assert_eq!(req.price.unwrap().kind, Kind::Free as i32);
    reply(&mut host, allow(false, ""));
    flow.on_grpc_response(&mut host, 1, 0, 0);
    assert_eq!(host.request_header("authorization"), Some("Bearer sk_test_real"));
    assert_eq!(host.resumed_request, 1);
    host.response_headers = vec![(":status".into(), "200".into()), ("request-id".into(), "req_1".into())];
    host.code_details = Some("via_upstream".into());
    assert_eq!(flow.on_response_headers(&mut host, false), Step::Continue);
    assert_eq!(crate::host::header(&host.response_headers, "keybrake-call-id"), Some("call_1"));
    assert_eq!(flow.on_response_body(&mut host, 10, true), Step::Continue);
    flow.on_log(&mut host);
    let batch = outbox.borrow_mut().take_batch(10).unwrap();
    let rec = &batch.records[0];
    assert_eq!((rec.decision.as_str(), rec.http_status, rec.request_id.as_str()), ("allowed", 200, "req_1"));
    assert_eq!(rec.key_id, "key_1");
    assert_eq!(rec.outcome, Outcome::Responded as i32);
}

#[test]
fn a_charge_is_priced_held_and_settled_before_the_response_goes_back() {
    let (mut flow, mut host, outbox) = setup("post", "/stripe/v1//charges", &[FORM, ("idempotency-key", "caller-key")]);
    host.request_body = b"amount=2999&currency=usd&customer=cus_1".to_vec();
    assert_eq!(flow.on_request_headers(&mut host, false), Step::Pause);
    assert_eq!(flow.on_request_body(&mut host, 10, false), Step::Pause);
    assert!(host.dispatched.is_empty(), "nothing is asked before the body is complete");
    assert_eq!(
        {
            let n = host.request_body.len();
            flow.on_request_body(&mut host, n, true)
        },
        Step::Pause
    );
    let req = authorize_request(&host);
    let price = req.price.unwrap();
    assert_eq!((price.kind, price.amount_minor, price.currency.as_str()), (Kind::Amount as i32, 2999, "usd"));
    assert_eq!(req.idempotency_key, "caller-key");
    assert_eq!(req.fingerprint.len(), 64);
    // Further body callbacks before the decision must not let the headers go.
    assert_eq!(flow.on_request_body(&mut host, 0, true), Step::Pause);

    reply(&mut host, allow(true, "kb_derived"));
    flow.on_grpc_response(&mut host, 1, 0, 0);
    assert_eq!(host.request_header(":path"), Some("/stripe/v1/charges"));
    assert_eq!(host.request_header(":method"), Some("POST"));
    assert_eq!(host.request_header("idempotency-key"), Some("kb_derived"));

    host.response_headers = vec![
        (":status".into(), "200".into()),
        ("request-id".into(), "req_9".into()),
        ("content-type".into(), "application/json".into()),
        ("set-cookie".into(), "x".into()),
    ];
    host.code_details = Some("via_upstream".into());
    host.response_body = br#"{"id":"ch_1"}"#.to_vec();
    assert_eq!(flow.on_response_headers(&mut host, false), Step::Pause);
    assert_eq!(flow.on_response_body(&mut host, 5, false), Step::Pause);
    assert_eq!(
        {
            let n = host.response_body.len();
            flow.on_response_body(&mut host, n, true)
        },
        Step::Pause
    );
    let (rpc, bytes) = host.dispatched.last().unwrap();
    assert_eq!(*rpc, Rpc::Settle);
    let settle = wire::SettleRequest::decode(bytes.as_slice()).unwrap();
    assert_eq!(
        (settle.call_id.as_str(), settle.http_status, settle.outcome),
        ("call_1", 200, Outcome::Responded as i32)
    );
    assert_eq!(settle.body, br#"{"id":"ch_1"}"#);
    assert!(settle.headers.iter().any(|h| h.name == "request-id"));
    assert!(!settle.headers.iter().any(|h| h.name == "set-cookie"));
    assert_eq!(host.resumed_response, 0);
    flow.on_grpc_response(&mut host, 2, 0, 0);
    assert_eq!(host.resumed_response, 1);
    flow.on_log(&mut host);
    assert!(outbox.borrow().is_empty(), "a settled call owes nothing");
}

#[test]
fn a_denial_is_a_stripe_error_and_nothing_is_forwarded() {
    let (mut flow, mut host, outbox) = asked_charge(b"amount=299900&currency=usd");
    reply(
        &mut host,
        Verdict::Deny(wire::Deny {
            code: wire::DenialCode::SpendCapExceeded as i32,
            message: "Spend cap exceeded".into(),
            param: String::new(),
        }),
    );
    flow.on_grpc_response(&mut host, 1, 0, 0);
    let (status, headers, _) = host.local_reply.clone().unwrap();
    assert_eq!(status, 429);
    assert!(headers.contains(&("stripe-should-retry".into(), "false".into())));
    assert_eq!(host.reply_json()["error"]["code"], "spend_cap_exceeded");
    assert_eq!(host.resumed_request, 0);
    assert!(host.request_header("authorization").unwrap().contains("vk_"), "the real key was never set");
    flow.on_log(&mut host);
    assert!(outbox.borrow().is_empty(), "the control service recorded its own denial");
}

#[test]
fn a_replay_is_answered_locally() {
    let (mut flow, mut host, _) = asked_charge(b"amount=1&currency=usd");
    reply(
        &mut host,
        Verdict::Replay(wire::Replay {
            http_status: 200,
            headers: vec![wire::Header { name: "content-type".into(), value: "application/json".into() }],
            body: br#"{"id":"ch_1"}"#.to_vec(),
        }),
    );
    flow.on_grpc_response(&mut host, 1, 0, 0);
    let (status, headers, body) = host.local_reply.clone().unwrap();
    assert_eq!(status, 200);
    assert!(headers.contains(&("idempotent-replayed".into(), "true".into())));
    assert_eq!(body, br#"{"id":"ch_1"}"#);
    assert_eq!(host.resumed_request, 0);
    assert!(host.counters.contains(&(Counter::Replayed, None)), "{:?}", host.counters);
    assert!(!host.counters.iter().any(|(c, _)| *c == Counter::Allowed), "a replay is not an allowed call");
}

#[test]
fn fails_closed_when_the_control_service_does_not_answer() {
    for grpc_status in [14u32, 4] {
        let (mut flow, mut host, outbox) = asked_charge(b"amount=1&currency=usd");
        flow.on_grpc_response(&mut host, 1, grpc_status, 0);
        assert_eq!(host.local_reply.as_ref().unwrap().0, 503);
        assert_eq!(host.reply_json()["error"]["type"], "api_error");
        assert_eq!(host.resumed_request, 0);
        assert!(host.counters.contains(&(Counter::CalloutFailed, Some("authorize".into()))), "{:?}", host.counters);
        flow.on_log(&mut host);
        let batch = outbox.borrow_mut().take_batch(10).unwrap();
        assert_eq!(batch.records[0].reason, "keybrake_unavailable");
        // The control service may have reserved before its answer was lost: release it.
        let sent = authorize_request(&host);
        let release = &batch.orphaned_settlements[0];
        assert_eq!((release.call_id.as_str(), release.outcome), (sent.call_id.as_str(), Outcome::NotSent as i32));
    }
    let (mut flow, mut host, _) = setup("GET", "/stripe/v1/charges", &[]);
    host.fail_dispatch = true;
    flow.on_request_headers(&mut host, true);
    assert_eq!(host.local_reply.as_ref().unwrap().0, 503);
    // A garbage answer is no answer.
    let (mut flow, mut host, _) = setup("GET", "/stripe/v1/charges", &[]);
    flow.on_request_headers(&mut host, true);
    host.grpc_body = vec![0xff, 0xff, 0xff];
    flow.on_grpc_response(&mut host, 1, 0, 3);
    assert_eq!(host.local_reply.as_ref().unwrap().0, 503);
}

#[test]
fn refusals_happen_before_any_callout() {
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, &'a [u8], u32, &'a str);
    let cases: Vec<Case> = vec![
        ("GET", "/stripe/v1/charges", vec![("authorization", "Bearer sk_live_abc")], b"", 401, "vault_key_malformed"),
        ("POST", "/stripe/v1/charges", vec![FORM], b"amount=12.5&currency=usd", 400, "amount_invalid"),
        ("POST", "/stripe/v1/charges", vec![FORM], b"amount=-1&currency=usd", 400, "amount_invalid"),
        ("POST", "/stripe/v1/charges", vec![FORM], b"amount=%zz", 400, "body_malformed"),
        ("POST", "/stripe/v1/charges", vec![FORM], b"amount=1&amount=2&currency=usd", 400, "parameter_duplicated"),
        (
            "POST",
            "/stripe/v1/charges",
            vec![("content-type", "application/json")],
            b"{\"amount\":1}",
            400,
            "content_type_unsupported",
        ),
        ("OPTIONS", "/stripe/v1/charges", vec![], b"", 403, "method_not_allowed"),
        ("GET", "/stripe/v1/charges%2f..%2frefunds", vec![], b"", 400, "path_invalid"),
    ];
    for (method, path, extra, body, status, code) in cases {
        let (mut flow, mut host, outbox) = setup(method, path, &[]);
        for (k, v) in extra {
            crate::host::Host::set_request_header(&mut host, k, Some(v));
        }
        host.request_body = body.to_vec();
        if flow.on_request_headers(&mut host, body.is_empty()) == Step::Pause && host.local_reply.is_none() {
            flow.on_request_body(&mut host, body.len(), true);
        }
        assert!(host.dispatched.is_empty(), "{path} {body:?}: no callout");
        assert_eq!(host.local_reply.as_ref().map(|r| r.0), Some(status), "{method} {path} {body:?}");
        assert_eq!(host.reply_json()["error"]["code"], code);
        flow.on_log(&mut host);
        assert_eq!(outbox.borrow_mut().take_batch(10).unwrap().records[0].decision, "denied");
    }
}

#[test]
fn a_body_over_the_limit_is_refused_while_streaming() {
    let (mut flow, mut host, _) = setup("POST", "/stripe/v1/charges", &[FORM]);
    flow.on_request_headers(&mut host, false);
    let limit = FilterConfig::default().max_request_body_bytes;
    assert_eq!(flow.on_request_body(&mut host, limit + 1, false), Step::Pause);
    assert_eq!(host.local_reply.as_ref().unwrap().0, 400);
    assert_eq!(host.reply_json()["error"]["code"], "body_too_large");
    assert!(host.dispatched.is_empty());
}

#[test]
fn an_upstream_timeout_is_settled_as_uncertain() {
    let (mut flow, mut host, _) = forwarded_charge();
    host.response_headers = vec![(":status".into(), "504".into())];
    host.code_details = Some("upstream_response_timeout".into());
    assert_eq!(flow.on_response_headers(&mut host, true), Step::Pause);
    let settle = wire::SettleRequest::decode(host.dispatched.last().unwrap().1.as_slice()).unwrap();
    assert_eq!(settle.outcome, Outcome::Uncertain as i32);
}

#[test]
fn a_stream_that_dies_after_forwarding_leaves_an_uncertain_settlement_in_the_outbox() {
    let (mut flow, mut host, outbox) = forwarded_charge();
    flow.on_log(&mut host);
    let batch = outbox.borrow_mut().take_batch(10).unwrap();
    assert_eq!(batch.orphaned_settlements[0].outcome, Outcome::Uncertain as i32);
    assert_eq!(batch.orphaned_settlements[0].call_id, "call_1");
}

#[test]
fn a_failed_settle_releases_the_response_and_queues_the_settlement() {
    let (mut flow, mut host, outbox) = forwarded_charge();
    host.response_headers = vec![(":status".into(), "402".into())];
    host.code_details = Some("via_upstream".into());
    flow.on_response_headers(&mut host, true);
    flow.on_grpc_response(&mut host, 2, 14, 0);
    assert_eq!(host.resumed_response, 1);
    flow.on_log(&mut host);
    let batch = outbox.borrow_mut().take_batch(10).unwrap();
    let s = &batch.orphaned_settlements[0];
    assert_eq!((s.outcome, s.http_status), (Outcome::Responded as i32, 402));
}

/// Found by the deterministic simulator (`sim --seed 50`, before the fix): a
/// settlement queued after Settle failed, or after the client left while it
/// was in flight, carried the status without the answer, and its record then
/// replayed an empty 200 to the next retry.
#[test]
fn a_settlement_queued_after_settle_failed_carries_the_answer() {
    for ended in ["settle failed", "client left"] {
        let (mut flow, mut host, outbox) = forwarded_charge();
        host.response_headers = vec![(":status".into(), "200".into()), ("request-id".into(), "req_7".into())];
        host.code_details = Some("via_upstream".into());
        host.response_body = br#"{"id":"ch_7","amount":1,"currency":"usd"}"#.to_vec();
        assert_eq!(flow.on_response_headers(&mut host, false), Step::Pause);
        let n = host.response_body.len();
        assert_eq!(flow.on_response_body(&mut host, n, true), Step::Pause);
        if ended == "settle failed" {
            flow.on_grpc_response(&mut host, 2, 4, 0);
            assert_eq!(host.resumed_response, 1);
        }
        flow.on_log(&mut host);
        let batch = outbox.borrow_mut().take_batch(10).unwrap();
        let s = &batch.orphaned_settlements[0];
        assert_eq!((s.outcome, s.http_status), (Outcome::Responded as i32, 200), "{ended}");
        assert_eq!(s.body, host.response_body, "{ended}");
        assert!(s.headers.iter().any(|h| h.name == "request-id" && h.value == "req_7"), "{ended}");
        assert!(!s.body_truncated, "{ended}");
    }
}

/// The client left after the answer's headers and before its body: the
/// answer is not known in full, so the record keeps no answer to replay.
#[test]
fn a_settlement_of_an_answer_not_read_in_full_keeps_no_replay() {
    let (mut flow, mut host, outbox) = forwarded_charge();
    host.response_headers = vec![(":status".into(), "200".into())];
    host.code_details = Some("via_upstream".into());
    assert_eq!(flow.on_response_headers(&mut host, false), Step::Pause);
    flow.on_log(&mut host);
    let batch = outbox.borrow_mut().take_batch(10).unwrap();
    let s = &batch.orphaned_settlements[0];
    assert_eq!((s.outcome, s.http_status), (Outcome::Responded as i32, 200));
    assert!(s.body_truncated);
}

#[test]
fn classifies_envoy_details() {
    assert_eq!(classify("via_upstream", 502), Outcome::Responded);
    assert_eq!(classify("upstream_reset_before_response_started{connection_failure}", 503), Outcome::NotSent);
    assert_eq!(classify("upstream_reset_before_response_started{remote_reset}", 503), Outcome::Uncertain);
    assert_eq!(classify("upstream_response_timeout", 504), Outcome::Uncertain);
    assert_eq!(classify("", 0), Outcome::Uncertain);
}

/// The flows' clock (microseconds), and the worker's time its replica last echoed (milliseconds).
const NOW_US: i64 = 1_795_690_000_000_000;
const HEARD_MS: u64 = (NOW_US / 1000) as u64;

fn setup_with_cache(method: &str, path: &str, cache: &Rc<RefCell<KeyCache>>) -> (Flow, MockHost) {
    let (_, mut host, outbox) = setup(method, path, &[]);
    host.now = NOW_US;
    (Flow::new(Rc::new(FilterConfig::default()), outbox, cache.clone()), host)
}

fn allowed_read_metadata(generation: u64) -> wire::KeyMetadata {
    wire::KeyMetadata {
        key_id: "key_1".into(),
        vendor: "stripe".into(),
        allowed_endpoints: vec!["GET /v1/charges/*".into()],
        expires_at: 1_795_700_000,
        generation,
        ..Default::default()
    }
}

#[test]
fn reads_of_a_cached_key_are_decided_without_a_round_trip() {
    let cache = Rc::new(RefCell::new(KeyCache::default()));
    cache.borrow_mut().apply(&wire::Revocation { generation: 7, echo_ms: HEARD_MS, ..Default::default() }, HEARD_MS);
    // First read: asked, and the answer is cached.
    let (mut flow, mut host) = setup_with_cache("GET", "/stripe/v1/charges/ch_1", &cache);
    assert_eq!(flow.on_request_headers(&mut host, true), Step::Pause);
    host.grpc_body = wire::AuthorizeResponse { verdict: Some(allow(false, "")), key: Some(allowed_read_metadata(7)) }
        .encode_to_vec();
    flow.on_grpc_response(&mut host, 1, 0, 0);
    assert_eq!(cache.borrow().len(), 1);
    // Second read: decided here.
    let (mut flow, mut host) = setup_with_cache("GET", "/stripe/v1/charges/ch_2", &cache);
    assert_eq!(flow.on_request_headers(&mut host, true), Step::Continue);
    assert!(host.dispatched.is_empty());
    assert_eq!(host.resumed_request, 0, "never held, so never resumed");
    assert_eq!(host.request_header("authorization"), Some("Bearer sk_test_real"));
    // Out of the key's scope, or a write: the control service decides (and records a refusal).
    for (method, path) in [("GET", "/stripe/v1/refunds/re_1"), ("DELETE", "/stripe/v1/charges/ch_1")] {
        let (mut flow, mut host) = setup_with_cache(method, path, &cache);
        assert_eq!(flow.on_request_headers(&mut host, true), Step::Pause);
        assert_eq!(host.dispatched.len(), 1);
    }
    // A revocation pushed on the stream evicts the key at once.
    cache.borrow_mut().apply(
        &wire::Revocation { generation: 8, key_hashes: vec![key().hash().to_vec()], ..Default::default() },
        HEARD_MS,
    );
    let (mut flow, mut host) = setup_with_cache("GET", "/stripe/v1/charges/ch_3", &cache);
    assert_eq!(flow.on_request_headers(&mut host, true), Step::Pause);
    assert_eq!(host.dispatched.len(), 1);
}

#[test]
fn an_expired_cached_key_goes_back_to_the_control_service() {
    let cache = Rc::new(RefCell::new(KeyCache::default()));
    cache.borrow_mut().apply(&wire::Revocation { generation: 1, echo_ms: HEARD_MS, ..Default::default() }, HEARD_MS);
    let mut expired = allowed_read_metadata(1);
    expired.expires_at = 1_795_689_999;
    cache.borrow_mut().remember(key().hash(), expired, "Bearer sk_test_real");
    let (mut flow, mut host) = setup_with_cache("GET", "/stripe/v1/charges/ch_1", &cache);
    assert_eq!(flow.on_request_headers(&mut host, true), Step::Pause);
    assert_eq!(host.dispatched.len(), 1);
}

#[test]
fn the_upstream_gets_the_priced_parameters_re_encoded_and_only_the_headers_stripe_reads() {
    let (mut flow, mut host, _) = setup(
        "POST",
        "/stripe/v1/charges",
        &[
            ("content-type", "application/x-www-form-urlencoded; charset=UTF-8"),
            ("content-length", "60"),
            ("x-original-url", "/v1/payouts"),
            ("x-forwarded-for", "10.0.0.1"),
            ("stripe-version", "2026-11-01"),
            ("stripe-account", "acct_1A"),
        ],
    );
    host.request_body = b"currency=usd&amount=100&description=a+b%26amount%3D9&expand[]=x".to_vec();
    flow.on_request_headers(&mut host, false);
    let n = host.request_body.len();
    assert_eq!(flow.on_request_body(&mut host, n, true), Step::Pause);
    let forwarded = "currency=usd&amount=100&description=a%20b%26amount%3D9&expand[]=x";
    assert_eq!(host.request_body, forwarded.as_bytes(), "same pairs, same order, values re-encoded");
    assert_eq!(host.request_header("content-length"), Some(forwarded.len().to_string().as_str()));
    assert_eq!(host.request_header("content-type"), Some("application/x-www-form-urlencoded"));
    reply(&mut host, allow(true, ""));
    flow.on_grpc_response(&mut host, 1, 0, 0);
    assert_eq!(host.request_header("x-original-url"), None);
    assert_eq!(host.request_header("x-forwarded-for"), None);
    assert_eq!(host.request_header("stripe-version"), Some("2026-11-01"));
    assert_eq!(host.request_header("stripe-account"), Some("acct_1A"));
    assert_eq!(host.request_header("authorization"), Some("Bearer sk_test_real"));
}

#[test]
fn bodies_with_more_than_one_reading_are_refused_before_anything_is_asked() {
    for (headers, body, code) in [
        (vec![FORM, ("content-encoding", "gzip")], &b"amount=1&currency=usd"[..], "content_encoding_unsupported"),
        (
            vec![("content-type", "application/x-www-form-urlencoded; charset=utf-16")],
            b"amount=1",
            "content_type_unsupported",
        ),
        (vec![("content-type", "application/json")], b"{\"amount\":1}", "content_type_unsupported"),
        (vec![FORM], b"amount=1&amount[]=100000&currency=usd", "body_malformed"),
        (vec![FORM], b"amount=1&amount=100000&currency=usd", "parameter_duplicated"),
        (vec![FORM], b"amount=0100&currency=usd", "amount_invalid"),
        (vec![FORM, ("stripe-account", "acct_1,acct_2")], b"amount=1&currency=usd", "account_header_invalid"),
    ] {
        let (mut flow, mut host, outbox) = setup("POST", "/stripe/v1/charges", &headers);
        host.request_body = body.to_vec();
        let step = match flow.on_request_headers(&mut host, false) {
            Step::Pause if host.local_reply.is_none() => flow.on_request_body(&mut host, body.len(), true),
            step => step,
        };
        assert_eq!(step, Step::Pause);
        assert!(host.dispatched.is_empty(), "{code}: nothing asked, nothing forwarded");
        let (status, _, _) = host.local_reply.clone().expect("a local reply");
        assert_eq!((status, host.reply_json()["error"]["code"].as_str()), (400, Some(code)));
        flow.on_log(&mut host);
        let batch = outbox.borrow_mut().take_batch(10).expect("the refusal is audited");
        assert_eq!((batch.records[0].decision.as_str(), batch.records[0].reason.as_str()), ("denied", code));
        assert_eq!(batch.records[0].vault_key_hash, key().hash().to_vec(), "{code}: the record names the key");
    }
}

#[test]
fn a_body_the_host_will_not_replace_is_not_forwarded() {
    let (mut flow, mut host, _) = setup("POST", "/stripe/v1/charges", &[FORM]);
    host.fail_set_body = true;
    host.request_body = b"amount=1&currency=usd".to_vec();
    flow.on_request_headers(&mut host, false);
    flow.on_request_body(&mut host, 21, true);
    assert!(host.dispatched.is_empty());
    assert_eq!(host.local_reply.as_ref().map(|r| r.0), Some(500));
}

#[test]
fn a_call_without_an_id_of_its_own_is_refused_with_503() {
    let (mut flow, mut host, outbox) = setup("POST", "/stripe/v1/charges", &[FORM]);
    host.no_call_ids = true;
    host.request_body = b"amount=1&currency=usd".to_vec();
    assert_eq!(flow.on_request_headers(&mut host, false), Step::Pause);
    assert_eq!(flow.on_request_body(&mut host, 21, true), Step::Pause);
    assert!(host.dispatched.is_empty(), "nothing asked, nothing forwarded");
    assert_eq!(host.resumed_request, 0);
    let (status, headers, _) = host.local_reply.clone().unwrap();
    assert_eq!(status, 503);
    assert!(headers.contains(&("stripe-should-retry".into(), "true".into())));
    assert_eq!(host.reply_json()["error"]["type"], "api_error");
    assert_eq!(host.reply_json()["error"]["code"], "keybrake_unavailable");
    assert_eq!(host.warnings.borrow().len(), 1);
    flow.on_log(&mut host);
    let batch = outbox.borrow_mut().take_batch(10).unwrap();
    assert_eq!((batch.records[0].decision.as_str(), batch.records[0].call_id.as_str()), ("denied", ""));
    assert!(batch.orphaned_settlements.is_empty(), "nothing was reserved");
}

#[test]
fn a_denial_the_filter_does_not_know_is_still_a_refusal() {
    let (mut flow, mut host, _) = asked_charge(b"amount=1&currency=usd");
    reply(&mut host, Verdict::Deny(wire::Deny { code: 999, message: "newer".into(), param: String::new() }));
    flow.on_grpc_response(&mut host, 1, 0, 0);
    assert_eq!(host.local_reply.as_ref().map(|r| r.0), Some(403));
    assert_eq!(host.reply_json()["error"]["code"], "keybrake_refused");
    assert_eq!(host.resumed_request, 0, "nothing forwarded");
}

#[test]
fn the_real_key_never_shows_in_debug_output() {
    let allow = wire::Allow { upstream_authorization: "Bearer sk_test_real".into(), ..Default::default() };
    let response = wire::AuthorizeResponse { verdict: Some(Verdict::Allow(allow)), key: None };
    assert!(!format!("{response:?}").contains("sk_test_real"));
    let cache = Rc::new(RefCell::new(KeyCache::default()));
    cache.borrow_mut().apply(&wire::Revocation { generation: 1, ..Default::default() }, HEARD_MS);
    cache.borrow_mut().remember(key().hash(), allowed_read_metadata(1), "Bearer sk_test_real");
    assert_eq!(cache.borrow().len(), 1);
    assert!(!format!("{:?}", cache.borrow()).contains("sk_test_real"));
}
