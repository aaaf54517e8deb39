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

impl Deny {
    /// The typed code, if this filter knows it.
    pub fn denial_code(&self) -> Option<keybrake_core::denial::DenialCode> {
        keybrake_core::denial::DenialCode::from_wire(self.code)
    }

    /// The refusal as the client sees it: Stripe's shape, from the typed code.
    /// A code this filter does not know (a newer control service) is still a
    /// refusal, rendered as one that may be retried.
    pub fn to_stripe_error(&self) -> StripeError {
        let param = (!self.param.is_empty()).then(|| self.param.clone());
        match self.denial_code() {
            Some(code) => code.render(&self.message, param),
            None => StripeError::new(403, ErrorType::ApiError, "keybrake_refused", self.message.clone())
                .with_param(param)
                .with_should_retry(false),
        }
    }
}

/// Redacted: the upstream credential never reaches a log through `{:?}`.
impl std::fmt::Debug for Allow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allow")
            .field("upstream_authorization", &"<redacted>")
            .field("forwarded_idempotency_key", &self.forwarded_idempotency_key)
            .field("call_id", &self.call_id)
            .field("settle", &self.settle)
            .finish()
    }
}
