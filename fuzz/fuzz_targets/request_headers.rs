//! What the filter reads from a request (`keybrake_filter::request`):
//! `Incoming::from_headers` on arbitrary header lists, then `price_body`.
//!
//! Input, as text:
//! ```text
//! #config {"routes":[...]}        optional first line: plugin configuration
//! :method: POST                   header lines, `name: value`
//! :path: /stripe/v1/charges
//! authorization: Bearer {vk}      `{vk}` is a valid vault key, `{vk-basic}`
//!                                 the base64 of "<vault key>:"
//!                                 an empty line, then the body
//! amount=2999&currency=usd
//! ```
//!
//! Properties:
//! - Nothing panics: `is_vendor_route`, `credentials::vault_key`,
//!   `from_headers`, `price_body`, the refusal's Stripe error body.
//! - An accepted request's target is normalised, and the path forwarded
//!   upstream (`forwarded_path`) reads, after the route prefix, as exactly
//!   the target that was checked and priced.
//! - POSTs carry no query; a query holds no method override (`_method`) and
//!   no vault key however it is percent-encoded; `method_rewritten` says
//!   whether the method was written otherwise; header values kept are within
//!   their limits.
//! - A priced body has a 64-hex-digit fingerprint; GET and DELETE are free;
//!   the canonical encoding of the body prices and fingerprints the same.
#![forbid(unsafe_code)]
#![no_main]

#[path = "common.rs"]
mod common;

use keybrake_core::form::FormParams;
use keybrake_core::path::normalize;
use keybrake_core::pricing::Price;
use keybrake_core::scope::Method;
use keybrake_core::vault_key::VaultKey;
use keybrake_filter::config::FilterConfig;
use keybrake_filter::credentials;
use keybrake_filter::refusal::Refusal;
use keybrake_filter::request::{is_vendor_route, Incoming};
use libfuzzer_sys::fuzz_target;

fn refused(r: &Refusal) {
    let e = r.to_stripe_error();
    let _ = e.body();
    let _ = e.headers();
    let _ = r.code();
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (head, body) = match text.split_once("\n\n") {
        Some((h, b)) => (h, b.as_bytes()),
        None => (text.as_ref(), &b""[..]),
    };
    let mut lines = head.lines().peekable();
    let mut config = FilterConfig::default();
    if let Some(rest) = lines.peek().and_then(|l| l.strip_prefix("#config ")) {
        if let Ok(c) = FilterConfig::parse(rest.as_bytes()) {
            config = c;
        }
        lines.next();
    }
    let key = VaultKey::from_entropy([7; 32]);
    let basic = common::base64(format!("{}:", key.expose()).as_bytes());
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            // Pseudo-headers start with ':'; the name ends at the next one.
            let split = line.char_indices().skip(1).find(|&(_, c)| c == ':').map(|(i, _)| i);
            let (name, value) = match split {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => (line, ""),
            };
            let value = value.strip_prefix(' ').unwrap_or(value);
            let value = value.replace("{vk-basic}", &basic).replace("{vk}", key.expose());
            (name.to_owned(), value)
        })
        .collect();

    let vendor = is_vendor_route(&config, &headers);
    if let Err(r) = credentials::vault_key(&headers) {
        refused(&r);
    }
    let incoming = match Incoming::from_headers(&config, &headers) {
        Ok(i) => i,
        Err(r) => {
            refused(&r);
            return;
        }
    };
    assert!(vendor, "accepted a request that is not on a vendor route");

    // The checked target is what goes upstream.
    let t = &incoming.target;
    assert_eq!(normalize(&t.path).map(|n| n.path).as_deref(), Ok(t.path.as_str()));
    let forwarded = incoming.forwarded_path();
    let Some(rest) = forwarded.strip_prefix(incoming.prefix.as_str()) else {
        panic!("{forwarded:?} lost its prefix {:?}", incoming.prefix);
    };
    assert_eq!(
        normalize(rest).as_ref(),
        Ok(t),
        "forwarded {forwarded:?} reads differently upstream than the checked target"
    );
    assert_eq!(config.route_for(&forwarded).map(|(r, _)| r.prefix.as_str()), Some(incoming.prefix.as_str()));
    if incoming.method == Method::Post {
        assert_eq!(t.query, None);
    }
    // The query's refusals hold however the query is encoded: no method
    // override (`_method`) and no vault key, as a server decodes them.
    if let Some(q) = &t.query {
        for pair in q.split('&') {
            let key = common::form_decode(pair.split('=').next().unwrap_or_default());
            assert!(!key.eq_ignore_ascii_case("_method"), "query {q:?} carries a method override");
        }
        assert!(!common::form_decode(q).contains("vk_"), "query {q:?} carries a vault key");
    }
    let raw_method =
        headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(":method")).map(|(_, v)| v.as_str()).unwrap_or_default();
    assert_eq!(incoming.method_rewritten, raw_method != incoming.method.as_str());
    assert!(incoming.idempotency_key.len() <= 255);
    assert!(incoming.stripe_account.len() <= 255);

    match incoming.price_body(body) {
        Err(r) => refused(&r),
        Ok(priced) => {
            assert_eq!(priced.fingerprint.len(), 64);
            assert!(priced.fingerprint.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            if incoming.method != Method::Post {
                assert_eq!(priced.price, Price::Free);
            }
            if let Ok(p) = FormParams::parse(body) {
                let canonical = p.canonical();
                assert_eq!(
                    incoming.price_body(canonical.as_bytes()).map(|c| (c.price, c.fingerprint)),
                    Ok((priced.price.clone(), priced.fingerprint.clone())),
                    "the canonical body {canonical:?} prices or fingerprints differently"
                );
            }
            // The body the gateway forwards reads back as exactly what was priced.
            assert_eq!(
                incoming.price_body(priced.body.as_bytes()).as_ref(),
                Ok(&priced),
                "the forwarded body {:?} prices differently",
                priced.body
            );
        }
    }
});
