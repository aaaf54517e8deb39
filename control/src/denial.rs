//! Every reason the control service refuses a call: one typed enum, mapped to
//! Stripe's error shape in one place. Messages never carry a secret.

use keybrake_core::account::AccountError;
use keybrake_core::denial::DenialCode;
use keybrake_core::money::UsdMicros;
use keybrake_core::stripe_error::StripeError;

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
    /// The typed code: Stripe's status, error type, code and Should-Retry follow from it.
    pub fn code(&self) -> DenialCode {
        match self {
            Denial::KeyUnknown => DenialCode::VaultKeyUnknown,
            Denial::KeyRevoked => DenialCode::VaultKeyRevoked,
            Denial::KeyExpired => DenialCode::VaultKeyExpired,
            Denial::KeySuspended => DenialCode::VaultKeySuspended,
            Denial::WrongVendor { .. } => DenialCode::WrongVendor,
            Denial::OutOfScope { .. } => DenialCode::EndpointNotAllowed,
            Denial::Account(e) if e.is_malformed() => DenialCode::AccountHeaderInvalid,
            Denial::Account(_) => DenialCode::AccountNotAllowed,
            Denial::UnpricedNotAllowed { .. } => DenialCode::UnpricedCallNotAllowed,
            Denial::CurrencyWithoutRate(_) => DenialCode::CurrencyWithoutFxRate,
            Denial::CurrencyInvalid(_) => DenialCode::CurrencyInvalid,
            Denial::PerCallLimit { .. } => DenialCode::PerCallLimitExceeded,
            Denial::CapExceeded { .. } => DenialCode::SpendCapExceeded,
            Denial::IdempotencyInUse => DenialCode::IdempotencyKeyInUse,
            Denial::IdempotencyMismatch => DenialCode::IdempotencyKeyReused,
            Denial::ReplayUnavailable => DenialCode::IdempotencyReplayUnavailable,
            Denial::StorageUnavailable => DenialCode::StorageUnavailable,
            Denial::BadRequest(_) => DenialCode::BadRequest,
        }
    }

    /// What the message says beyond the code: the figures and names this service knows.
    pub fn message(&self) -> String {
        match self {
            Denial::KeyUnknown => "Invalid vault key provided: no such key.".into(),
            Denial::KeyRevoked => "This vault key has been revoked.".into(),
            Denial::KeyExpired => "This vault key has expired.".into(),
            Denial::KeySuspended => "This vault key is suspended: one of its calls moved more money than Keybrake \
                                     priced. An operator must reinstate or revoke it."
                .into(),
            Denial::WrongVendor { key_vendor, route_vendor } => {
                format!("This vault key is for {key_vendor}, not {route_vendor}.")
            }
            Denial::OutOfScope { method, path } => format!("This vault key does not allow {method} {path}."),
            Denial::Account(e) => format!("{e}."),
            Denial::UnpricedNotAllowed { reason } => format!(
                "This call moves money but its amount is not in the request ({reason}); a capped vault key refuses it \
                 unless created with \"allow_unpriced_calls\": true."
            ),
            Denial::CurrencyWithoutRate(c) => {
                format!("No FX rate for currency '{c}': the operator has not set one, and Keybrake never guesses.")
            }
            Denial::CurrencyInvalid(c) => format!("Invalid currency: {c:?}."),
            Denial::PerCallLimit { limit, amount } => {
                format!(
                    "Per-call limit exceeded: this call would move {amount}; the key allows at most {limit} per call."
                )
            }
            Denial::CapExceeded { cap, spend, amount } => format!(
                "Spend cap exceeded: this call would move {amount}; the key's daily cap is {cap}, spent today {} \
                 (+{} reserved, {} uncertain).",
                UsdMicros(spend.committed),
                UsdMicros(spend.reserved),
                UsdMicros(spend.uncertain)
            ),
            Denial::IdempotencyInUse => "There is currently another in-progress request using this idempotency key \
                                         (or identical request). Retry after the first one completes."
                .into(),
            Denial::IdempotencyMismatch => "Keys for idempotent requests can only be used with the same parameters \
                                            and endpoint they were first used with."
                .into(),
            Denial::ReplayUnavailable => {
                "This request was already completed, but its response was too large to keep for a replay.".into()
            }
            Denial::StorageUnavailable => {
                "Keybrake's storage is unavailable; the request was not sent to Stripe.".into()
            }
            Denial::BadRequest(m) => format!("Malformed gateway request: {m}."),
        }
    }

    /// The request parameter or header at fault.
    pub fn param(&self) -> Option<String> {
        match self {
            Denial::Account(e) => Some(e.header().into()),
            Denial::CurrencyWithoutRate(_) | Denial::CurrencyInvalid(_) => Some("currency".into()),
            _ => None,
        }
    }

    pub fn to_stripe_error(&self) -> StripeError {
        self.code().render(&self.message(), self.param())
    }
}

impl From<&Denial> for crate::wire::Deny {
    fn from(d: &Denial) -> crate::wire::Deny {
        crate::wire::Deny { code: d.code() as i32, message: d.message(), param: d.param().unwrap_or_default() }
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

    #[test]
    fn the_wire_enum_and_the_shared_codes_are_the_same_numbers() {
        use crate::wire::DenialCode as Wire;
        for code in DenialCode::ALL {
            let wire = Wire::try_from(code as i32).expect("the contract has every code");
            let name = wire.as_str_name().to_ascii_lowercase();
            let text = code.as_str();
            assert!(
                name == text || text.ends_with(&name) || name.ends_with(text.trim_start_matches("keybrake_")),
                "{name} vs {text}"
            );
        }
        assert_eq!(Wire::try_from(DenialCode::ALL.len() as i32 + 1).ok(), None, "no code the core lacks");
    }
}
