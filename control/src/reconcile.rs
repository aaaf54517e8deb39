//! The backstop behind canonical forwarding. When the upstream accepts a
//! priced call, what its answer says moved is compared with what was priced:
//! if more moved than was counted, what moved is counted, an audit row names
//! both readings, and the key is suspended at once — refused until an
//! operator reinstates or revokes it. Any parser differential nobody has
//! thought of yet shows up here, after one call.

use keybrake_core::currency::Currency;
use keybrake_core::money::{to_usd_micros, UsdMicros, UsdRate};
use keybrake_core::pricing::{self, Moved};
use keybrake_core::scope::Method;

use crate::model::CallRow;
use crate::usd::{to_usd, FxTable};

/// A call that moved more money than it was priced at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub moved_minor: i64,
    pub moved_currency: String,
    /// What it is counted at in USD: at the rate in force, or, with none for
    /// its currency, at the highest rate known (an upper bound, never a guess low).
    pub counted_usd: UsdMicros,
    pub rate_known: bool,
    /// Both readings, for the audit row and the key's suspension reason.
    pub detail: String,
}

/// Compares a committed call's answer with what was priced for it.
pub fn compare(call: &CallRow, answer: &[u8], fx: &FxTable) -> Option<Mismatch> {
    let method = Method::parse(&call.context.method)?;
    let Moved::Amount { minor, currency, field, payout } = pricing::moved(method, &call.context.path, answer) else {
        return None;
    };
    let priced_minor = call.context.amount_minor.unwrap_or(0);
    let priced_currency = call.context.currency.as_str();
    let same_currency = currency == priced_currency;
    if minor <= 0 || (same_currency && minor <= priced_minor) {
        return None;
    }
    let (counted_usd, rate_known) = match to_usd(minor, &currency, payout, fx) {
        Ok(usd) => (usd, true),
        Err(_) => (at_highest_known_rate(minor, &currency, payout, fx), false),
    };
    // In another currency than priced, what matters is the dollars reserved (at today's rate).
    if !same_currency && rate_known && counted_usd.0 <= call.amount_micros {
        return None;
    }
    let priced = if priced_currency.is_empty() {
        "nothing (no amount priced)".to_owned()
    } else {
        format!("{priced_minor} {priced_currency} ({})", call.context.price_basis)
    };
    let counted = if rate_known {
        format!("{counted_usd}")
    } else {
        format!("{counted_usd} at the highest known rate (no rate for {currency})")
    };
    Some(Mismatch {
        moved_minor: minor,
        moved_currency: currency.clone(),
        counted_usd,
        rate_known,
        detail: format!(
            "priced {priced}, reserved {}; Stripe's answer moved {minor} {currency} ({field}), counted {counted}",
            UsdMicros(call.amount_micros)
        ),
    })
}

/// `minor` units of `currency` at the highest USD rate of any currency known
/// (the FX table's and the dollar's): what a currency without a rate is
/// counted at, so the cap is never undercounted by a guess.
pub fn at_highest_known_rate(minor: i64, currency: &str, payout: bool, fx: &FxTable) -> UsdMicros {
    let exponent = Currency::parse(currency).map(|c| c.api_exponent(payout)).unwrap_or(0);
    let dollar = UsdRate(1_000_000_000_000);
    let rates = fx.values().filter_map(|r| UsdRate::parse(&r.usd_per_unit).ok()).chain([dollar]);
    rates.filter_map(|rate| to_usd_micros(minor, exponent, rate).ok()).max().unwrap_or(UsdMicros(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AuditEntry, Bucket, CallState, FxRate};

    fn call(path: &str, minor: Option<i64>, currency: &str, usd: i64) -> CallRow {
        CallRow {
            call_id: "call_1".into(),
            key_id: "key_1".into(),
            day: 1,
            amount_micros: usd,
            bucket: Bucket::Reserved,
            state: CallState::Pending,
            unpriced: false,
            created_at: 0,
            lease_expires_at: 0,
            context: AuditEntry {
                method: "POST".into(),
                path: path.into(),
                amount_minor: minor,
                currency: currency.into(),
                price_basis: "amount".into(),
                ..Default::default()
            },
        }
    }

    fn fx() -> FxTable {
        [("eur", "1.08"), ("jpy", "0.0067")]
            .into_iter()
            .map(|(c, r)| (c.into(), FxRate { currency: c.into(), usd_per_unit: r.into(), as_of: "2026-12-01".into() }))
            .collect()
    }

    #[test]
    fn moving_what_was_priced_or_less_is_no_mismatch() {
        let c = call("/v1/charges", Some(100), "usd", 1_000_000);
        assert_eq!(compare(&c, br#"{"amount":100,"currency":"usd"}"#, &fx()), None);
        assert_eq!(compare(&c, br#"{"amount":50,"currency":"usd"}"#, &fx()), None);
        assert_eq!(compare(&c, b"unreadable", &fx()), None, "an answer that cannot be read is not a finding");
        // Another currency within the dollars reserved ($1.00 reserved, EUR 0.90 = $0.972).
        assert_eq!(compare(&c, br#"{"amount":90,"currency":"eur"}"#, &fx()), None);
    }

    #[test]
    fn moving_more_is_a_mismatch_counted_at_what_moved() {
        let c = call("/v1/charges", Some(100), "usd", 1_000_000);
        let m = compare(&c, br#"{"amount":100000,"currency":"usd"}"#, &fx()).unwrap();
        assert_eq!((m.moved_minor, m.counted_usd, m.rate_known), (100_000, UsdMicros(1_000_000_000), true));
        assert!(m.detail.contains("priced 100 usd") && m.detail.contains("moved 100000 usd (amount)"), "{}", m.detail);
        let euros = compare(&c, br#"{"amount":100,"currency":"eur"}"#, &fx()).unwrap();
        assert_eq!(euros.counted_usd, UsdMicros(1_080_000));
        // An intent priced as not confirming that the upstream confirmed.
        let free = call("/v1/payment_intents", None, "", 0);
        let confirmed = br#"{"amount":500,"currency":"usd","status":"succeeded"}"#;
        assert!(compare(&free, confirmed, &fx()).unwrap().detail.contains("priced nothing"));
        let unconfirmed = br#"{"amount":500,"currency":"usd","status":"requires_confirmation"}"#;
        assert_eq!(compare(&free, unconfirmed, &fx()), None);
    }

    #[test]
    fn a_currency_without_a_rate_is_counted_at_the_highest_known_rate() {
        let c = call("/v1/charges", Some(100), "usd", 1_000_000);
        let m = compare(&c, br#"{"amount":1000,"currency":"gbp"}"#, &fx()).unwrap();
        assert!(!m.rate_known);
        assert_eq!(m.counted_usd, UsdMicros(10_800_000), "1000 minor units at EUR's 1.08, the highest rate known");
        assert_eq!(at_highest_known_rate(5, "jpy", false, &FxTable::new()), UsdMicros(5_000_000));
    }
}
