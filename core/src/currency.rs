//! Currencies as Stripe writes them, and the size of their minor unit.
//! Source: Stripe's "Supported currencies" page (zero-decimal, three-decimal
//! and special cases).

use std::fmt;

/// A lower-case three-letter ISO 4217 code, as Stripe sends it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a three-letter currency code")]
pub struct CurrencyError(pub String);

/// Stripe's zero-decimal currencies: the amount is in whole units.
const ZERO_DECIMAL: &[&str] =
    &["bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"];
/// Stripe's three-decimal currencies.
const THREE_DECIMAL: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];

impl Currency {
    /// Accepts any ASCII case; stores lower case.
    pub fn parse(text: &str) -> Result<Currency, CurrencyError> {
        if text.len() == 3 && text.bytes().all(|b| b.is_ascii_alphabetic()) {
            Ok(Currency(text.to_ascii_lowercase()))
        } else {
            Err(CurrencyError(text.chars().take(16).collect()))
        }
    }

    pub fn usd() -> Currency {
        Currency("usd".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_usd(&self) -> bool {
        self.0 == "usd"
    }

    /// Decimal places of the amount Stripe's API takes for this currency.
    ///
    /// ISK is zero-decimal in ISO but Stripe takes it as two-decimal (5 ISK is
    /// `amount=500`); UGX is zero-decimal except for payouts, which Stripe
    /// takes as two-decimal.
    pub fn api_exponent(&self, payout: bool) -> u32 {
        let code = self.0.as_str();
        if code == "isk" || (code == "ugx" && payout) {
            2
        } else if ZERO_DECIMAL.contains(&code) {
            0
        } else if THREE_DECIMAL.contains(&code) {
            3
        } else {
            2
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn exponents_follow_stripe() {
        let c = |s: &str| Currency::parse(s).unwrap();
        assert_eq!(c("USD").api_exponent(false), 2);
        assert_eq!(c("jpy").api_exponent(false), 0);
        assert_eq!(c("kwd").api_exponent(false), 3);
        assert_eq!(c("isk").api_exponent(false), 2);
        assert_eq!(c("ugx").api_exponent(false), 0);
        assert_eq!(c("ugx").api_exponent(true), 2);
        assert_eq!(c("eur").api_exponent(true), 2);
        assert!(Currency::parse("usdx").is_err());
        assert!(Currency::parse("u$d").is_err());
    }
}
