//! The root context driven natively through [`MockRootHost`]: configuration
//! and seeding, the outbox drain, and the revocation stream.

use prost::Message;

use super::{Root, PING_EVERY_MS, WATCH_RETRY_MS};
use crate::host::{Counter, Rpc};
use crate::mock::MockRootHost;
use crate::wire::{CallRecord, CallRecordBatch, KeyMetadata, Revocation, SettleRequest, WatchRequest};

const CONFIG: &[u8] = br#"{"control_cluster":"ctl","audit_batch_size":2,"audit_flush_interval_ms":250,
    "audit_queue_limit":3,"settle_timeout_ms":700}"#;

fn configured() -> (Root, MockRootHost) {
    let mut root = Root::default();
    let mut host = MockRootHost { now_ms: 1_000_000, random: Some([7; 16]), ..Default::default() };
    assert!(root.configure(&mut host, CONFIG));
    (root, host)
}

fn record(id: &str) -> CallRecord {
    CallRecord { call_id: id.into(), ..Default::default() }
}

fn queue(root: &Root, ids: &[&str]) {
    let mut outbox = root.outbox.borrow_mut();
    for id in ids {
        outbox.push_record(record(id));
    }
}

fn batch(call: &crate::mock::RootCall) -> CallRecordBatch {
    assert_eq!(call.rpc, Rpc::RecordCalls);
    CallRecordBatch::decode(call.message.as_slice()).unwrap()
}

fn record_ids(call: &crate::mock::RootCall) -> Vec<String> {
    batch(call).records.into_iter().map(|r| r.call_id).collect()
}

fn acked(message: &[u8]) -> u64 {
    WatchRequest::decode(message).unwrap().acked_generation
}

fn sent_at(message: &[u8]) -> u64 {
    WatchRequest::decode(message).unwrap().sent_at_ms
}

/// The answer to the `n`th call the root started, with gRPC `status`.
fn answer(root: &mut Root, host: &mut MockRootHost, n: usize, status: u32) {
    let token = host.calls[n].token;
    root.on_grpc_call_response(host, token, status);
}

/// A message arriving on stream `token`.
fn receive(root: &mut Root, host: &mut MockRootHost, token: u32, message: Vec<u8>) {
    host.received = message;
    let size = host.received.len();
    root.on_grpc_stream_message(host, token, size);
}

fn a_call_id(root: &Root) -> String {
    root.ids().borrow_mut().fresh().unwrap()
}

#[test]
fn configure_sets_the_tick_the_queue_limit_and_seeds_call_ids() {
    let (root, host) = configured();
    assert_eq!(host.tick_period_ms, Some(250));
    assert_eq!(root.config().control_cluster, "ctl");
    assert_eq!(root.outbox.borrow().len(), 0);
    queue(&root, &["a", "b", "c", "d"]);
    assert_eq!((root.outbox.borrow().len(), root.outbox.borrow().dropped), (3, 1), "limit 3");
    let id = a_call_id(&root);
    assert!(id.starts_with("call_") && id.len() == 33, "{id}");
    assert!(host.warnings.borrow().is_empty());

    // Another VM, other random bytes at the same instant: other ids.
    let mut other = Root::default();
    let mut other_host = MockRootHost { now_ms: 1_000_000, random: Some([8; 16]), ..Default::default() };
    assert!(other.configure(&mut other_host, CONFIG));
    assert_ne!(a_call_id(&other)[..21], id[..21]);
}

#[test]
fn without_random_bytes_ids_are_seeded_from_the_time_and_it_says_so() {
    let mut a = Root::default();
    let mut host = MockRootHost { now_ms: 5, random: None, ..Default::default() };
    assert!(a.configure(&mut host, CONFIG));
    assert_eq!(host.warnings.borrow().len(), 1);
    let mut b = Root::default();
    let mut later = MockRootHost { now_ms: 6, random: None, ..Default::default() };
    assert!(b.configure(&mut later, CONFIG));
    assert_ne!(a_call_id(&a)[..21], a_call_id(&b)[..21]);
}

#[test]
fn an_unconfigured_worker_makes_no_call_ids() {
    let root = Root::default();
    assert_eq!(root.ids().borrow_mut().fresh(), None);
}

#[test]
fn a_bad_configuration_is_refused_and_logged() {
    let mut root = Root::default();
    let mut host = MockRootHost::default();
    assert!(!root.configure(&mut host, br#"{"audit_batch_size":0}"#));
    assert!(!root.configure(&mut host, b"{"));
    assert_eq!(host.errors.borrow().len(), 2);
    assert!(host.errors.borrow()[0].contains("audit_batch_size"), "{:?}", host.errors.borrow());
    assert_eq!(host.tick_period_ms, None);
}

#[test]
fn batches_are_sent_one_at_a_time_and_the_next_goes_at_once_when_one_is_delivered() {
    let (mut root, mut host) = configured();
    queue(&root, &["a", "b", "c"]);
    root.outbox.borrow_mut().push_settlement(SettleRequest { call_id: "s".into(), ..Default::default() });
    root.on_tick(&mut host);
    assert_eq!(host.calls.len(), 1);
    let first = host.calls[0].clone();
    assert_eq!((first.cluster.as_str(), first.timeout_ms), ("ctl", 700));
    let sent = batch(&first);
    assert_eq!(sent.orphaned_settlements.len(), 1, "settlements first");
    assert_eq!(record_ids(&first), vec!["a"]);
    // In flight: later ticks send nothing more.
    host.now_ms += 1_000;
    root.on_tick(&mut host);
    assert_eq!(host.calls.len(), 1);
    // An answer to something else changes nothing.
    root.on_grpc_call_response(&mut host, 999, 0);
    assert_eq!(host.calls.len(), 1);
    assert_eq!(host.counted(Counter::OutboxDelivered), 0);
    root.on_grpc_call_response(&mut host, first.token, 0);
    assert_eq!(host.counted(Counter::OutboxDelivered), 2);
    assert_eq!(host.calls.len(), 2, "the next batch without waiting for a tick");
    assert_eq!(record_ids(&host.calls[1]), vec!["b", "c"]);
    answer(&mut root, &mut host, 1, 0);
    assert_eq!(host.counted(Counter::OutboxDelivered), 4);
    assert_eq!(host.calls.len(), 2, "nothing left to send");
    root.on_tick(&mut host);
    assert_eq!(host.calls.len(), 2);
}

#[test]
fn a_failed_batch_is_requeued_in_order_and_retried_with_backoff() {
    let (mut root, mut host) = configured();
    queue(&root, &["a", "b"]);
    root.on_tick(&mut host);
    queue(&root, &["c"]);
    answer(&mut root, &mut host, 0, 14);
    assert_eq!(host.counted(Counter::OutboxDelivered), 0);
    assert_eq!(host.warnings.borrow().len(), 1);
    assert_eq!(root.outbox.borrow().len(), 3);
    // 100 ms after the failure, not before.
    host.now_ms += 99;
    root.on_tick(&mut host);
    assert_eq!(host.calls.len(), 1);
    host.now_ms += 1;
    root.on_tick(&mut host);
    assert_eq!(host.calls.len(), 2);
    assert_eq!(record_ids(&host.calls[1]), vec!["a", "b"], "ahead of newer records");
    // A second failure in a row doubles the wait and logs nothing more.
    answer(&mut root, &mut host, 1, 4);
    assert_eq!(host.warnings.borrow().len(), 1);
    host.now_ms += 199;
    root.on_tick(&mut host);
    assert_eq!(host.calls.len(), 2);
    host.now_ms += 1;
    root.on_tick(&mut host);
    assert_eq!(host.calls.len(), 3);
    answer(&mut root, &mut host, 2, 0);
    assert_eq!(host.counted(Counter::OutboxDelivered), 2);
    assert_eq!(record_ids(&host.calls[3]), vec!["c"], "delivered: the rest goes at once");
}

#[test]
fn a_batch_that_cannot_be_dispatched_stays_queued() {
    let (mut root, mut host) = configured();
    queue(&root, &["a"]);
    host.fail_dispatch = true;
    root.on_tick(&mut host);
    assert!(host.calls.is_empty());
    assert_eq!(root.outbox.borrow().len(), 1);
    host.fail_dispatch = false;
    root.on_tick(&mut host);
    assert_eq!(record_ids(&host.calls[0]), vec!["a"]);
}

#[test]
fn dropped_records_are_counted_once() {
    let (mut root, mut host) = configured();
    host.fail_dispatch = true;
    queue(&root, &["a", "b", "c", "d", "e"]);
    root.on_tick(&mut host);
    root.on_tick(&mut host);
    assert_eq!(host.counted(Counter::AuditDropped), 2);
    queue(&root, &["f"]);
    root.on_tick(&mut host);
    assert_eq!(host.counted(Counter::AuditDropped), 3);
}

#[test]
fn the_revocation_stream_is_opened_at_most_once_a_second_and_acknowledged() {
    let (mut root, mut host) = configured();
    host.fail_open = true;
    root.on_tick(&mut host);
    assert_eq!(host.stream_attempts, 1);
    assert_eq!(host.warnings.borrow().len(), 1);
    host.fail_open = false;
    host.now_ms += WATCH_RETRY_MS - 1;
    root.on_tick(&mut host);
    assert_eq!(host.stream_attempts, 1, "not again within a second");
    host.now_ms += 1;
    root.on_tick(&mut host);
    assert_eq!(host.stream_attempts, 2);
    let (token, cluster) = host.streams[0].clone();
    assert_eq!(cluster, "ctl");
    assert_eq!(host.sent.len(), 1);
    assert_eq!((host.sent[0].0, acked(&host.sent[0].1)), (token, 0), "opened with generation 0");
    assert_eq!(sent_at(&host.sent[0].1), host.now_ms, "with the worker's clock");
    // Open: later ticks leave it be, and send the worker's clock every 250 ms.
    host.now_ms += PING_EVERY_MS - 1;
    root.on_tick(&mut host);
    assert_eq!(host.sent.len(), 1);
    host.now_ms += 1;
    root.on_tick(&mut host);
    assert_eq!(host.sent.len(), 2);
    assert_eq!((acked(&host.sent[1].1), sent_at(&host.sent[1].1)), (0, host.now_ms));
    host.now_ms += 10 * WATCH_RETRY_MS;
    root.on_tick(&mut host);
    assert_eq!(host.stream_attempts, 2);
}

#[test]
fn revocations_are_applied_and_acknowledged_with_the_generation_applied() {
    let (mut root, mut host) = configured();
    root.on_tick(&mut host);
    let token = host.streams[0].0;
    let hello = Revocation { generation: 7, echo_ms: host.now_ms, ..Default::default() };
    receive(&mut root, &mut host, token, hello.encode_to_vec());
    assert_eq!(acked(&host.sent[1].1), 7);
    let meta = KeyMetadata { generation: 7, ..Default::default() };
    root.cache.borrow_mut().remember([1; 32], meta.clone(), "Bearer sk_test_real");
    root.cache.borrow_mut().remember([2; 32], meta, "Bearer sk_test_real");
    assert_eq!(root.cache.borrow().len(), 2);
    receive(
        &mut root,
        &mut host,
        token,
        Revocation { generation: 9, key_hashes: vec![vec![1; 32]], ..Default::default() }.encode_to_vec(),
    );
    assert_eq!(acked(&host.sent[2].1), 9);
    assert!(root.cache.borrow().get(&[1; 32], host.now_ms).is_none());
    assert!(root.cache.borrow().get(&[2; 32], host.now_ms).is_some());
    // An older generation arriving late acknowledges the newest applied.
    receive(
        &mut root,
        &mut host,
        token,
        Revocation { generation: 8, key_hashes: vec![vec![3; 32]], ..Default::default() }.encode_to_vec(),
    );
    assert_eq!(acked(&host.sent[3].1), 9);
    // Messages on another stream are not revocations.
    let size = host.received.len();
    root.on_grpc_stream_message(&mut host, token + 100, size);
    assert_eq!(host.sent.len(), 4);
    // A heartbeat echoing the worker's latest clock keeps the cache trusted
    // (it is not acknowledged); a second after that clock, trust ends, however
    // recently a message (echoing an old clock) arrived.
    host.now_ms += PING_EVERY_MS;
    root.on_tick(&mut host);
    assert_eq!(host.sent.len(), 5);
    let pinged = sent_at(&host.sent[4].1);
    host.now_ms += 10;
    let beat = Revocation { heartbeat: true, echo_ms: pinged, ..Default::default() }.encode_to_vec();
    receive(&mut root, &mut host, token, beat.clone());
    assert_eq!(host.sent.len(), 5, "a heartbeat is not acknowledged");
    host.now_ms = pinged + crate::key_cache::TRUST_MS - 1;
    assert!(root.cache.borrow().get(&[2; 32], host.now_ms).is_some());
    host.now_ms += 1;
    assert!(root.cache.borrow().get(&[2; 32], host.now_ms).is_none(), "a replica gone silent is not trusted");
    receive(&mut root, &mut host, token, beat);
    assert!(root.cache.borrow().get(&[2; 32], host.now_ms).is_none(), "nor one whose messages come late");
}

#[test]
fn an_unreadable_message_cancels_the_stream_and_the_cache_until_a_new_one() {
    let (mut root, mut host) = configured();
    root.on_tick(&mut host);
    let token = host.streams[0].0;
    let hello = Revocation { generation: 1, echo_ms: host.now_ms, ..Default::default() };
    receive(&mut root, &mut host, token, hello.encode_to_vec());
    let meta = KeyMetadata { generation: 1, ..Default::default() };
    root.cache.borrow_mut().remember([1; 32], meta, "Bearer sk_test_real");
    receive(&mut root, &mut host, token, vec![0xff, 0xff, 0xff]);
    assert_eq!(host.cancelled, vec![token]);
    assert!(root.cache.borrow().get(&[1; 32], host.now_ms).is_none());
    assert_eq!(host.sent.len(), 2, "nothing acknowledged");
    host.now_ms += WATCH_RETRY_MS;
    root.on_tick(&mut host);
    assert_eq!(host.streams.len(), 2, "a new stream");
}

#[test]
fn a_closed_stream_disconnects_the_cache_and_is_reopened() {
    let (mut root, mut host) = configured();
    root.on_tick(&mut host);
    let token = host.streams[0].0;
    let hello = Revocation { generation: 1, echo_ms: host.now_ms, ..Default::default() };
    receive(&mut root, &mut host, token, hello.encode_to_vec());
    let meta = KeyMetadata { generation: 1, ..Default::default() };
    root.cache.borrow_mut().remember([1; 32], meta, "Bearer sk_test_real");
    root.on_grpc_stream_close(token + 1);
    assert!(root.cache.borrow().get(&[1; 32], host.now_ms).is_some(), "another stream closed");
    root.on_grpc_stream_close(token);
    assert!(root.cache.borrow().get(&[1; 32], host.now_ms).is_none());
    root.on_tick(&mut host);
    assert_eq!(host.streams.len(), 1, "within a second of the last attempt");
    host.now_ms += WATCH_RETRY_MS;
    root.on_tick(&mut host);
    assert_eq!(host.streams.len(), 2);
}

#[test]
fn on_done_reports_what_is_left() {
    let (mut root, mut host) = configured();
    assert!(root.on_done(&mut host));
    assert!(host.warnings.borrow().is_empty());
    queue(&root, &["a", "b"]);
    assert!(root.on_done(&mut host));
    assert!(host.warnings.borrow()[0].starts_with("keybrake: 2 audit records"), "{:?}", host.warnings.borrow());
}
