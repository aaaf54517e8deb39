//! The form-body parser (`keybrake_core::form`): any bytes, as a POST body.
//!
//! Properties:
//! - `parse` never panics; neither do `get` nor `array_indices`.
//! - What the gateway forwards reads back exactly: `parse(encode(p)) == p`,
//!   and the encoding holds only unreserved bytes, `%XX`, brackets, `=` and `&`.
//! - The canonical encoding is a fixed point and keeps every pair (sorted by
//!   name, stably).
//! - Every name but a `[]` append occurs once, and `get` finds its value.
//! - `array_indices` is `0..n` when it answers.
#![forbid(unsafe_code)]
#![no_main]

use keybrake_core::form::FormParams;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(params) = FormParams::parse(data) else {
        return;
    };
    let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    // What is forwarded.
    let forwarded = params.encode();
    assert!(
        forwarded.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~[]%=&".contains(&b)),
        "the forwarded body has a byte that should be encoded: {forwarded:?}"
    );
    match FormParams::parse(forwarded.as_bytes()) {
        Ok(again) => assert_eq!(again, params, "the forwarded body {forwarded:?} reads differently"),
        Err(e) => panic!("the forwarded body {forwarded:?} does not parse: {e}"),
    }

    // The canonical form.
    let canon = params.canonical();
    let again = match FormParams::parse(canon.as_bytes()) {
        Ok(p) => p,
        Err(e) => panic!("canonical form {canon:?} does not parse: {e}"),
    };
    assert_eq!(again.canonical(), canon, "canonical is not a fixed point");
    let mut before = pairs.clone();
    before.sort_by(|a, b| a.0.cmp(b.0)); // stable: per-key order kept
    let after: Vec<(&str, &str)> = again.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(before, after, "the canonical form changed the parameters");
    assert_eq!(params.is_empty(), canon.is_empty());

    // One value per name.
    for (k, v) in &pairs {
        let count = pairs.iter().filter(|(key, _)| key == k).count();
        if k.ends_with("[]") {
            continue;
        }
        assert_eq!(count, 1, "{k:?} is given {count} times");
        assert_eq!(params.get(k), Some(*v));
    }
    let raw = String::from_utf8_lossy(data);
    let _ = params.get(&raw);

    // Lists are dense.
    let mut prefixes: Vec<&str> = pairs.iter().map(|(k, _)| k.split('[').next().unwrap_or(k)).collect();
    prefixes.extend(["line_items", "", "expand", raw.as_ref()]);
    for prefix in prefixes {
        let Ok(indices) = params.array_indices(prefix) else { continue };
        assert!(
            indices.iter().enumerate().all(|(i, n)| *n as usize == i),
            "array_indices({prefix:?}) = {indices:?} is not 0..n"
        );
    }
});
