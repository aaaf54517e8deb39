//! The filter's plugin configuration (`keybrake_filter::config::FilterConfig::parse`):
//! any bytes, as Envoy hands the wasm `PluginConfig.configuration` to the VM.
//! A panic here is a VM that never starts.
//!
//! Properties:
//! - `parse` never panics.
//! - An accepted configuration is valid: a control cluster, at least one
//!   route, each prefix `/name` (no trailing `/`), or empty with API roots
//!   `/name`, for vendor `stripe`, every limit inside its documented range.
//! - `route_for` never panics; a path under a configured prefix (or root)
//!   finds a route, and the rest it returns is the path after that route's prefix.
#![forbid(unsafe_code)]
#![no_main]

use keybrake_filter::config::FilterConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(c) = FilterConfig::parse(data) else {
        return;
    };
    assert!(!c.control_cluster.is_empty());
    assert!(!c.routes.is_empty());
    let well_formed = |p: &str| p.starts_with('/') && !p.ends_with('/') && p.len() >= 2;
    for r in &c.routes {
        if r.prefix.is_empty() {
            assert!(!r.roots.is_empty() && r.roots.iter().all(|root| well_formed(root)));
        } else {
            assert!(well_formed(&r.prefix) && r.roots.is_empty());
        }
        assert_eq!(r.vendor, "stripe");
    }
    assert!((1..=60_000).contains(&c.authorize_timeout_ms));
    assert!((1..=60_000).contains(&c.settle_timeout_ms));
    assert!((1..=60_000).contains(&c.audit_flush_interval_ms));
    assert!((1..=16 << 20).contains(&c.max_request_body_bytes));
    assert!(c.max_response_body_bytes <= 16 << 20);
    assert!((1..=10_000).contains(&c.audit_batch_size));
    assert!((1..=10_000_000).contains(&c.audit_queue_limit));

    for r in &c.routes {
        let bases: Vec<String> = if r.prefix.is_empty() { r.roots.clone() } else { vec![r.prefix.clone()] };
        for path in bases.iter().flat_map(|b| ["/v1/charges", "/", "//x"].map(|s| format!("{b}{s}"))) {
            let Some((found, rest)) = c.route_for(&path) else {
                panic!("{path:?} finds no route");
            };
            assert!(rest.starts_with('/'));
            assert_eq!(format!("{}{rest}", found.prefix), path);
        }
        // The bare prefix is not under it.
        let bare = r.prefix.as_str();
        if let Some((found, _)) = c.route_for(bare) {
            assert_ne!(found.prefix, bare);
        }
    }
    let _ = c.route_for(&String::from_utf8_lossy(data));
});
