//! Turning the filter's price into US dollars: the operator's FX table for
//! other currencies, and the recorded amounts of objects created earlier
//! through the gateway for calls that name an object instead of an amount.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use keybrake_core::currency::Currency;
use keybrake_core::money::{to_usd_micros, UsdMicros, UsdRate};
use serde::Deserialize;
use serde_json::Number;

use crate::denial::Denial;
use crate::model::{invalid, FxRate, Invalid};
use crate::store::{Ledger, StoreResult};
use crate::wire::{price::Kind, Price};

/// A decimal from JSON, as its exact text: a number (kept exact, never
/// through a float) or a string holding one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecimalText(pub String);

impl<'de> Deserialize<'de> for DecimalText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<DecimalText, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(n) => Ok(DecimalText(n.to_string())),
            serde_json::Value::String(s) => Ok(DecimalText(s)),
            other => Err(serde::de::Error::custom(format!("expected a decimal number, got {other}"))),
        }
    }
}

/// A USD amount as an exact JSON number (`32.99`, never a float).
pub fn usd_number(v: UsdMicros) -> Number {
    let text = v.to_string();
    Number::from_str(text.trim_start_matches('$').trim_start_matches("-$")).unwrap_or_else(|_| Number::from(0))
}

/// `{"as_of": "2026-11-26", "rates": {"jpy": "0.0067", "eur": 1.08}}`
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRates {
    /// The date the rates hold for, YYYY-MM-DD.
    #[schema(example = "2026-11-26")]
    pub as_of: String,
    /// USD per one unit of each currency (lower-case ISO 4217 code), a positive decimal.
    #[schema(value_type = std::collections::HashMap<String, f64>)]
    pub rates: BTreeMap<String, DecimalText>,
}

impl SetRates {
    /// Validates the rates: known-shaped codes, positive decimal rates, a date.
    pub fn validate(&self) -> Result<Vec<FxRate>, Invalid> {
        if chrono::NaiveDate::parse_from_str(&self.as_of, "%Y-%m-%d").is_err() {
            return Err(invalid("as_of", "as_of must be a date, YYYY-MM-DD"));
        }
        if self.rates.is_empty() {
            return Err(invalid("rates", "rates must not be empty"));
        }
        let mut out = Vec::new();
        for (code, rate) in &self.rates {
            let currency = Currency::parse(code).map_err(|e| invalid("rates", e.to_string()))?;
            if currency.is_usd() {
                return Err(invalid("rates", "usd is always 1 and cannot be set"));
            }
            let parsed = UsdRate::parse(&rate.0).map_err(|e| {
                invalid("rates", format!("rate for {currency}: {e} (USD per one {currency}, a positive decimal)"))
            })?;
            out.push(FxRate {
                currency: currency.to_string(),
                usd_per_unit: parsed.to_decimal_string(),
                as_of: self.as_of.clone(),
            });
        }
        Ok(out)
    }
}

/// Reads an FX rates file (the same JSON as `PUT /admin/fx_rates`), as loaded at start.
pub fn parse_rates_file(bytes: &[u8]) -> Result<Vec<FxRate>, Invalid> {
    let request: SetRates =
        serde_json::from_slice(bytes).map_err(|e| invalid("body", format!("not an FX rates document: {e}")))?;
    request.validate()
}

/// FX rates by lower-case currency code.
pub type FxTable = HashMap<String, FxRate>;

/// What the filter priced a call at, as the control service reasons about
/// it: converted from the wire's `Price` at the gRPC edge (`TryFrom`), so
/// nothing past it sees wire types or magic strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quote {
    /// Moves no money.
    Free,
    /// `minor` units of a currency given in the call, or of the object's.
    Amount { minor: i64, currency: QuoteCurrency, basis: String, payout: bool },
    /// The recorded amount of an object created through the gateway.
    ObjectAmount { object_id: String, basis: String },
    /// Moves money, but the call does not say how much.
    Unpriced { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuoteCurrency {
    Given(String),
    OfObject(String),
}

impl TryFrom<Price> for Quote {
    type Error = Denial;

    fn try_from(p: Price) -> Result<Quote, Denial> {
        let kind = Kind::try_from(p.kind).unwrap_or(Kind::Unspecified);
        let currency = || {
            if p.currency.is_empty() {
                Ok(QuoteCurrency::OfObject(p.object_id.clone()))
            } else {
                Currency::parse(&p.currency)
                    .map(|c| QuoteCurrency::Given(c.as_str().to_owned()))
                    .map_err(|e| Denial::CurrencyInvalid(e.0))
            }
        };
        match kind {
            Kind::Free => Ok(Quote::Free),
            Kind::Amount if p.amount_minor < 0 => Err(Denial::BadRequest("negative amount".into())),
            Kind::Amount => {
                Ok(Quote::Amount { minor: p.amount_minor, currency: currency()?, basis: p.basis, payout: p.payout })
            }
            Kind::ObjectAmount => Ok(Quote::ObjectAmount { object_id: p.object_id, basis: p.basis }),
            Kind::Unpriced => Ok(Quote::Unpriced { reason: p.basis }),
            Kind::Unspecified => Err(Denial::BadRequest("the call carries no price".into())),
        }
    }
}

/// A priced call, in USD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Moves no money.
    Free,
    /// What the call moves, in USD and in its own currency.
    Priced { usd: UsdMicros, minor: i64, currency: String, basis: String },
    /// Moves money of an unknown amount.
    Unpriced { reason: String },
}

impl Resolved {
    pub fn usd(&self) -> UsdMicros {
        match self {
            Resolved::Priced { usd, .. } => *usd,
            Resolved::Free | Resolved::Unpriced { .. } => UsdMicros(0),
        }
    }
}

/// Prices a call in USD; `Err(Denial)` for a currency without a rate.
pub fn resolve(ledger: &mut dyn Ledger, quote: &Quote, fx: &FxTable) -> StoreResult<Result<Resolved, Denial>> {
    let (minor, currency, basis, payout) = match quote {
        Quote::Free => return Ok(Ok(Resolved::Free)),
        Quote::Unpriced { reason } => return Ok(Ok(Resolved::Unpriced { reason: reason.clone() })),
        Quote::Amount { minor, currency: QuoteCurrency::Given(c), basis, payout } => {
            (*minor, c.clone(), basis.clone(), *payout)
        }
        Quote::Amount { minor, currency: QuoteCurrency::OfObject(object_id), basis, payout } => {
            match ledger.object(object_id)? {
                Some(o) => (*minor, o.currency, format!("{basis} in the currency of {object_id}"), *payout),
                None => return Ok(Ok(unknown_object(object_id, "currency"))),
            }
        }
        Quote::ObjectAmount { object_id, .. } => match ledger.object(object_id)? {
            Some(o) => (o.amount_minor, o.currency, format!("recorded amount of {object_id}"), false),
            None => return Ok(Ok(unknown_object(object_id, "amount"))),
        },
    };
    Ok(to_usd(minor, &currency, payout, fx).map(|usd| Resolved::Priced { usd, minor, currency, basis }))
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
    fn a_wire_price_becomes_a_quote_at_the_edge() {
        let wire = |kind: Kind, minor: i64, currency: &str| Price {
            kind: kind as i32,
            amount_minor: minor,
            currency: currency.into(),
            basis: "amount".into(),
            ..Default::default()
        };
        assert_eq!(Quote::try_from(wire(Kind::Free, 0, "")), Ok(Quote::Free));
        assert_eq!(
            Quote::try_from(wire(Kind::Amount, 100, "USD")),
            Ok(Quote::Amount {
                minor: 100,
                currency: QuoteCurrency::Given("usd".into()),
                basis: "amount".into(),
                payout: false
            })
        );
        assert!(matches!(Quote::try_from(wire(Kind::Amount, -1, "usd")), Err(Denial::BadRequest(_))));
        assert!(matches!(Quote::try_from(wire(Kind::Amount, 1, "u$d")), Err(Denial::CurrencyInvalid(_))));
        assert!(matches!(Quote::try_from(wire(Kind::Unspecified, 1, "usd")), Err(Denial::BadRequest(_))));
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
