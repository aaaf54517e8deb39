//! Every reason the control service refuses a call: one typed enum, mapped to
//! Stripe's error shape in one place. Messages never carry a secret.

use keybrake_core::account::AccountError;
use keybrake_core::money::UsdMicros;
use keybrake_core::stripe_error::{ErrorType, StripeError};

use crate::model::Spend;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    KeyUnknown,
    KeyRevoked,
    KeyExpired,
    /// A call with this key moved more money than was priced (see `reconcile.rs`).
    KeySuspended,
    WrongVendor {
        key_vendor: String,
        route_vendor: String,
    },
    OutOfScope {
        method: String,
        path: String,
    },
    Account(AccountError),
    UnpricedNotAllowed {
        reason: String,
    },
    CurrencyWithoutRate(String),
    CurrencyInvalid(String),
    PerCallLimit {
        limit: UsdMicros,
        amount: UsdMicros,
    },
    CapExceeded {
        cap: UsdMicros,
        spend: Spend,
        amount: UsdMicros,
    },
    IdempotencyInUse,
    IdempotencyMismatch,
    ReplayUnavailable,
    StorageUnavailable,
    BadRequest(String),
}

impl Denial {
    /// Stable reason code: Stripe's `error.code`, the audit trail's `reason`, metrics' label.
    pub fn code(&self) -> &'static str {
        match self {
            Denial::KeyUnknown => "vault_key_unknown",
            Denial::KeyRevoked => "vault_key_revoked",
            Denial::KeyExpired => "vault_key_expired",
            Denial::KeySuspended => "vault_key_suspended",
            Denial::WrongVendor { .. } => "vault_key_wrong_vendor",
            Denial::OutOfScope { .. } => "endpoint_not_allowed",
            Denial::Account(e) if e.is_malformed() => "account_header_invalid",
            Denial::Account(_) => "account_not_allowed",
            Denial::UnpricedNotAllowed { .. } => "unpriced_call_not_allowed",
            Denial::CurrencyWithoutRate(_) => "currency_without_fx_rate",
            Denial::CurrencyInvalid(_) => "currency_invalid",
            Denial::PerCallLimit { .. } => "per_call_limit_exceeded",
            Denial::CapExceeded { .. } => "spend_cap_exceeded",
            Denial::IdempotencyInUse => "idempotency_key_in_use",
            Denial::IdempotencyMismatch => "idempotency_key_reused",
            Denial::ReplayUnavailable => "idempotency_replay_unavailable",
            Denial::StorageUnavailable => "keybrake_storage_unavailable",
            Denial::BadRequest(_) => "keybrake_bad_request",
        }
    }

    pub fn to_stripe_error(&self) -> StripeError {
        let code = self.code();
        let invalid =
            |status: u16, message: String| StripeError::new(status, ErrorType::InvalidRequestError, code, message);
        match self {
            Denial::KeyUnknown => invalid(401, "Invalid vault key provided: no such key.".into()),
            Denial::KeyRevoked => invalid(401, "This vault key has been revoked.".into()),
            Denial::KeyExpired => invalid(401, "This vault key has expired.".into()),
            Denial::KeySuspended => invalid(
                401,
                "This vault key is suspended: one of its calls moved more money than Keybrake priced. \
                 An operator must reinstate or revoke it."
                    .into(),
            )
            .with_should_retry(false),
            Denial::WrongVendor { key_vendor, route_vendor } => {
                invalid(403, format!("This vault key is for {key_vendor}, not {route_vendor}."))
            }
            Denial::OutOfScope { method, path } => {
                invalid(403, format!("This vault key does not allow {method} {path}."))
            }
            Denial::Account(e) => {
                invalid(if e.is_malformed() { 400 } else { 403 }, format!("{e}.")).with_param(Some(e.header().into()))
            }
            Denial::UnpricedNotAllowed { reason } => invalid(
                403,
                format!(
                    "This call moves money but its amount is not in the request ({reason}); a capped vault key refuses it \
                     unless created with \"allow_unpriced_calls\": true."
                ),
            ),
            Denial::CurrencyWithoutRate(c) => invalid(
                400,
                format!("No FX rate for currency '{c}': the operator has not set one, and Keybrake never guesses."),
            )
            .with_param(Some("currency".into())),
            Denial::CurrencyInvalid(c) => invalid(400, format!("Invalid currency: {c:?}.")).with_param(Some("currency".into())),
            Denial::PerCallLimit { limit, amount } => {
                invalid(429, format!("Per-call limit exceeded: this call would move {amount}; the key allows at most {limit} per call."))
                    .with_should_retry(false)
            }
            Denial::CapExceeded { cap, spend, amount } => invalid(
                429,
                format!(
                    "Spend cap exceeded: this call would move {amount}; the key's daily cap is {cap}, spent today {} \
                     (+{} reserved, {} uncertain).",
                    UsdMicros(spend.committed),
                    UsdMicros(spend.reserved),
                    UsdMicros(spend.uncertain)
                ),
            )
            .with_should_retry(false),
            Denial::IdempotencyInUse => StripeError::new(
                409,
                ErrorType::IdempotencyError,
                code,
                "There is currently another in-progress request using this idempotency key (or identical request). \
                 Retry after the first one completes.",
            ),
            Denial::IdempotencyMismatch => StripeError::new(
                400,
                ErrorType::IdempotencyError,
                code,
                "Keys for idempotent requests can only be used with the same parameters and endpoint they were first used with.",
            ),
            Denial::ReplayUnavailable => StripeError::new(
                409,
                ErrorType::IdempotencyError,
                code,
                "This request was already completed, but its response was too large to keep for a replay.",
            )
            .with_should_retry(false),
            Denial::StorageUnavailable => StripeError::new(
                503,
                ErrorType::ApiError,
                code,
                "Keybrake's storage is unavailable; the request was not sent to Stripe.",
            )
            .with_should_retry(true),
            Denial::BadRequest(m) => invalid(400, format!("Malformed gateway request: {m}.")),
        }
    }
}

impl From<&Denial> for crate::wire::Deny {
    fn from(d: &Denial) -> crate::wire::Deny {
        let e = d.to_stripe_error();
        crate::wire::Deny {
            http_status: u32::from(e.status),
            error_type: e.error_type.as_str().to_owned(),
            code: e.code,
            message: e.message,
            should_retry: e.should_retry.map(|r| r.to_string()).unwrap_or_default(),
            param: e.param.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_message_shows_cap_spent_and_amount() {
        let d = Denial::CapExceeded {
            cap: UsdMicros(32_990_000),
            spend: Spend { committed: 10_000_000, reserved: 0, uncertain: 0 },
            amount: UsdMicros(2_999_000_000),
        };
        let e = d.to_stripe_error();
        assert_eq!(e.status, 429);
        assert!(e.message.contains("Spend cap exceeded"));
        assert!(e.message.contains("$32.99") && e.message.contains("$10.00") && e.message.contains("$2999.00"));
        assert_eq!(e.should_retry, Some(false));
    }
}
