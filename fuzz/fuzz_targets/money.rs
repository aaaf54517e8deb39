//! Money without floats (`keybrake_core::money`) and currencies. Input: the
//! first byte picks how the rest is read:
//! - `t` + text lines: every line through `UsdMicros::parse_decimal`,
//!   `UsdRate::parse` and `Currency::parse`;
//! - anything else: 8 bytes of amount, 1 byte of exponent, then a rate's text
//!   (`to_usd_micros` with a parsed rate), and the same amount against rates
//!   chosen near the edge of `i128`, where rounding up could overflow.
//!
//! Properties:
//! - No parser and no conversion panics (debug assertions, hence overflow
//!   checks, are on in fuzz builds).
//! - Parsed values print back to themselves: `UsdMicros`'s `Display` and
//!   `UsdRate::to_decimal_string` reparse to the same value.
//! - `to_usd_micros` rounds up exactly (`usd * 10^(6+e) >= minor * rate`,
//!   within one micro-dollar) and is monotone in the amount.
#![forbid(unsafe_code)]
#![no_main]

use keybrake_core::currency::Currency;
use keybrake_core::money::{to_usd_micros, UsdMicros, UsdRate};
use libfuzzer_sys::fuzz_target;

/// The exponents Stripe's currencies have (`Currency::api_exponent`).
const EXPONENTS: [u32; 4] = [0, 2, 3, 2];

fn check_text(text: &str) {
    if let Ok(v) = UsdMicros::parse_decimal(text) {
        assert!(v.0 >= 0);
        let shown = v.to_string();
        let digits = shown.strip_prefix('$').unwrap_or(&shown);
        assert_eq!(UsdMicros::parse_decimal(digits), Ok(v), "{text:?} shows as {shown:?}");
    }
    if let Ok(r) = UsdRate::parse(text) {
        assert!(r.0 > 0);
        let canon = r.to_decimal_string();
        assert_eq!(UsdRate::parse(&canon), Ok(r), "{text:?} prints as {canon:?}");
        for e in EXPONENTS {
            check_conversion(1, e, r);
            check_conversion(999_999_999_999_999, e, r);
        }
    }
    if let Ok(c) = Currency::parse(text) {
        assert_eq!(c.as_str(), text.to_ascii_lowercase());
        assert!([0, 2, 3].contains(&c.api_exponent(false)));
        assert!([0, 2, 3].contains(&c.api_exponent(true)));
    }
}

fn check_conversion(minor: i64, exponent: u32, rate: UsdRate) {
    let result = to_usd_micros(minor, exponent, rate);
    if minor < 0 {
        assert!(result.is_err());
        return;
    }
    let Ok(usd) = result else { return };
    let exact = i128::from(minor) * rate.0; // fits: to_usd_micros checked it
    let den = 10i128.pow(6 + exponent);
    let scaled = i128::from(usd.0) * den;
    assert!(scaled >= exact, "rounded down: {minor} at {rate:?} -> {usd:?}");
    assert!(scaled - exact < den, "rounded up too far: {minor} at {rate:?} -> {usd:?}");
    if minor > 0 {
        if let Ok(less) = to_usd_micros(minor - 1, exponent, rate) {
            assert!(less <= usd, "not monotone at {minor} ({rate:?})");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((b't', rest)) => {
            for line in String::from_utf8_lossy(rest).lines() {
                check_text(line);
            }
        }
        Some((_, rest)) if rest.len() >= 9 => {
            let mut amount = [0u8; 8];
            amount.copy_from_slice(&rest[..8]);
            let minor = i64::from_le_bytes(amount);
            let exponent = EXPONENTS[usize::from(rest[8] % 4)];
            let text = String::from_utf8_lossy(&rest[9..]);
            check_text(&text);
            if let Ok(rate) = UsdRate::parse(&text) {
                check_conversion(minor, exponent, rate);
            }
            // Rates that UsdRate::parse can produce (up to 18 integer digits and
            // 12 decimals) that put minor * rate just below i128::MAX.
            if minor > 0 {
                let max_rate = 10i128.pow(30) - 1;
                let near = i128::MAX / i128::from(minor);
                let small = i128::from(rest[8]);
                for pico in [near, near - small, max_rate, max_rate - small] {
                    if (1..=max_rate).contains(&pico) {
                        // An operator can set this rate: it is valid FX-file text.
                        let text = UsdRate(pico).to_decimal_string();
                        assert_eq!(UsdRate::parse(&text), Ok(UsdRate(pico)));
                        check_conversion(minor, exponent, UsdRate(pico));
                    }
                }
            }
        }
        _ => {}
    }
});
