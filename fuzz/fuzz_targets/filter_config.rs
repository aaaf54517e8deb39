//! The filter's plugin configuration (`keybrake_filter::config::FilterConfig::parse`):
//! any bytes, as Envoy hands the wasm `PluginConfig.configuration` to the VM.
//! A panic here is a VM that never starts.
//!
//! Properties:
//! - `parse` never panics.
//! - An accepted configuration is valid: a control cluster, at least one
//!   route, each prefix `/name` (no trailing `/`) for vendor `stripe`, every
//!   limit inside its documented range.
//! - `route_for` never panics; a path under a configured prefix finds a
//!   route, and the rest it returns is the path after that route's prefix.
#![no_main]

use keybrake_filter::config::FilterConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(c) = FilterConfig::parse(data) else {
        return;
    };
    assert!(!c.control_cluster.is_empty());
    assert!(!c.routes.is_empty());
    for r in &c.routes {
        assert!(r.prefix.starts_with('/') && !r.prefix.ends_with('/') && r.prefix.len() >= 2);
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
        for suffix in ["/v1/charges", "/", "//x"] {
            let path = format!("{}{suffix}", r.prefix);
            let Some((found, rest)) = c.route_for(&path) else {
                panic!("{path:?} finds no route");
            };
            assert!(rest.starts_with('/'));
            assert_eq!(format!("{}{rest}", found.prefix), path);
        }
        // The bare prefix, and a longer name sharing it, are not under it.
        let bare = r.prefix.as_str();
        if let Some((found, _)) = c.route_for(bare) {
            assert_ne!(found.prefix, bare);
        }
    }
    let _ = c.route_for(&String::from_utf8_lossy(data));
});
