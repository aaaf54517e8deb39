//! The contract's message types (generated from `proto/keybrake.proto`) and
//! conversions between them and the domain types of `keybrake-core`.

/// prost's output, linted by its authors, not here.
#[allow(clippy::all, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/keybrake.v1.rs"));
}

pub use generated::*;

use keybrake_core::pricing::{self, CurrencySource};
use keybrake_core::stripe_error::{ErrorType, StripeError};

impl From<&pricing::Price> for Price {
    fn from(p: &pricing::Price) -> Price {
        match p {
            pricing::Price::Free => Price { kind: price::Kind::Free as i32, ..Default::default() },
            pricing::Price::Amount { minor, currency, basis, payout } => {
                let (currency, object_id) = match currency {
                    CurrencySource::Given(c) => (c.as_str().to_owned(), String::new()),
                    CurrencySource::OfObject(o) => (String::new(), o.clone()),
                };
                Price {
                    kind: price::Kind::Amount as i32,
                    amount_minor: *minor,
                    currency,
                    basis: (*basis).to_owned(),
                    payout: *payout,
                    object_id,
                }
            }
            pricing::Price::ObjectAmount { object_id, basis } => Price {
                kind: price::Kind::ObjectAmount as i32,
                basis: (*basis).to_owned(),
                object_id: object_id.clone(),
                ..Default::default()
            },
            pricing::Price::Unpriced { reason } => {
                Price { kind: price::Kind::Unpriced as i32, basis: (*reason).to_owned(), ..Default::default() }
            }
        }
    }
}

impl From<&Deny> for StripeError {
    fn from(d: &Deny) -> StripeError {
        let status = u16::try_from(d.http_status).ok().filter(|s| (400..600).contains(s)).unwrap_or(403);
        let mut e = StripeError::new(status, ErrorType::parse(&d.error_type), &d.code, d.message.clone());
        if !d.param.is_empty() {
            e.param = Some(d.param.clone());
        }
        match d.should_retry.as_str() {
            "true" => e.should_retry = Some(true),
            "false" => e.should_retry = Some(false),
            _ => {}
        }
        e
    }
}
