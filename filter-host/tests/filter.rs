//! The filter as built for Envoy (`target/wasm/keybrake_filter.wasm`), loaded
//! into the in-process proxy-wasm host and driven through real scenarios: what
//! it forwards, what it refuses, what it asks the control service, and what
//! its root context does on its tick. The Envoy end-to-end tests
//! (`tests/e2e`) cover the same paths against a real Envoy; these run in
//! seconds, check exact bytes, and need no network.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keybrake_core::vault_key::VaultKey;
use keybrake_filter::wire::{self, authorize_response::Verdict, price::Kind, Outcome};
use keybrake_filter_host::{Action, Filter, GrpcCall, HostError, HostState};
use prost::Message;

const CONFIG: &str = r#"{"control_cluster":"keybrake_control","audit_flush_interval_ms":100}"#;
/// 2026-11-26, in nanoseconds.
const NOW_NS: u64 = 1_795_690_000_000_000_000;
const NOW_S: i64 = 1_795_690_000;
const SERVICE: &str = "keybrake.v1.Gateway";
const WARN: u32 = 3;
const CRITICAL: u32 = 5;

fn key() -> VaultKey {
    VaultKey::from_entropy([42; 32])
}

fn bearer() -> String {
    format!("Bearer {}", key().expose())
}

/// The built filter with a configured root context; the test fails (never
/// skips) when it was not built.
fn filter_with(state: HostState) -> Filter {
    let mut filter = Filter::load_built(state).unwrap_or_else(|e| panic!("{e}"));
    assert!(filter.configure(CONFIG).unwrap(), "the configuration is accepted");
    filter
}

fn filter() -> Filter {
    filter_with(HostState::new(NOW_NS, Some(42)))
}

/// No panic reached the host (proxy-wasm logs one at critical level before trapping).
fn no_panic(filter: &Filter) {
    assert!(filter.host().logged(CRITICAL).is_empty(), "{:?}", filter.host().logged(CRITICAL));
}

fn last_call(filter: &Filter, method: &str) -> GrpcCall {
    let calls = filter.host().calls_to(method);
    (*calls.last().unwrap_or_else(|| panic!("no {method} call"))).clone()
}

fn authorize_request(call: &GrpcCall) -> wire::AuthorizeRequest {
    assert_eq!(
        (call.cluster.as_str(), call.service.as_str(), call.method.as_str()),
        ("keybrake_control", SERVICE, "Authorize")
    );
    wire::AuthorizeRequest::decode(call.message.as_slice()).unwrap()
}

fn allow(call_id: &str, settle: bool, forwarded_key: &str, key: Option<wire::KeyMetadata>) -> Vec<u8> {
    let allow = wire::Allow {
        upstream_authorization: "Bearer sk_test_real".into(),
        forwarded_idempotency_key: forwarded_key.into(),
        call_id: call_id.into(),
        settle,
    };
    let key = key.or_else(|| Some(wire::KeyMetadata { key_id: "key_1".into(), ..Default::default() }));
    wire::AuthorizeResponse { verdict: Some(Verdict::Allow(allow)), key }.encode_to_vec()
}

/// What the root context sent in its `RecordCalls` call.
fn batch(call: &GrpcCall) -> wire::CallRecordBatch {
    assert_eq!((call.cluster.as_str(), call.method.as_str()), ("keybrake_control", "RecordCalls"));
    wire::CallRecordBatch::decode(call.message.as_slice()).unwrap()
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}

fn headers_of(filter: &Filter, context: u32) -> Vec<String> {
    let mut names: Vec<String> =
        filter.host().stream(context).unwrap().request_headers.iter().map(|(k, _)| k.clone()).collect();
    names.sort();
    names
}

#[test]
fn a_missing_build_is_an_error_that_says_how_to_make_one() {
    let err = Filter::load(std::path::Path::new("/nonexistent/keybrake_filter.wasm"), HostState::default())
        .err()
        .expect("no module, no filter");
    assert!(matches!(err, HostError::Missing(_)));
    assert!(err.to_string().contains("scripts/build-filter.sh"), "{err}");
}

#[test]
fn the_root_context_asks_for_its_tick_and_refuses_a_bad_configuration() {
    let filter = filter();
    assert_eq!(filter.host().tick_period_ms, Some(100));
    let mut bad = Filter::load_built(HostState::default()).unwrap();
    assert!(!bad.configure(r#"{"audit_batch_size":0}"#).unwrap());
    let errors = bad.host().logged(4);
    assert_eq!(errors.len(), 1, "{:?}", bad.host().logs);
    assert!(errors[0].starts_with("keybrake: plugin configuration is invalid: audit_batch_size"), "{}", errors[0]);
    no_panic(&bad);
}

#[test]
fn a_read_is_allowed_by_authorize_and_forwarded_with_the_real_key_and_the_canonical_path() {
    let mut f = filter();
    let s = f.new_stream().unwrap();
    let auth = bearer();
    let headers = [
        (":method", "GET"),
        (":path", "/stripe/v1//charges/ch_1?expand[]=customer"),
        (":authority", "gateway"),
        ("authorization", auth.as_str()),
        ("x-forwarded-for", "10.0.0.1"),
    ];
    assert_eq!(f.request_headers(s, &headers, true).unwrap(), Action::Pause);
    let call = last_call(&f, "Authorize");
    assert_eq!((call.context, call.timeout_ms), (s, 10_000));
    let req = authorize_request(&call);
    assert_eq!(req.vault_key_hash, key().hash().to_vec());
    assert_eq!((req.method.as_str(), req.path.as_str()), ("GET", "/v1/charges/ch_1"));
    assert_eq!(req.price.as_ref().map(|p| p.kind), Some(Kind::Free as i32));
    assert!(req.call_id.starts_with("call_") && req.call_id.len() == 33, "{}", req.call_id);
    assert_eq!(f.host().stream(s).unwrap().request_resumed, 0, "held until the answer");

    f.grpc_receive(call.token, &allow(&req.call_id, false, "", None)).unwrap();
    let stream = f.host().stream(s).unwrap();
    assert_eq!(stream.request_resumed, 1);
    assert!(stream.local_reply.is_none());
    assert_eq!(stream.request_header("authorization"), Some("Bearer sk_test_real"));
    assert_eq!(stream.request_header(":path"), Some("/stripe/v1/charges/ch_1?expand[]=customer"));
    assert_eq!(headers_of(&f, s), [":authority", ":method", ":path", "authorization"]);

    let response = [(":status", "200"), ("request-id", "req_1"), ("content-type", "application/json")];
    assert_eq!(f.response_headers(s, &response, "via_upstream", false).unwrap(), Action::Continue);
    assert_eq!(f.host().stream(s).unwrap().response_header("keybrake-call-id"), Some(req.call_id.as_str()));
    assert_eq!(f.response_body(s, b"{}", true).unwrap(), Action::Continue);
    f.end_stream(s).unwrap();
    assert_eq!(f.host().metric("keybrake.requests_allowed"), Some(1));
    assert_eq!(f.host().metric("keybrake.outbox_queued"), Some(1));

    // The read holds no state in the control service: its record goes by the root's tick.
    f.tick().unwrap();
    let sent = batch(&last_call(&f, "RecordCalls"));
    assert_eq!(sent.records.len(), 1);
    let r = &sent.records[0];
    assert_eq!(
        (r.call_id.as_str(), r.key_id.as_str(), r.decision.as_str(), r.http_status, r.request_id.as_str()),
        (req.call_id.as_str(), "key_1", "allowed", 200, "req_1")
    );
    assert_eq!(r.outcome, Outcome::Responded as i32);
    assert_eq!(r.at_us, (NOW_NS / 1_000) as i64);
    no_panic(&f);
}

#[test]
fn a_charge_is_forwarded_re_encoded_with_only_the_headers_stripe_reads_and_settled_before_the_answer() {
    let mut f = filter();
    let s = f.new_stream().unwrap();
    let auth = bearer();
    let headers = [
        (":method", "POST"),
        (":path", "/stripe/v1/charges"),
        (":authority", "gateway"),
        ("authorization", auth.as_str()),
        ("content-type", "application/x-www-form-urlencoded; charset=UTF-8"),
        ("content-length", "64"),
        ("idempotency-key", "order-1"),
        ("stripe-version", "2026-11-01"),
        ("x-original-url", "/v1/payouts"),
        ("x-forwarded-for", "10.0.0.1"),
        ("cookie", "a=b"),
    ];
    assert_eq!(f.request_headers(s, &headers, false).unwrap(), Action::Pause);
    assert_eq!(f.request_body(s, b"currency=usd&amount=2999&descrip", false).unwrap(), Action::Pause);
    assert!(f.host().grpc_calls.is_empty(), "nothing asked before the body is whole");
    assert_eq!(f.request_body(s, b"tion=a+b%26amount%3D1", true).unwrap(), Action::Pause);

    let forwarded = "currency=usd&amount=2999&description=a%20b%26amount%3D1";
    let stream = f.host().stream(s).unwrap();
    assert_eq!(String::from_utf8_lossy(&stream.request_body), forwarded, "the priced pairs, re-encoded");
    assert_eq!(stream.request_header("content-length"), Some(forwarded.len().to_string().as_str()));
    assert_eq!(stream.request_header("content-type"), Some("application/x-www-form-urlencoded"));

    let call = last_call(&f, "Authorize");
    let req = authorize_request(&call);
    let price = req.price.clone().unwrap();
    assert_eq!((price.kind, price.amount_minor, price.currency.as_str()), (Kind::Amount as i32, 2999, "usd"));
    assert_eq!(
        (req.method.as_str(), req.path.as_str(), req.idempotency_key.as_str()),
        ("POST", "/v1/charges", "order-1")
    );
    assert_eq!(req.fingerprint.len(), 64);

    f.grpc_receive(call.token, &allow(&req.call_id, true, "kb_derived", None)).unwrap();
    let stream = f.host().stream(s).unwrap();
    assert_eq!(stream.request_resumed, 1);
    assert_eq!(
        headers_of(&f, s),
        [
            ":authority",
            ":method",
            ":path",
            "authorization",
            "content-length",
            "content-type",
            "idempotency-key",
            "stripe-version"
        ]
    );
    assert_eq!(stream.request_header("authorization"), Some("Bearer sk_test_real"));
    assert_eq!(stream.request_header("idempotency-key"), Some("kb_derived"));
    assert_eq!(stream.request_header("stripe-version"), Some("2026-11-01"));

    // The answer is held until the outcome is settled.
    let response =
        [(":status", "200"), ("request-id", "req_9"), ("content-type", "application/json"), ("set-cookie", "x")];
    assert_eq!(f.response_headers(s, &response, "via_upstream", false).unwrap(), Action::Pause);
    assert_eq!(f.response_body(s, br#"{"id":"ch_1","#, false).unwrap(), Action::Pause);
    assert_eq!(f.response_body(s, br#""amount":2999}"#, true).unwrap(), Action::Pause);
    let settle_call = last_call(&f, "Settle");
    let settle = wire::SettleRequest::decode(settle_call.message.as_slice()).unwrap();
    assert_eq!((settle.call_id.as_str(), settle.http_status), (req.call_id.as_str(), 200));
    assert_eq!(settle.outcome, Outcome::Responded as i32);
    assert_eq!(settle.body, br#"{"id":"ch_1","amount":2999}"#);
    let kept: Vec<&str> = settle.headers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(kept, ["request-id", "content-type"]);
    assert_eq!(f.host().stream(s).unwrap().response_resumed, 0);
    f.grpc_receive(settle_call.token, &wire::SettleResponse {}.encode_to_vec()).unwrap();
    assert_eq!(f.host().stream(s).unwrap().response_resumed, 1);
    assert_eq!(f.host().stream(s).unwrap().response_header("keybrake-call-id"), Some(req.call_id.as_str()));

    // Settled: the stream owes the root context nothing.
    f.end_stream(s).unwrap();
    f.tick().unwrap();
    assert!(f.host().calls_to("RecordCalls").is_empty());
    no_panic(&f);
}

#[test]
fn a_refusal_is_a_stripe_error_and_nothing_is_forwarded() {
    let mut f = filter();
    // Refused by the filter itself: not a vault key.
    let s = f.new_stream().unwrap();
    let headers = [(":method", "GET"), (":path", "/stripe/v1/charges"), ("authorization", "Bearer sk_live_abc")];
    assert_eq!(f.request_headers(s, &headers, true).unwrap(), Action::Pause);
    assert!(f.host().grpc_calls.is_empty());
    let stream = f.host().stream(s).unwrap();
    let reply = stream.local_reply.clone().expect("a local reply");
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = json(&reply.body);
    assert_eq!(body["error"]["code"], "vault_key_malformed");
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!((stream.request_resumed, stream.request_header("authorization")), (0, Some("Bearer sk_live_abc")));

    // Refused by the control service: over the key's cap.
    let s = f.new_stream().unwrap();
    let auth = bearer();
    let headers = [
        (":method", "POST"),
        (":path", "/stripe/v1/charges"),
        ("authorization", auth.as_str()),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    f.request_headers(s, &headers, false).unwrap();
    f.request_body(s, b"amount=299900&currency=usd", true).unwrap();
    // A typed code: the filter renders status, type and Should-Retry from it.
    let deny = wire::Deny {
        code: wire::DenialCode::SpendCapExceeded as i32,
        message: "Spend cap exceeded".into(),
        param: String::new(),
    };
    let answer = wire::AuthorizeResponse { verdict: Some(Verdict::Deny(deny)), key: None }.encode_to_vec();
    f.grpc_receive(last_call(&f, "Authorize").token, &answer).unwrap();
    let stream = f.host().stream(s).unwrap();
    let reply = stream.local_reply.clone().expect("a local reply");
    assert_eq!((reply.status, reply.header("stripe-should-retry")), (429, Some("false")));
    assert_eq!(json(&reply.body)["error"]["message"], "Spend cap exceeded");
    assert_eq!(stream.request_resumed, 0);
    assert!(stream.request_header("authorization").is_some_and(|a| a.contains("vk_")), "the real key was never set");
    assert_eq!(f.host().metric("keybrake.requests_denied"), Some(2));
    assert_eq!(f.host().metric("keybrake.requests_denied.reason.spend_cap_exceeded"), Some(1));
    assert_eq!(f.host().metric("keybrake.requests_allowed"), None);
    no_panic(&f);
}

#[test]
fn a_lost_authorize_answer_fails_closed_with_503_and_releases_the_call() {
    let mut f = filter();
    let s = f.new_stream().unwrap();
    let auth = bearer();
    let headers = [
        (":method", "POST"),
        (":path", "/stripe/v1/charges"),
        ("authorization", auth.as_str()),
        ("content-type", "application/x-www-form-urlencoded"),
    ];
    f.request_headers(s, &headers, false).unwrap();
    f.request_body(s, b"amount=100&currency=usd", true).unwrap();
    let call = last_call(&f, "Authorize");
    let asked = authorize_request(&call).call_id;
    f.grpc_close(call.token, 14).unwrap();
    let stream = f.host().stream(s).unwrap();
    let reply = stream.local_reply.clone().expect("a local reply");
    assert_eq!((reply.status, reply.header("stripe-should-retry")), (503, Some("true")));
    let body = json(&reply.body);
    assert_eq!(
        (body["error"]["type"].as_str(), body["error"]["code"].as_str()),
        (Some("api_error"), Some("keybrake_unavailable"))
    );
    assert_eq!(stream.request_resumed, 0);
    assert_eq!(f.host().metric("keybrake.callout_failures.reason.authorize"), Some(1));
    assert!(
        f.host().logged(WARN).iter().any(|l| l.contains("Authorize failed (gRPC status 14)")),
        "{:?}",
        f.host().logs
    );

    // The control service may have reserved before the answer was lost: a NOT_SENT settlement releases it.
    f.end_stream(s).unwrap();
    f.tick().unwrap();
    let sent = batch(&last_call(&f, "RecordCalls"));
    assert_eq!(sent.orphaned_settlements.len(), 1);
    let release = &sent.orphaned_settlements[0];
    assert_eq!((release.call_id.as_str(), release.outcome), (asked.as_str(), Outcome::NotSent as i32));
    assert_eq!(
        (sent.records[0].decision.as_str(), sent.records[0].reason.as_str()),
        ("denied", "keybrake_unavailable")
    );
    no_panic(&f);
}

#[test]
fn the_tick_sends_the_outbox_as_record_calls_and_backs_off_after_a_failure() {
    let mut f = filter();
    for _ in 0..3 {
        let s = f.new_stream().unwrap();
        f.request_headers(s, &[(":method", "GET"), (":path", "/stripe/v1/charges")], true).unwrap();
        f.end_stream(s).unwrap();
    }
    assert!(f.host().grpc_calls.is_empty(), "refused without a key: nothing asked");
    f.tick().unwrap();
    let first = last_call(&f, "RecordCalls");
    assert_eq!((first.context, first.timeout_ms), (1, 5_000), "sent by the root context");
    let records = batch(&first).records;
    assert_eq!(records.len(), 3);
    assert!(records.iter().all(|r| r.decision == "denied" && r.reason == "vault_key_missing"), "{records:?}");

    // Not delivered: kept, and not sent again for 100 ms.
    f.grpc_close(first.token, 14).unwrap();
    assert_eq!(f.host().logged(WARN), ["keybrake: audit batch not delivered; retrying with backoff"]);
    f.host_mut().now_nanos += 99_000_000;
    f.tick().unwrap();
    assert_eq!(f.host().calls_to("RecordCalls").len(), 1);
    f.host_mut().now_nanos += 1_000_000;
    f.tick().unwrap();
    let again = last_call(&f, "RecordCalls");
    assert_ne!(again.token, first.token);
    assert_eq!(again.message, first.message, "the same batch, in the same order");
    f.grpc_receive(again.token, &wire::RecordCallsResponse {}.encode_to_vec()).unwrap();
    assert_eq!(f.host().metric("keybrake.outbox_delivered"), Some(3));
    assert_eq!(f.host().metric("keybrake.outbox_queued"), Some(3));
    f.tick().unwrap();
    assert_eq!(f.host().calls_to("RecordCalls").len(), 2, "nothing left");
    assert!(f.shut_down().unwrap());
    assert_eq!(f.host().logged(WARN).len(), 1, "nothing undelivered at shutdown");
    no_panic(&f);
}

/// A read of `charge`, answered by Authorize when the filter asks.
fn read(f: &mut Filter, charge: &str) -> (u32, Action) {
    let s = f.new_stream().unwrap();
    let auth = bearer();
    let path = format!("/stripe/v1/charges/{charge}");
    let action = f
        .request_headers(s, &[(":method", "GET"), (":path", path.as_str()), ("authorization", auth.as_str())], true)
        .unwrap();
    (s, action)
}

fn acked(message: &[u8]) -> u64 {
    wire::WatchRequest::decode(message).unwrap().acked_generation
}

#[test]
fn the_revocation_stream_lets_reads_be_decided_locally_until_the_key_is_revoked() {
    let mut f = filter();
    f.tick().unwrap();
    let watch = f.host().grpc_streams[0].clone();
    assert_eq!(
        (watch.cluster.as_str(), watch.service.as_str(), watch.method.as_str()),
        ("keybrake_control", SERVICE, "WatchRevocations")
    );
    assert_eq!(watch.sent.iter().map(|m| acked(m)).collect::<Vec<_>>(), [0]);
    // The replica echoes the worker's clock: the cache is trusted within a second of it.
    let echo_ms = wire::WatchRequest::decode(watch.sent[0].as_slice()).unwrap().sent_at_ms;
    assert!(echo_ms > 0);
    f.grpc_receive(watch.token, &wire::Revocation { generation: 5, echo_ms, ..Default::default() }.encode_to_vec())
        .unwrap();
    assert_eq!(acked(f.host().grpc_streams[0].sent.last().unwrap()), 5);

    // The first read asks, and the answer (generation 5) is cached.
    let (_, action) = read(&mut f, "ch_1");
    assert_eq!(action, Action::Pause);
    let call = last_call(&f, "Authorize");
    let metadata = wire::KeyMetadata {
        key_id: "key_1".into(),
        vendor: "stripe".into(),
        allowed_endpoints: vec!["GET /v1/charges/*".into()],
        expires_at: NOW_S + 3_600,
        generation: 5,
        ..Default::default()
    };
    let call_id = authorize_request(&call).call_id;
    f.grpc_receive(call.token, &allow(&call_id, false, "", Some(metadata))).unwrap();

    // The second is decided here: never held, no round trip.
    let (s, action) = read(&mut f, "ch_2");
    assert_eq!(action, Action::Continue);
    assert_eq!(f.host().calls_to("Authorize").len(), 1);
    let stream = f.host().stream(s).unwrap();
    assert_eq!((stream.request_resumed, stream.request_header("authorization")), (0, Some("Bearer sk_test_real")));
    assert_eq!(f.host().metric("keybrake.requests_decided_locally"), Some(1));

    // Revoked: evicted at once, and the next read asks again.
    let revocation = wire::Revocation { generation: 6, key_hashes: vec![key().hash().to_vec()], ..Default::default() };
    f.grpc_receive(watch.token, &revocation.encode_to_vec()).unwrap();
    assert_eq!(acked(f.host().grpc_streams[0].sent.last().unwrap()), 6);
    let (_, action) = read(&mut f, "ch_3");
    assert_eq!(action, Action::Pause);
    assert_eq!(f.host().calls_to("Authorize").len(), 2);

    // A message that cannot be read ends the stream; a new one is opened a second later.
    f.grpc_receive(watch.token, &[0xff, 0xff, 0xff]).unwrap();
    assert!(f.host().grpc_streams[0].cancelled);
    f.tick().unwrap();
    assert_eq!(f.host().grpc_streams.len(), 1);
    f.host_mut().now_nanos += 1_000_000_000;
    f.tick().unwrap();
    assert_eq!(f.host().grpc_streams.len(), 2);
    no_panic(&f);
}

#[test]
fn each_vm_seeds_its_call_ids_from_the_hosts_random_bytes() {
    let first_id = |seed: Option<u64>| {
        let mut f = filter_with(HostState::new(NOW_NS, seed));
        let (_, action) = read(&mut f, "ch_1");
        assert_eq!(action, Action::Pause);
        let id = authorize_request(&last_call(&f, "Authorize")).call_id;
        (id, f.host().logged(WARN).iter().map(|l| l.to_string()).collect::<Vec<_>>())
    };
    let (a, warnings) = first_id(Some(1));
    assert!(warnings.is_empty(), "{warnings:?}");
    let (b, _) = first_id(Some(2));
    assert_eq!(a, first_id(Some(1)).0, "the same bytes at the same instant: the same seed");
    assert_ne!(a[..21], b[..21], "other bytes, another seed");
    assert!(a.ends_with("000000000001") && b.ends_with("000000000001"));
    // A host without random_get: seeded from the time, and the filter says so.
    let (_, warnings) = first_id(None);
    assert_eq!(warnings, ["keybrake: the host gave no random bytes; call ids are seeded from the time"]);
}
