//! Money without floats: USD amounts are integer micro-dollars, currency
//! amounts are integer minor units, FX rates are integer pico-dollars per
//! major unit. Conversions round up, so a cap check errs on the safe side.

use std::fmt;

/// Micro-dollars per dollar.
pub const MICROS_PER_USD: i64 = 1_000_000;

/// An amount in US dollars, as integer micro-dollars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UsdMicros(pub i64);

/// Why a decimal amount or rate is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("{0:?} is not a decimal number")]
    NotDecimal(String),
    #[error("{0:?} has more than {1} decimal places")]
    TooPrecise(String, u32),
    #[error("{0:?} must not be negative")]
    Negative(String),
    #[error("{0:?} is too large")]
    TooLarge(String),
    #[error("the amount overflows")]
    Overflow,
}

impl UsdMicros {
    /// Parses a non-negative decimal string such as `"32.99"` (at most six decimals).
    pub fn parse_decimal(text: &str) -> Result<UsdMicros, MoneyError> {
        let micros = parse_fixed(text, 6)?;
        i64::try_from(micros).map(UsdMicros).map_err(|_| MoneyError::TooLarge(text.to_owned()))
    }

    pub fn checked_add(self, other: UsdMicros) -> Option<UsdMicros> {
        self.0.checked_add(other.0).map(UsdMicros)
    }
}

impl fmt::Display for UsdMicros {
    /// `$1,234.56` style without separators: `$1234.56`; sub-cent amounts keep their digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let dollars = abs / 1_000_000;
        let frac = abs % 1_000_000;
        if frac.is_multiple_of(10_000) {
            write!(f, "{sign}${dollars}.{:02}", frac / 10_000)
        } else {
            let digits = format!("{frac:06}");
            write!(f, "{sign}${dollars}.{}", digits.trim_end_matches('0'))
        }
    }
}

/// Parses a non-negative decimal with at most `scale` fraction digits into an
/// integer scaled by 10^scale. Accepts `12`, `12.5`, `0.000001`; refuses signs,
/// exponents, spaces and empty parts.
pub fn parse_fixed(text: &str, scale: u32) -> Result<i128, MoneyError> {
    let err = || MoneyError::NotDecimal(text.to_owned());
    if text.starts_with('-') {
        return Err(MoneyError::Negative(text.to_owned()));
    }
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, f),
        None => (text, ""),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    if text.contains('.') && frac.is_empty() {
        return Err(err());
    }
    if frac.len() > scale as usize {
        return Err(MoneyError::TooPrecise(text.to_owned(), scale));
    }
    if int.trim_start_matches('0').len() > 18 {
        return Err(MoneyError::TooLarge(text.to_owned()));
    }
    let mut value: i128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        value = value * 10 + i128::from(b - b'0');
    }
    let pad = scale - frac.len() as u32;
    Ok(value * 10i128.pow(pad))
}

/// An exchange rate: US dollars per one major unit of a currency, in pico-dollars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsdRate(pub i128);

impl UsdRate {
    /// Parses `"0.0067"` (USD per unit, at most 12 decimals, must be positive).
    pub fn parse(text: &str) -> Result<UsdRate, MoneyError> {
        let pico = parse_fixed(text, 12)?;
        if pico == 0 {
            return Err(MoneyError::NotDecimal(text.to_owned()));
        }
        Ok(UsdRate(pico))
    }

    /// The rate as the decimal text it was given (canonical form).
    pub fn to_decimal_string(self) -> String {
        let int = self.0 / 1_000_000_000_000;
        let frac = self.0 % 1_000_000_000_000;
        if frac == 0 {
            format!("{int}")
        } else {
            format!("{int}.{}", format!("{frac:012}").trim_end_matches('0'))
        }
    }
}

/// Converts `minor` units of a currency whose minor unit is 10^-`exponent` to
/// micro-dollars at `rate`, rounding up.
pub fn to_usd_micros(minor: i64, exponent: u32, rate: UsdRate) -> Result<UsdMicros, MoneyError> {
    if minor < 0 {
        return Err(MoneyError::Negative(minor.to_string()));
    }
    let num = i128::from(minor).checked_mul(rate.0).ok_or(MoneyError::Overflow)?;
    // pico-dollars -> micro-dollars is /10^6; minor -> major is /10^exponent.
    let den = 10i128.checked_pow(6 + exponent).ok_or(MoneyError::Overflow)?;
    // Rounds up without `num + den - 1`, which overflows near i128::MAX.
    let micros = num / den + i128::from(num % den != 0);
    i64::try_from(micros).map(UsdMicros).map_err(|_| MoneyError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(not(target_arch = "wasm32"))]
    use proptest::prelude::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn parses_caps_exactly() {
        assert_eq!(UsdMicros::parse_decimal("32.99").unwrap(), UsdMicros(32_990_000));
        assert_eq!(UsdMicros::parse_decimal("1000").unwrap(), UsdMicros(1_000_000_000));
        assert_eq!(UsdMicros::parse_decimal("0.000001").unwrap(), UsdMicros(1));
        assert!(matches!(UsdMicros::parse_decimal("-1"), Err(MoneyError::Negative(_))));
        assert!(matches!(UsdMicros::parse_decimal("1e3"), Err(MoneyError::NotDecimal(_))));
        assert!(matches!(UsdMicros::parse_decimal("1."), Err(MoneyError::NotDecimal(_))));
        assert!(matches!(UsdMicros::parse_decimal(".5"), Err(MoneyError::NotDecimal(_))));
        assert!(matches!(UsdMicros::parse_decimal("0.0000001"), Err(MoneyError::TooPrecise(_, 6))));
        assert!(matches!(UsdMicros::parse_decimal("99999999999999999999"), Err(MoneyError::TooLarge(_))));
    }

    #[test]
    fn formats_dollars() {
        assert_eq!(UsdMicros(32_990_000).to_string(), "$32.99");
        assert_eq!(UsdMicros(0).to_string(), "$0.00");
        assert_eq!(UsdMicros(1_000_000_000).to_string(), "$1000.00");
        assert_eq!(UsdMicros(1_234_567).to_string(), "$1.234567");
    }

    #[test]
    fn converts_and_rounds_up() {
        let usd = UsdRate::parse("1").unwrap();
        assert_eq!(to_usd_micros(2999, 2, usd).unwrap(), UsdMicros(29_990_000));
        let jpy = UsdRate::parse("0.0067").unwrap();
        // 1000 JPY * 0.0067 = 6.70 USD
        assert_eq!(to_usd_micros(1000, 0, jpy).unwrap(), UsdMicros(6_700_000));
        let third = UsdRate::parse("0.333333333333").unwrap();
        // 1 unit at 0.333333333333 USD = 333333.333333 micros -> rounds up
        assert_eq!(to_usd_micros(100, 2, third).unwrap(), UsdMicros(333_334));
        assert_eq!(UsdRate::parse("0.0067").unwrap().to_decimal_string(), "0.0067");
        assert!(UsdRate::parse("0").is_err());
    }

    #[test]
    fn huge_amounts_overflow_cleanly() {
        assert_eq!(to_usd_micros(i64::MAX, 0, UsdRate(i128::MAX / i128::from(i64::MAX))), Err(MoneyError::Overflow));
        assert!(to_usd_micros(i64::MAX, 3, UsdRate(1)).is_ok());
    }

    #[cfg(not(target_arch = "wasm32"))]
    proptest! {
        #[test]
        fn conversion_is_monotone(a in 0i64..10_000_000_000, b in 0i64..10_000_000_000, exp in 0u32..4, rate in 1i128..10_000_000_000_000) {
            let r = UsdRate(rate);
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(to_usd_micros(lo, exp, r).unwrap() <= to_usd_micros(hi, exp, r).unwrap());
        }

        #[test]
        fn decimal_parse_never_panics(s in ".{0,30}") {
            let _ = UsdMicros::parse_decimal(&s);
            let _ = UsdRate::parse(&s);
        }
    }
}
