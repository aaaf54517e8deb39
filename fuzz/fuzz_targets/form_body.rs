//! The form-body parser (`keybrake_core::form`): any bytes, as a POST body.
//!
//! Properties:
//! - `parse` never panics; neither do `get`, `first_duplicate`, `array_indices`.
//! - The canonical encoding is a fixed point and loses nothing:
//!   `parse(canonical(p))` succeeds, has the same pairs (as a multiset, same
//!   order per key) and `canonical(parse(canonical(p))) == canonical(p)`.
//! - `get(k)` is `Err(Duplicate)` exactly when `k` is given more than once.
//! - `first_duplicate` names a repeated non-`[]` key, and is `None` only when
//!   every non-`[]` key is unique.
//! - `array_indices` is strictly ascending.
#![no_main]

use keybrake_core::form::{FormError, FormParams};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(params) = FormParams::parse(data) else {
        return;
    };
    let pairs: Vec<(&str, &str)> = params.iter().collect();

    // Canonical round trip.
    let canon = params.canonical();
    assert!(
        canon.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~[]%=&".contains(&b)),
        "canonical form has a byte that should be encoded: {canon:?}"
    );
    let again = match FormParams::parse(canon.as_bytes()) {
        Ok(p) => p,
        Err(e) => panic!("canonical form {canon:?} does not parse: {e}"),
    };
    assert_eq!(again.canonical(), canon, "canonical is not a fixed point");
    let mut before = pairs.clone();
    before.sort_by(|a, b| a.0.cmp(b.0)); // stable: per-key order kept
    let after: Vec<(&str, &str)> = again.iter().collect();
    assert_eq!(before, after, "the canonical form changed the parameters");
    assert_eq!(params.is_empty(), canon.is_empty());

    // get / first_duplicate agree with a count of the keys.
    let count = |k: &str| pairs.iter().filter(|(key, _)| *key == k).count();
    for (k, v) in &pairs {
        match params.get(k) {
            Ok(Some(got)) => {
                assert_eq!(count(k), 1);
                assert_eq!(got, *v);
            }
            Ok(None) => panic!("get({k:?}) found nothing"),
            Err(FormError::Duplicate(d)) => {
                assert!(count(k) > 1);
                assert_eq!(d, *k);
            }
            Err(e) => panic!("get({k:?}) failed with {e}"),
        }
    }
    match params.first_duplicate() {
        Some(d) => {
            assert!(count(d) > 1, "{d:?} is not duplicated");
            assert!(!d.ends_with("[]"));
        }
        None => {
            for (k, _) in &pairs {
                assert!(k.ends_with("[]") || count(k) == 1, "{k:?} is duplicated");
            }
        }
    }
    // Arbitrary lookups (the raw body as a key, and well-known names).
    let raw = String::from_utf8_lossy(data);
    let _ = params.get(&raw);
    let _ = params.get("amount");

    // array_indices over every key's name and the names pricing uses.
    let mut prefixes: Vec<&str> = pairs.iter().map(|(k, _)| k.split('[').next().unwrap_or(k)).collect();
    prefixes.extend(["line_items", "", "expand", raw.as_ref()]);
    for prefix in prefixes {
        let Ok(indices) = params.array_indices(prefix) else { continue };
        assert!(
            indices.windows(2).all(|w| w[0] < w[1]),
            "array_indices({prefix:?}) = {indices:?} is not strictly ascending"
        );
    }
});
