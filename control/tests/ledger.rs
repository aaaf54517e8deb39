//! The control service's gateway operations, in-process, against every storage
//! backend: caps, idempotency, settlement, leases, the audit chain.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::atomic::Ordering;

use keybrake_control::store::StoreError;
use keybrake_control::wire::authorize_response::Verdict;
use keybrake_control::wire::{price, Outcome, Price, SettleRequest};
use support::{charge, Harness, START_US};

fn verdict(h: &Harness, r: keybrake_control::wire::AuthorizeResponse) -> Verdict {
    let _ = h;
    r.verdict.expect("a verdict")
}

fn allowed_call(v: Verdict) -> (String, String) {
    match v {
        Verdict::Allow(a) => (a.call_id, a.forwarded_idempotency_key),
        other => panic!("expected allow, got {other:?}"),
    }
}

fn denied_code(v: Verdict) -> String {
    match v {
        Verdict::Deny(d) => d.denial_code().map(|c| c.as_str()).unwrap_or_default().to_owned(),
        other => panic!("expected deny, got {other:?}"),
    }
}

async fn settle(h: &Harness, call_id: &str, outcome: Outcome, status: u32, body: &str) {
    h.app
        .settle(SettleRequest {
            call_id: call_id.into(),
            outcome: outcome as i32,
            http_status: status,
            body: body.as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .expect("settled");
}

storage_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_reservations_never_exceed_the_cap(h) {
        let key = h.key("cohort", "POST /v1/charges", Some("1000"), r#""dedup":"idempotency_key""#).await;
        let mut tasks = Vec::new();
        for i in 0..200 {
            let app = h.app.clone();
            let req = charge(&key, 1000, "usd", &format!("k{i}"));
            tasks.push(tokio::spawn(async move { app.authorize(req).await }));
        }
        let mut allowed = 0;
        for t in tasks {
            match t.await.unwrap().verdict.unwrap() {
                Verdict::Allow(_) => allowed += 1,
                Verdict::Deny(d) => assert_eq!(d.denial_code().map(|c| c.as_str()).unwrap_or_default(), "spend_cap_exceeded"),
                Verdict::Replay(_) => panic!("no replays expected"),
            }
        }
        assert_eq!(allowed, 100, "{}", h.name);
        let spend = h.spend(&key).await;
        assert_eq!(spend.reserved, 1_000_000_000, "{}", h.name);
    }
}

storage_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_same_operation_arriving_at_once_goes_out_once(h) {
        let key = h.key("at-once", "POST /v1/charges", Some("1000"), "").await;
        for round in 0..5 {
            // Same content, each with its own caller key (the SDKs' random ones).
            let tasks: Vec<_> = (0..8)
                .map(|i| {
                    let app = h.app.clone();
                    let req = charge(&key, 100 + round, "usd", &format!("sdk-{round}-{i}"));
                    tokio::spawn(async move { app.authorize(req).await })
                })
                .collect();
            let mut allowed = 0;
            for t in tasks {
                match t.await.unwrap().verdict.unwrap() {
                    Verdict::Allow(_) => allowed += 1,
                    Verdict::Deny(d) => assert_eq!(d.denial_code().map(|c| c.as_str()).unwrap_or_default(), "idempotency_key_in_use", "{}", h.name),
                    Verdict::Replay(_) => panic!("{}: nothing finished, nothing to replay", h.name),
                }
            }
            assert_eq!(allowed, 1, "{}: round {round}", h.name);
        }
    }
}

storage_test! {
    #[tokio::test]
    async fn settlement_commits_releases_or_marks_uncertain(h) {
        let key = h.key("settle", "POST /v1/charges", Some("100"), "").await;
        let (ok, _) = allowed_call(verdict(&h, h.app.authorize(charge(&key, 2000, "usd", "a")).await));
        let (declined, _) = allowed_call(verdict(&h, h.app.authorize(charge(&key, 3000, "usd", "b")).await));
        let (lost, _) = allowed_call(verdict(&h, h.app.authorize(charge(&key, 4000, "usd", "c")).await));
        settle(&h, &ok, Outcome::Responded, 200, r#"{"id":"ch_1","currency":"usd","amount":2000}"#).await;
        settle(&h, &declined, Outcome::Responded, 402, r#"{"error":{}}"#).await;
        settle(&h, &lost, Outcome::Uncertain, 0, "").await;
        // Settling twice changes nothing.
        settle(&h, &ok, Outcome::Responded, 402, "").await;
        let s = h.spend(&key).await;
        assert_eq!((s.committed, s.reserved, s.uncertain), (20_000_000, 0, 40_000_000), "{}", h.name);
    }
}

storage_test! {
    #[tokio::test]
    async fn the_same_operation_is_one_operation(h) {
        let key = h.key("dedup", "POST /v1/charges", Some("100"), "").await;
        let first = charge(&key, 1500, "usd", "caller-1");
        let (call, forwarded) = allowed_call(verdict(&h, h.app.authorize(first.clone()).await));
        assert!(forwarded.starts_with("kb_"), "content dedup sends a derived key");
        // In flight: the same key, or the same content under a new key, is refused with 409.
        assert_eq!(denied_code(verdict(&h, h.app.authorize(first.clone()).await)), "idempotency_key_in_use");
        let mut retry = first.clone();
        retry.idempotency_key = "caller-2".into();
        assert_eq!(denied_code(verdict(&h, h.app.authorize(retry.clone()).await)), "idempotency_key_in_use");
        settle(&h, &call, Outcome::Responded, 200, r#"{"id":"ch_9","currency":"usd","amount":1500}"#).await;
        for again in [first.clone(), retry.clone()] {
            match verdict(&h, h.app.authorize(again).await) {
                Verdict::Replay(r) => assert_eq!(
                    (r.http_status, r.body.as_slice()),
                    (200, br#"{"id":"ch_9","currency":"usd","amount":1500}"#.as_slice())
                ),
                other => panic!("{}: expected replay, got {other:?}", h.name),
            }
        }
        // The caller's key reused with other parameters: 400.
        let mut other = charge(&key, 999, "usd", "caller-1");
        other.fingerprint = "f".repeat(64);
        assert_eq!(denied_code(verdict(&h, h.app.authorize(other).await)), "idempotency_key_reused");
        assert_eq!(h.spend(&key).await.committed, 15_000_000, "{}: counted once", h.name);
    }
}

storage_test! {
    #[tokio::test]
    async fn a_retry_of_an_uncertain_call_reuses_its_key_and_its_amount(h) {
        let key = h.key("uncertain", "POST /v1/charges", Some("100"), "").await;
        let req = charge(&key, 5000, "usd", "");
        let (first, forwarded) = allowed_call(verdict(&h, h.app.authorize(req.clone()).await));
        settle(&h, &first, Outcome::Uncertain, 0, "").await;
        let (second, forwarded_again) = allowed_call(verdict(&h, h.app.authorize(req.clone()).await));
        assert_ne!(first, second);
        assert_eq!(forwarded, forwarded_again, "{}: Stripe sees the same key and returns the original", h.name);
        let s = h.spend(&key).await;
        assert_eq!((s.reserved, s.uncertain), (0, 50_000_000), "{}: no second reservation", h.name);
        settle(&h, &second, Outcome::Responded, 200, r#"{"id":"ch_2","currency":"usd","amount":5000}"#).await;
        let s = h.spend(&key).await;
        assert_eq!((s.committed, s.uncertain), (50_000_000, 0), "{}", h.name);
    }
}

storage_test! {
    /// Found by the deterministic simulator (`sim --seed 426`, before the fix):
    /// a retry of an uncertain charge went out under its upstream key and was
    /// not sent (the connection failed); it was released, its record dropped,
    /// and the next retry went out under a new key: Stripe charged twice.
    #[tokio::test]
    async fn a_retry_of_an_uncertain_call_that_was_not_executed_leaves_it_uncertain(h) {
        let key = h.key("uncertain-twice", "POST /v1/charges", Some("100"), "").await;
        let req = charge(&key, 5000, "usd", "");
        let (first, forwarded) = allowed_call(verdict(&h, h.app.authorize(req.clone()).await));
        settle(&h, &first, Outcome::Uncertain, 0, "").await;
        // Not sent; then refused by the upstream as in flight under that key (409).
        for (outcome, status) in [(Outcome::NotSent, 0), (Outcome::Responded, 409)] {
            let (retry, again) = allowed_call(verdict(&h, h.app.authorize(req.clone()).await));
            assert_eq!(again, forwarded, "{}", h.name);
            settle(&h, &retry, outcome, status, "").await;
            let s = h.spend(&key).await;
            assert_eq!((s.reserved, s.uncertain), (0, 50_000_000), "{}: still counted, as uncertain", h.name);
        }
        let (last, again) = allowed_call(verdict(&h, h.app.authorize(req.clone()).await));
        assert_eq!(again, forwarded, "{}: the operation keeps its upstream key", h.name);
        settle(&h, &last, Outcome::Responded, 200, r#"{"id":"ch_1","currency":"usd","amount":5000}"#).await;
        let s = h.spend(&key).await;
        assert_eq!((s.committed, s.uncertain), (50_000_000, 0), "{}", h.name);
    }
}

storage_test! {
    /// Found by the deterministic simulator (`sim --seed 522`, before the fix):
    /// a rate set through one replica was not used by the others until they
    /// restarted, so they priced calls at the old rate and a key's calls
    /// through them moved more than its cap at the rate in force.
    #[tokio::test]
    async fn a_rate_set_through_one_replica_prices_calls_at_every_replica(h) {
        use keybrake_control::app::{App, Limits};
        let other = App::new(h.app.store.clone(), support::vault(), h.clock.clone(), Limits::default());
        let rate = |r: &str| {
            vec![keybrake_control::model::FxRate {
                currency: "eur".into(),
                usd_per_unit: r.into(),
                as_of: "2026-11-26".into(),
            }]
        };
        keybrake_control::admin::set_rates(&h.app, rate("1.00")).await.unwrap();
        other.refresh_fx().await.unwrap();
        keybrake_control::admin::set_rates(&h.app, rate("2.00")).await.unwrap();
        let key = h.key("eur", "POST /v1/charges", Some("15"), r#""dedup":"idempotency_key""#).await;
        // 10 EUR is $20 at the rate in force: over the $15 cap, at either replica.
        let code = denied_code(verdict(&h, other.authorize(charge(&key, 1000, "eur", "e1")).await));
        assert_eq!(code, "spend_cap_exceeded", "{}", h.name);
        allowed_call(verdict(&h, other.authorize(charge(&key, 700, "eur", "e2")).await));
        assert_eq!(h.spend(&key).await.reserved, 14_000_000, "{}: priced at 2.00", h.name);
    }
}

storage_test! {
    #[tokio::test]
    async fn a_lost_lease_counts_as_uncertain_and_a_lost_answer_is_released(h) {
        let key = h.key("lease", "POST /v1/charges", Some("100"), "").await;
        let (forgotten, _) = allowed_call(verdict(&h, h.app.authorize(charge(&key, 1000, "usd", "x")).await));
        let mut unanswered = charge(&key, 2000, "usd", "y");
        unanswered.call_id = "call_unanswered0001".into();
        allowed_call(verdict(&h, h.app.authorize(unanswered).await));
        settle(&h, "call_unanswered0001", Outcome::NotSent, 0, "").await;
        h.clock.0.fetch_add(301 * 1_000_000, Ordering::SeqCst);
        h.sweep().await;
        let s = h.spend(&key).await;
        assert_eq!((s.reserved, s.uncertain), (0, 10_000_000), "{}", h.name);
        // Its settlement arriving late still settles it.
        settle(&h, &forgotten, Outcome::Responded, 200, "{}").await;
        assert_eq!(h.spend(&key).await.uncertain, 10_000_000, "{}: a lapsed call stays uncertain", h.name);
    }
}

storage_test! {
    #[tokio::test]
    async fn caps_reset_each_utc_day(h) {
        let key = h.key("daily", "POST /v1/charges", Some("10"), r#""expires_in_seconds":172800"#).await;
        allowed_call(verdict(&h, h.app.authorize(charge(&key, 1000, "usd", "d1")).await));
        assert_eq!(denied_code(verdict(&h, h.app.authorize(charge(&key, 1, "usd", "d2")).await)), "spend_cap_exceeded");
        h.clock.0.fetch_add(86_400 * 1_000_000, Ordering::SeqCst);
        allowed_call(verdict(&h, h.app.authorize(charge(&key, 999, "usd", "d3")).await));
    }
}

storage_test! {
    #[tokio::test]
    async fn unpriced_object_and_fx_pricing(h) {
        let key = h.key("pricing", "POST /v1/payment_intents/*/confirm", Some("100"), "").await;
        let mut confirm = charge(&key, 0, "", "");
        confirm.path = "/v1/payment_intents/pi_1/confirm".into();
        confirm.price =
            Some(Price { kind: price::Kind::ObjectAmount as i32, object_id: "pi_1".into(), ..Default::default() });
        assert_eq!(denied_code(verdict(&h, h.app.authorize(confirm.clone()).await)), "unpriced_call_not_allowed");
        let jpy = h.key("jpy", "POST /v1/charges", Some("100"), "").await;
        assert_eq!(
            denied_code(verdict(&h, h.app.authorize(charge(&jpy, 1000, "jpy", "j")).await)),
            "currency_without_fx_rate"
        );
    }
}

storage_test! {
    #[tokio::test]
    async fn the_audit_chain_records_every_decision_and_verifies(h) {
        let key = h.key("audit", "POST /v1/charges", Some("15"), "").await;
        let (call, _) = allowed_call(verdict(&h, h.app.authorize(charge(&key, 1000, "usd", "a1")).await));
        settle(&h, &call, Outcome::Responded, 200, r#"{"id":"ch_a","currency":"usd","amount":1000}"#).await;
        denied_code(verdict(&h, h.app.authorize(charge(&key, 900, "usd", "a2")).await));
        let report = keybrake_control::audit::verify(&h.app.store).await.unwrap();
        assert!(report.ok && report.rows >= 3, "{}: {report:?}", h.name);
        let rows = h.audit_for(&key).await;
        let stages: Vec<_> = rows.iter().map(|r| (r.entry.stage.as_str(), r.entry.decision.as_str())).collect();
        assert_eq!(stages, [("intent", "allowed"), ("outcome", "allowed"), ("call", "denied")], "{}", h.name);
        assert_eq!(rows[1].entry.object_id, "ch_a");
    }
}

storage_test! {
    #[tokio::test]
    async fn records_end_after_the_dedup_window_and_their_time_to_live(h) {
        const S: i64 = 1_000_000;
        let extra = r#""dedup_window_seconds":600,"expires_in_seconds":172800"#;
        let key = h.key("window", "POST /v1/charges", Some("1000"), extra).await;
        let (call, first_key) = allowed_call(verdict(&h, h.app.authorize(charge(&key, 100, "usd", "k1")).await));
        settle(&h, &call, Outcome::Responded, 200, r#"{"id":"ch_w1","currency":"usd","amount":100}"#).await;
        h.clock.0.fetch_add(599 * S, Ordering::SeqCst);
        assert!(matches!(verdict(&h, h.app.authorize(charge(&key, 100, "usd", "k2")).await), Verdict::Replay(_)));
        // Past the window the same content is a new operation, with a new upstream key...
        h.clock.0.fetch_add(2 * S, Ordering::SeqCst);
        let (call, second_key) = allowed_call(verdict(&h, h.app.authorize(charge(&key, 100, "usd", "k3")).await));
        assert_ne!(first_key, second_key, "{}: Stripe must not deduplicate a new operation", h.name);
        settle(&h, &call, Outcome::Responded, 200, r#"{"id":"ch_w2","currency":"usd","amount":100}"#).await;
        // ...but a caller's key names its operation for 24 hours (Stripe's rule).
        match verdict(&h, h.app.authorize(charge(&key, 100, "usd", "k1")).await) {
            Verdict::Replay(r) => assert!(String::from_utf8_lossy(&r.body).contains("ch_w1"), "{}", h.name),
            other => panic!("{}: expected the first charge replayed, got {other:?}", h.name),
        }
        h.clock.0.fetch_add(86_400 * S, Ordering::SeqCst);
        let now = h.clock.0.load(Ordering::SeqCst) / S;
        let purged = h.app.store.write(move |l| l.purge_idempotency(now)).await.unwrap();
        assert!(purged >= 2, "{}: finished records are purged after their time to live ({purged})", h.name);
        allowed_call(verdict(&h, h.app.authorize(charge(&key, 100, "usd", "k1")).await));
        assert_eq!(
            h.spend(&key).await.committed,
            2_000_000,
            "{}: two operations on the first day, counted once each",
            h.name
        );
    }
}

storage_test! {
    #[tokio::test]
    async fn a_callers_key_reused_on_another_endpoint_is_refused(h) {
        let key = h.key("endpoint", "POST /v1/*", Some("100"), r#""dedup":"idempotency_key""#).await;
        let first = charge(&key, 100, "usd", "same-key");
        let (call, _) = allowed_call(verdict(&h, h.app.authorize(first.clone()).await));
        settle(&h, &call, Outcome::Responded, 200, r#"{"id":"ch_e","currency":"usd","amount":100}"#).await;
        // Same fingerprint, other endpoint: the endpoint alone makes it a mismatch.
        let mut elsewhere = first.clone();
        elsewhere.path = "/v1/transfers".into();
        assert_eq!(denied_code(verdict(&h, h.app.authorize(elsewhere).await)), "idempotency_key_reused", "{}", h.name);
    }
}

storage_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn console_sessions_expire_end_at_logout_and_are_purged(h) {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let now = START_US / 1_000_000;
        h.app.store.write(move |l| l.insert_session(&a, "csrf-a", now + 10)).await.unwrap();
        h.app.store.write(move |l| l.insert_session(&b, "csrf-b", now + 20)).await.unwrap();
        let at = |t: i64, id: [u8; 32]| {
            let store = h.app.store.clone();
            async move { store.read(move |l| l.session(&id, t)).await.unwrap() }
        };
        assert_eq!(at(now, a).await.as_deref(), Some("csrf-a"), "{}", h.name);
        assert_eq!(at(now + 10, a).await, None, "{}: the expiry is absolute", h.name);
        assert_eq!(at(now, [3u8; 32]).await, None, "{}", h.name);
        // The same id twice is refused, not overwritten.
        assert!(h.app.store.write(move |l| l.insert_session(&a, "other", now + 99)).await.is_err(), "{}", h.name);
        h.app.store.write(move |l| l.delete_session(&b)).await.unwrap();
        assert_eq!(at(now, b).await, None, "{}: logout ends it", h.name);
        let purged = h.app.store.write(move |l| l.purge_sessions(now + 10)).await.unwrap();
        assert_eq!(purged, 1, "{}: the expired session is purged", h.name);
    }
}

storage_test! {
    #[tokio::test]
    async fn an_answer_that_moved_more_than_priced_suspends_the_key_and_counts_what_moved(h) {
        let key = h.key("mismatch", "POST /v1/charges", Some("30"), "").await;
        let (call_id, _) = allowed_call(verdict(&h, h.app.authorize(charge(&key, 100, "usd", "a")).await));
        settle(&h, &call_id, Outcome::Responded, 200, r#"{"id":"ch_1","amount":100000,"currency":"usd"}"#).await;
        let spend = h.spend(&key).await;
        assert_eq!(
            (spend.committed, spend.reserved),
            (1_000_000_000, 0),
            "{}: what moved, not what was priced",
            h.name
        );
        let stored = h.app.store.read({
            let id = key.id.clone();
            move |l| l.key_by_id(&id)
        });
        let stored = stored.await.unwrap().unwrap();
        assert!(stored.suspended_at.is_some() && stored.suspended_reason.contains("moved 100000 usd"), "{}", h.name);
        let rows = h.audit_for(&key).await;
        let mismatch: Vec<_> = rows.iter().filter(|r| r.entry.decision == "price_mismatch").collect();
        assert_eq!(mismatch.len(), 1, "{}", h.name);
        assert_eq!(mismatch[0].entry.usd_micros, Some(1_000_000_000));
        // Refused from now on, whatever the call (the cache was dropped before the answer).
        assert_eq!(denied_code(verdict(&h, h.app.authorize(charge(&key, 1, "usd", "b")).await)), "vault_key_suspended");
        // Settling again (a retried settlement) changes nothing.
        settle(&h, &call_id, Outcome::Responded, 200, r#"{"id":"ch_1","amount":100000,"currency":"usd"}"#).await;
        assert_eq!(h.spend(&key).await.committed, 1_000_000_000, "{}", h.name);
        // Reinstated: decided as before (here by the cap, which what moved has used up).
        let id = key.id.clone();
        let hash = h.app.store.write(move |l| l.reinstate_key(&id)).await.unwrap();
        assert_eq!(hash, Some(key.hash));
        h.app.keys.evict(&[key.hash]);
        assert_eq!(denied_code(verdict(&h, h.app.authorize(charge(&key, 1, "usd", "c")).await)), "spend_cap_exceeded");
        // What was priced or less is no mismatch.
        let fine = h.key("no-mismatch", "POST /v1/charges", Some("30"), "").await;
        let (call_id, _) = allowed_call(verdict(&h, h.app.authorize(charge(&fine, 200, "usd", "d")).await));
        settle(&h, &call_id, Outcome::Responded, 200, r#"{"id":"ch_2","amount":200,"currency":"usd"}"#).await;
        assert_eq!(h.spend(&fine).await.committed, 2_000_000);
        allowed_call(verdict(&h, h.app.authorize(charge(&fine, 1, "usd", "e")).await));
    }
}

storage_test! {
    #[tokio::test]
    async fn unpriced_calls_count_at_their_currencys_rate_or_an_upper_bound(h) {
        let rate = keybrake_control::model::FxRate {
            currency: "eur".into(),
            usd_per_unit: "1.08".into(),
            as_of: "2026-12-01".into(),
        };
        h.app.store.write(move |l| l.put_fx_rate(&rate, 0)).await.unwrap();
        h.app.refresh_fx().await.unwrap();
        let key = h.key("unpriced-fx", "POST /v1/subscriptions", Some("1000"), r#""allow_unpriced_calls":true"#).await;
        let mut sub = charge(&key, 0, "", "sub-1");
        sub.path = "/v1/subscriptions".into();
        sub.price =
            Some(Price { kind: price::Kind::Unpriced as i32, basis: "a subscription".into(), ..Default::default() });
        let (call_id, _) = allowed_call(verdict(&h, h.app.authorize(sub.clone()).await));
        settle(&h, &call_id, Outcome::Responded, 200, r#"{"id":"in_1","amount_due":1000,"currency":"eur"}"#).await;
        assert_eq!(h.spend(&key).await.committed, 10_800_000, "{}: EUR 10.00 at 1.08, not $0", h.name);
        // No rate for GBP: counted as uncertain at the highest rate known (EUR's), never at $0.
        sub.idempotency_key = "sub-2".into();
        sub.fingerprint = "another".into();
        let (call_id, _) = allowed_call(verdict(&h, h.app.authorize(sub).await));
        settle(&h, &call_id, Outcome::Responded, 200, r#"{"id":"in_2","amount_due":1000,"currency":"gbp"}"#).await;
        let spend = h.spend(&key).await;
        assert_eq!((spend.committed, spend.uncertain), (10_800_000, 10_800_000), "{}", h.name);
    }
}

storage_test! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_state_or_stored_response_is_an_error_not_a_live_state(h) {
        let key = h.key("corrupt", "POST /v1/charges", Some("100"), "").await;
        let (pending, _) = allowed_call(verdict(&h, h.app.authorize(charge(&key, 1000, "usd", "p")).await));
        let (done, _) = allowed_call(verdict(&h, h.app.authorize(charge(&key, 2000, "usd", "d")).await));
        settle(&h, &done, Outcome::Responded, 200, r#"{"id":"ch_d","currency":"usd","amount":2000}"#).await;
        let read_call = |id: &str| {
            let (store, id) = (h.app.store.clone(), id.to_owned());
            async move { store.write(move |l| l.call(&id).map(|_| ())).await }
        };
        let read_records = |id: &str| {
            let (store, id) = (h.app.store.clone(), id.to_owned());
            async move { store.write(move |l| l.idempotency_for_call(&id).map(|_| ())).await }
        };
        for (table, column, value) in
            [("calls", "bucket", "reserved"), ("calls", "state", "pending"), ("idempotency", "state", "in_flight")]
        {
            h.raw_sql(&format!("UPDATE {table} SET {column} = 'bogus' WHERE call_id = '{pending}'")).await;
            let read = if table == "calls" { read_call(&pending).await } else { read_records(&pending).await };
            assert!(matches!(read, Err(StoreError::Corrupt(_))), "{}: {table}.{column}: {read:?}", h.name);
            // Fail closed: the call cannot be settled from a row that does not decode.
            let settled = h
                .app
                .settle(SettleRequest {
                    call_id: pending.clone(),
                    outcome: Outcome::Responded as i32,
                    http_status: 200,
                    body: br#"{"id":"ch_p","currency":"usd","amount":1000}"#.to_vec(),
                    ..Default::default()
                })
                .await;
            assert!(settled.is_err(), "{}: settled from a corrupt {table}.{column}", h.name);
            let s = h.spend(&key).await;
            assert_eq!((s.committed, s.reserved), (20_000_000, 10_000_000), "{}: {table}.{column}", h.name);
            h.raw_sql(&format!("UPDATE {table} SET {column} = '{value}' WHERE call_id = '{pending}'")).await;
            read_call(&pending).await.unwrap();
            read_records(&pending).await.unwrap();
        }
        // Stored headers that do not decode are not replayed as none.
        h.raw_sql(&format!("UPDATE idempotency SET headers = 'not json' WHERE call_id = '{done}'")).await;
        let read = read_records(&done).await;
        assert!(matches!(read, Err(StoreError::Corrupt(_))), "{}: headers: {read:?}", h.name);
        assert!(
            !matches!(verdict(&h, h.app.authorize(charge(&key, 2000, "usd", "d")).await), Verdict::Replay(_)),
            "{}: replayed with headers that do not decode",
            h.name
        );
    }
}
