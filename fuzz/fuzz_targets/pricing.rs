//! Stripe pricing (`keybrake_core::pricing::price`). Input:
//! `METHOD PATH\nFORM-BODY`; the path is priced both raw and normalised, and
//! the body under every method.
//!
//! Properties:
//! - `price` never panics, whatever the method, path and parameters.
//! - GET and DELETE are free; so is every call `moves_money` says is not in the table.
//! - Amounts are never negative; an amount whose basis is a parameter
//!   (`amount`, `amount_to_capture`) is that parameter's value exactly.
//! - The price depends on what the body says, not on how it is encoded:
//!   the canonical body and a fully percent-encoded body price the same.
//! - `POST /v1/charges` is monotone in `amount` (same currency, more amount,
//!   higher price) and never anything but an amount or an error.
#![forbid(unsafe_code)]
#![no_main]

#[path = "common.rs"]
mod common;

use keybrake_core::form::FormParams;
use keybrake_core::path::normalize;
use keybrake_core::pricing::{moves_money, price, CurrencySource, Price};
use keybrake_core::scope::Method;
use libfuzzer_sys::fuzz_target;

const METHODS: [Method; 3] = [Method::Get, Method::Post, Method::Delete];

/// A body with the same parameters, `amount` replaced (or added) by `amount`.
fn with_amount(params: &FormParams, amount: &str) -> FormParams {
    let mut body: Vec<String> = params
        .iter()
        .filter(|(k, _)| k != "amount")
        .map(|(k, v)| format!("{}={}", common::pct_encode(k), common::pct_encode(v)))
        .collect();
    body.push(format!("amount={amount}"));
    match FormParams::parse(body.join("&").as_bytes()) {
        Ok(p) => p,
        Err(e) => panic!("re-encoded body does not parse: {e}"),
    }
}

fn check(method: Method, path: &str, params: &FormParams) {
    let result = price(method, path, params);
    if method != Method::Post || !moves_money(method, path) {
        assert_eq!(result, Ok(Price::Free), "{method} {path:?}");
    }
    if let Ok(Price::Amount { minor, basis, .. }) = &result {
        assert!(*minor >= 0, "{method} {path:?} priced {minor}");
        if matches!(*basis, "amount" | "amount_to_capture") {
            let given = params.get(basis).map(str::parse::<i64>);
            assert_eq!(given, Some(Ok(*minor)), "{basis} vs the priced amount");
        }
    }
    // Encoding independence.
    let canonical = FormParams::parse(params.canonical().as_bytes());
    assert_eq!(canonical.as_ref().map(|p| price(method, path, p)).ok(), Some(result.clone()));
    let verbose: Vec<String> =
        params.iter().map(|(k, v)| format!("{}={}", common::pct_encode(k), common::pct_encode(v))).collect();
    // What the gateway forwards prices the same.
    let forwarded = FormParams::parse(params.encode().as_bytes());
    assert_eq!(forwarded.as_ref().map(|p| price(method, path, p)).ok(), Some(result.clone()));
    let verbose = FormParams::parse(verbose.join("&").as_bytes());
    assert_eq!(verbose.as_ref().map(|p| price(method, path, p)).ok(), Some(result));
}

fn check_charge_monotone(params: &FormParams, delta: u64) {
    let Ok(Price::Amount { minor: a, currency, .. }) = price(Method::Post, "/v1/charges", params) else {
        return;
    };
    assert!(matches!(currency, CurrencySource::Given(_)));
    for b in [a.saturating_add(delta as i64 % 1_000_000_000_000), a / 2, 0, a] {
        let other = with_amount(params, &b.to_string());
        match price(Method::Post, "/v1/charges", &other) {
            Ok(Price::Amount { minor, currency: c, .. }) => {
                assert_eq!(c, currency);
                assert_eq!(minor, b);
                assert_eq!(a <= b, a <= minor, "amount {a} -> {b} priced {minor}");
            }
            Err(_) => {} // too large
            Ok(other) => panic!("a charge priced as {other:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (first, body) = common::split_line(data);
    let first = String::from_utf8_lossy(first);
    let (method_text, raw_path) = first.split_once(' ').unwrap_or(("POST", &first));
    let Ok(params) = FormParams::parse(body) else {
        return;
    };
    let mut paths = vec![raw_path.to_owned()];
    if let Ok(t) = normalize(raw_path) {
        paths.push(t.path);
    }
    let methods: Vec<Method> = match Method::parse(method_text) {
        Some(m) => vec![m],
        None => METHODS.to_vec(),
    };
    for path in &paths {
        for &m in &methods {
            check(m, path, &params);
        }
    }
    // Every body as a charge too (most bodies are not valid charges; those that are matter most).
    if let Ok(p) = price(Method::Post, "/v1/charges", &params) {
        assert!(matches!(p, Price::Amount { .. }), "a charge priced as {p:?}");
    }
    let delta = data.iter().rev().take(8).fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    check_charge_monotone(&params, delta);
});
