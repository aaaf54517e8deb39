//! Why the control service refuses a call, as one typed code both sides
//! share: the control service decides it and writes the message (it knows
//! the figures), the filter renders it in Stripe's shape — status, error
//! type, `code` and `Stripe-Should-Retry` all follow from the code, here.
//!
//! The discriminants are the wire's: `proto/keybrake.proto`'s `DenialCode`
//! uses the same numbers (the control service's tests check every one).

use crate::stripe_error::{ErrorType, StripeError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum DenialCode {
    VaultKeyUnknown = 1,
    VaultKeyRevoked = 2,
    VaultKeyExpired = 3,
    VaultKeySuspended = 4,
    WrongVendor = 5,
    EndpointNotAllowed = 6,
    AccountHeaderInvalid = 7,
    AccountNotAllowed = 8,
    UnpricedCallNotAllowed = 9,
    CurrencyWithoutFxRate = 10,
    CurrencyInvalid = 11,
    PerCallLimitExceeded = 12,
    SpendCapExceeded = 13,
    IdempotencyKeyInUse = 14,
    IdempotencyKeyReused = 15,
    IdempotencyReplayUnavailable = 16,
    StorageUnavailable = 17,
    BadRequest = 18,
}

impl DenialCode {
    pub const ALL: [DenialCode; 18] = [
        DenialCode::VaultKeyUnknown,
        DenialCode::VaultKeyRevoked,
        DenialCode::VaultKeyExpired,
        DenialCode::VaultKeySuspended,
        DenialCode::WrongVendor,
        DenialCode::EndpointNotAllowed,
        DenialCode::AccountHeaderInvalid,
        DenialCode::AccountNotAllowed,
        DenialCode::UnpricedCallNotAllowed,
        DenialCode::CurrencyWithoutFxRate,
        DenialCode::CurrencyInvalid,
        DenialCode::PerCallLimitExceeded,
        DenialCode::SpendCapExceeded,
        DenialCode::IdempotencyKeyInUse,
        DenialCode::IdempotencyKeyReused,
        DenialCode::IdempotencyReplayUnavailable,
        DenialCode::StorageUnavailable,
        DenialCode::BadRequest,
    ];

    /// The code on the wire (`Deny.code`).
    pub fn from_wire(value: i32) -> Option<DenialCode> {
        DenialCode::ALL.into_iter().find(|c| *c as i32 == value)
    }

    /// Stripe's `error.code`: the stable text clients, metrics and the audit log see.
    pub fn as_str(self) -> &'static str {
        match self {
            DenialCode::VaultKeyUnknown => "vault_key_unknown",
            DenialCode::VaultKeyRevoked => "vault_key_revoked",
            DenialCode::VaultKeyExpired => "vault_key_expired",
            DenialCode::VaultKeySuspended => "vault_key_suspended",
            DenialCode::WrongVendor => "vault_key_wrong_vendor",
            DenialCode::EndpointNotAllowed => "endpoint_not_allowed",
            DenialCode::AccountHeaderInvalid => "account_header_invalid",
            DenialCode::AccountNotAllowed => "account_not_allowed",
            DenialCode::UnpricedCallNotAllowed => "unpriced_call_not_allowed",
            DenialCode::CurrencyWithoutFxRate => "currency_without_fx_rate",
            DenialCode::CurrencyInvalid => "currency_invalid",
            DenialCode::PerCallLimitExceeded => "per_call_limit_exceeded",
            DenialCode::SpendCapExceeded => "spend_cap_exceeded",
            DenialCode::IdempotencyKeyInUse => "idempotency_key_in_use",
            DenialCode::IdempotencyKeyReused => "idempotency_key_reused",
            DenialCode::IdempotencyReplayUnavailable => "idempotency_replay_unavailable",
            DenialCode::StorageUnavailable => "keybrake_storage_unavailable",
            DenialCode::BadRequest => "keybrake_bad_request",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            DenialCode::VaultKeyUnknown
            | DenialCode::VaultKeyRevoked
            | DenialCode::VaultKeyExpired
            | DenialCode::VaultKeySuspended => 401,
            DenialCode::WrongVendor
            | DenialCode::EndpointNotAllowed
            | DenialCode::AccountNotAllowed
            | DenialCode::UnpricedCallNotAllowed => 403,
            DenialCode::AccountHeaderInvalid
            | DenialCode::CurrencyWithoutFxRate
            | DenialCode::CurrencyInvalid
            | DenialCode::IdempotencyKeyReused
            | DenialCode::BadRequest => 400,
            DenialCode::IdempotencyKeyInUse | DenialCode::IdempotencyReplayUnavailable => 409,
            DenialCode::PerCallLimitExceeded | DenialCode::SpendCapExceeded => 429,
            DenialCode::StorageUnavailable => 503,
        }
    }

    pub fn error_type(self) -> ErrorType {
        match self {
            DenialCode::IdempotencyKeyInUse
            | DenialCode::IdempotencyKeyReused
            | DenialCode::IdempotencyReplayUnavailable => ErrorType::IdempotencyError,
            DenialCode::StorageUnavailable => ErrorType::ApiError,
            _ => ErrorType::InvalidRequestError,
        }
    }

    /// `Stripe-Should-Retry`: false where a retry can only be refused again
    /// (a cap, a suspension, a response gone), true for an outage, unset otherwise.
    pub fn should_retry(self) -> Option<bool> {
        match self {
            DenialCode::VaultKeySuspended
            | DenialCode::PerCallLimitExceeded
            | DenialCode::SpendCapExceeded
            | DenialCode::IdempotencyReplayUnavailable => Some(false),
            DenialCode::StorageUnavailable => Some(true),
            _ => None,
        }
    }

    /// The refusal as the client sees it.
    pub fn render(self, message: &str, param: Option<String>) -> StripeError {
        let e = StripeError::new(self.status(), self.error_type(), self.as_str(), message).with_param(param);
        match self.should_retry() {
            Some(retry) => e.with_should_retry(retry),
            None => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_number_and_one_text() {
        for (i, code) in DenialCode::ALL.into_iter().enumerate() {
            assert_eq!(code as i32, i as i32 + 1);
            assert_eq!(DenialCode::from_wire(code as i32), Some(code));
        }
        let texts: std::collections::HashSet<_> = DenialCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(texts.len(), DenialCode::ALL.len());
        assert_eq!(DenialCode::from_wire(0), None);
        assert_eq!(DenialCode::from_wire(99), None);
    }

    #[test]
    fn a_cap_is_a_429_not_to_retry_and_an_outage_a_503_to_retry() {
        let cap = DenialCode::SpendCapExceeded.render("Spend cap exceeded.", None);
        assert_eq!((cap.status, cap.should_retry, cap.code.as_str()), (429, Some(false), "spend_cap_exceeded"));
        let down = DenialCode::StorageUnavailable.render("down", None);
        assert_eq!((down.status, down.error_type, down.should_retry), (503, ErrorType::ApiError, Some(true)));
        let busy = DenialCode::IdempotencyKeyInUse.render("busy", None);
        assert_eq!((busy.status, busy.error_type, busy.should_retry), (409, ErrorType::IdempotencyError, None));
    }
}
