//! Path normalisation (`keybrake_core::path::normalize`) and scopes
//! (`keybrake_core::scope`). Input: `SCOPE\nREQUEST-TARGET` (text; invalid
//! UTF-8 is replaced, as the filter only ever sees header strings).
//!
//! Properties:
//! - `normalize` never panics; its path starts with `/`, has no empty, `.`
//!   or `..` segment and no trailing slash (except `/`).
//! - It is idempotent: `normalize(t.path) == (t.path, no query)`, and what is
//!   forwarded upstream (`t.to_request_target()`) normalises to `t` again, so
//!   the path the scope check saw is the path the upstream reads.
//! - `Scope::from_str` never panics; its `Display` round-trips.
//! - A scope matches only its own method, and only normalised paths without
//!   `..`, even when handed raw text: what it matches starts with `/` and has
//!   no empty, `.` or `..` segment (`*` included); a scope without `*`
//!   matches exactly its own path.
#![forbid(unsafe_code)]
#![no_main]

#[path = "common.rs"]
mod common;

use std::str::FromStr;

use keybrake_core::path::{normalize, Target};
use keybrake_core::scope::{Method, Scope};
use libfuzzer_sys::fuzz_target;

const METHODS: [Method; 3] = [Method::Get, Method::Post, Method::Delete];

fn check_target(raw: &str, t: &Target) {
    assert!(t.path.starts_with('/'), "{raw:?} -> {t:?}");
    if t.path != "/" {
        assert!(!t.path.ends_with('/'), "{raw:?} -> {t:?}");
        for seg in t.path.split('/').skip(1) {
            assert!(!seg.is_empty() && seg != "." && seg != "..", "{raw:?} -> {t:?} has segment {seg:?}");
        }
    }
    // Idempotent on the path alone.
    assert_eq!(
        normalize(&t.path),
        Ok(Target { path: t.path.clone(), query: None }),
        "normalize is not idempotent: {raw:?} -> {:?}",
        t.path
    );
    // What goes upstream reads as what was checked.
    let forwarded = t.to_request_target();
    assert_eq!(
        normalize(&forwarded).as_ref(),
        Ok(t),
        "forwarded target {forwarded:?} (from {raw:?}) reads differently upstream"
    );
}

fn check_scope(scope_text: &str, scope: &Scope, raw: &str) {
    // Display round trip (and it is canonical: printing again is stable).
    let shown = scope.to_string();
    assert_eq!(
        Scope::from_str(&shown).as_ref(),
        Ok(scope),
        "{scope_text:?} prints as {shown:?}, which reads differently"
    );
    let (method_text, path) = shown.split_once(' ').unwrap_or((&shown, ""));
    assert_eq!(method_text, scope.method().as_str());
    let has_wildcard = path.split('/').any(|s| s == "*");

    // The scope's own path (ids filled in) is normalised and in scope.
    let filled = path.split('/').map(|s| if s == "*" { "id_1" } else { s }).collect::<Vec<_>>().join("/");
    assert_eq!(normalize(&filled).map(|t| t.path).as_deref(), Ok(filled.as_str()));
    assert!(scope.matches(scope.method(), &filled), "{shown:?} vs {filled:?}");

    for m in METHODS {
        // Raw text handed to `matches` (the admin API does so with the raw
        // URI path): it must still match only normalised paths.
        if scope.matches(m, raw) {
            assert_eq!(m, scope.method());
            assert!(
                raw.starts_with('/') && raw.split('/').skip(1).all(|s| !s.is_empty() && s != "." && s != ".."),
                "{shown:?} matched {raw:?}, which is not a normalised path"
            );
            if !has_wildcard {
                assert_eq!(raw, path, "{shown:?} matched {raw:?}");
            }
        }
        if let Ok(t) = normalize(raw) {
            if scope.matches(m, &t.path) {
                assert_eq!(m, scope.method());
                assert!(!t.path.split('/').any(|s| s == ".."), "{raw:?} -> {t:?}");
                if !has_wildcard {
                    assert_eq!(t.path, path);
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (first, rest) = common::split_line(data);
    let scope_text = String::from_utf8_lossy(first);
    let raw = String::from_utf8_lossy(rest);

    for text in [raw.as_ref(), scope_text.as_ref()] {
        if let Ok(t) = normalize(text) {
            check_target(text, &t);
        }
        let _ = Method::parse(text);
    }

    for text in [scope_text.as_ref(), raw.as_ref()] {
        if let Ok(scope) = Scope::from_str(text) {
            check_scope(text, &scope, &raw);
        }
    }
});
