//! The control service's admin request parsing: `POST /admin/vault_keys`
//! bodies (`keybrake_control::issuing::CreateKey`, serde_json then `validate`)
//! and the FX rates file (`keybrake_control::usd::parse_rates_file`, the same
//! shape as `PUT /admin/fx_rates`). Every input goes through both.
//!
//! Properties:
//! - Nothing panics.
//! - A validated key request is what the API documents: a trimmed printable
//!   label of 1 to 200 bytes, 1 to 64 distinct scopes that print and reparse
//!   as themselves, a lifetime of 1 s to 30 days, a dedup window of 1 s to
//!   7 days, caps of at most $1e9 that the API shows back as the same
//!   decimal, `acct_` account ids.
//! - Accepted FX rates are lower-case three-letter codes other than `usd`,
//!   with positive rates in canonical decimal text.
#![forbid(unsafe_code)]
#![no_main]

use std::str::FromStr;

use keybrake_control::usd::{parse_rates_file, usd_number};
use keybrake_control::issuing::{CreateKey, MAX_DEDUP_WINDOW_SECS, MAX_TTL_SECS};
use keybrake_core::money::{UsdMicros, UsdRate};
use keybrake_core::scope::Scope;
use libfuzzer_sys::fuzz_target;

fn check_cap(cap: Option<UsdMicros>) {
    if let Some(v) = cap {
        assert!((0..=1_000_000_000 * 1_000_000).contains(&v.0));
        let shown = usd_number(v).to_string();
        assert_eq!(UsdMicros::parse_decimal(&shown), Ok(v), "{v:?} shows as {shown}");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<CreateKey>(data) {
        if let Ok(k) = request.validate() {
            assert_eq!(k.label, k.label.trim());
            assert!((1..=200).contains(&k.label.len()));
            assert!(!k.label.chars().any(char::is_control));
            assert!((1..=64).contains(&k.scopes.len()));
            for (i, s) in k.scopes.iter().enumerate() {
                let shown = s.to_string();
                assert_eq!(Scope::from_str(&shown).as_ref(), Ok(s));
                assert!(!k.scopes[..i].contains(s), "scope {shown} listed twice");
                assert!(k.vendor.check_scope(s).is_ok());
            }
            assert!((1..=MAX_TTL_SECS).contains(&k.ttl_secs));
            assert!((1..=MAX_DEDUP_WINDOW_SECS).contains(&k.dedup_window_secs));
            check_cap(k.daily_cap);
            check_cap(k.max_per_call);
            for a in &k.allowed_accounts {
                assert!(a.starts_with("acct_") && a.len() <= 255);
            }
        }
    }

    if let Ok(rates) = parse_rates_file(data) {
        assert!(!rates.is_empty());
        for r in &rates {
            assert_eq!(r.currency.len(), 3);
            assert!(r.currency.bytes().all(|b| b.is_ascii_lowercase()));
            assert_ne!(r.currency, "usd");
            let rate = match UsdRate::parse(&r.usd_per_unit) {
                Ok(rate) => rate,
                Err(e) => panic!("stored rate {:?} does not parse: {e}", r.usd_per_unit),
            };
            assert_eq!(rate.to_decimal_string(), r.usd_per_unit);
        }
    }
});
