//! Turning the filter's price into US dollars: the operator's FX table for
//! other currencies, and the recorded amounts of objects created earlier
//! through the gateway for calls that name an object instead of an amount.

use std::collections::HashMap;

use keybrake_core::currency::Currency;
use keybrake_core::money::{to_usd_micros, UsdMicros, UsdRate};

use crate::denial::Denial;
use crate::model::FxRate;
use crate::store::{Ledger, StoreResult};
use crate::wire::{price::Kind, Price};

/// FX rates by lower-case currency code.
pub type FxTable = HashMap<String, FxRate>;

/// A priced call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// What the call moves, in USD and in its own currency.
    Priced { usd: UsdMicros, minor: i64, currency: String, basis: String },
    /// Moves money of an unknown amount.
    Unpriced { reason: String },
}

impl Resolved {
    pub fn usd(&self) -> UsdMicros {
        match self {
            Resolved::Priced { usd, .. } => *usd,
            Resolved::Unpriced { .. } => UsdMicros(0),
        }
    }
}

/// Prices a call; `Err(Denial)` for a currency without a rate or a malformed price.
pub fn resolve(ledger: &mut dyn Ledger, price: &Price, fx: &FxTable) -> StoreResult<Result<Resolved, Denial>> {
    let kind = Kind::try_from(price.kind).unwrap_or(Kind::Unspecified);
    let (minor, currency, basis) = match kind {
        Kind::Free => {
            return Ok(Ok(Resolved::Priced {
                usd: UsdMicros(0),
                minor: 0,
                currency: String::new(),
                basis: "free".into(),
            }))
        }
        Kind::Unpriced => return Ok(Ok(Resolved::Unpriced { reason: price.basis.clone() })),
        Kind::Unspecified => return Ok(Err(Denial::BadRequest("the call carries no price".into()))),
        Kind::Amount if !price.currency.is_empty() => (price.amount_minor, price.currency.clone(), price.basis.clone()),
        Kind::Amount => match ledger.object(&price.object_id)? {
            Some(o) => {
                (price.amount_minor, o.currency, format!("{} in the currency of {}", price.basis, price.object_id))
            }
            None => return Ok(Ok(unknown_object(&price.object_id, "currency"))),
        },
        Kind::ObjectAmount => match ledger.object(&price.object_id)? {
            Some(o) => (o.amount_minor, o.currency, format!("recorded amount of {}", price.object_id)),
            None => return Ok(Ok(unknown_object(&price.object_id, "amount"))),
        },
    };
    Ok(to_usd(minor, &currency, price.payout, fx).map(|usd| Resolved::Priced { usd, minor, currency, basis }))
}

fn unknown_object(object_id: &str, what: &str) -> Resolved {
    Resolved::Unpriced { reason: format!("the {what} of {object_id} is unknown: it was not created through Keybrake") }
}

/// Converts an amount in a currency's minor unit to USD, rounding up.
pub fn to_usd(minor: i64, currency: &str, payout: bool, fx: &FxTable) -> Result<UsdMicros, Denial> {
    if minor < 0 {
        return Err(Denial::BadRequest("negative amount".into()));
    }
    let currency = Currency::parse(currency).map_err(|e| Denial::CurrencyInvalid(e.0))?;
    let rate = if currency.is_usd() {
        UsdRate(1_000_000_000_000)
    } else {
        let text = fx.get(currency.as_str()).map(|r| r.usd_per_unit.as_str());
        let text = text.ok_or_else(|| Denial::CurrencyWithoutRate(currency.to_string()))?;
        UsdRate::parse(text).map_err(|_| Denial::CurrencyWithoutRate(currency.to_string()))?
    };
    to_usd_micros(minor, currency.api_exponent(payout), rate)
        .map_err(|_| Denial::BadRequest("the amount overflows".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fx() -> FxTable {
        [("jpy", "0.0067"), ("kwd", "3.25"), ("isk", "0.0072"), ("ugx", "0.00027")]
            .into_iter()
            .map(|(c, r)| {
                (c.to_owned(), FxRate { currency: c.into(), usd_per_unit: r.into(), as_of: "2026-11-26".into() })
            })
            .collect()
    }

    #[test]
    fn currencies_follow_stripes_minor_units() {
        assert_eq!(to_usd(2999, "usd", false, &fx()).unwrap(), UsdMicros(29_990_000));
        // 1,000 JPY (zero-decimal) at 0.0067 = $6.70
        assert_eq!(to_usd(1000, "jpy", false, &fx()).unwrap(), UsdMicros(6_700_000));
        // 1.500 KWD (three-decimal) at 3.25 = $4.875
        assert_eq!(to_usd(1500, "kwd", false, &fx()).unwrap(), UsdMicros(4_875_000));
        // ISK is two-decimal in Stripe's API: amount 50000 is 500 ISK = $3.60
        assert_eq!(to_usd(50_000, "isk", false, &fx()).unwrap(), UsdMicros(3_600_000));
        // UGX: zero-decimal for charges, two-decimal for payouts.
        assert_eq!(to_usd(10_000, "ugx", false, &fx()).unwrap(), UsdMicros(2_700_000));
        assert_eq!(to_usd(10_000, "ugx", true, &fx()).unwrap(), UsdMicros(27_000));
        assert_eq!(to_usd(1, "eur", false, &fx()), Err(Denial::CurrencyWithoutRate("eur".into())));
        assert!(matches!(to_usd(1, "e$r", false, &fx()), Err(Denial::CurrencyInvalid(_))));
    }
}
