//! May this vault key make this call? One rule, applied by the control
//! service to every call it decides and by the filter to the reads it
//! decides from its key cache: the key is live (not revoked, expired or
//! suspended), for the route's vendor, scoped to the method and normalised
//! path, and allowed to act on the account the call names.

use crate::account::{self, AccountError};
use crate::scope::{any_matches, Method, Scope};
use crate::vendor::Vendor;

/// What a key allows, as either side knows it.
#[derive(Debug, Clone, Copy)]
pub struct KeyTerms<'a> {
    pub vendor: Vendor,
    pub scopes: &'a [Scope],
    pub allowed_accounts: &'a [String],
    /// Unix seconds.
    pub expires_at: i64,
    pub revoked: bool,
    pub suspended: bool,
}

/// What a call asks for.
#[derive(Debug, Clone, Copy)]
pub struct CallShape<'a> {
    /// The route's vendor (`stripe` for `/stripe/...` and the root).
    pub vendor: &'a str,
    pub method: Method,
    /// Normalised (see [`crate::path::normalize`]).
    pub path: &'a str,
    pub stripe_account: &'a str,
    pub stripe_context: &'a str,
}

/// Why a key may not make a call, first reason first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Revoked,
    Expired,
    Suspended,
    WrongVendor { key_vendor: Vendor },
    OutOfScope,
    Account(AccountError),
}

/// Whether `key` permits `call` at `now` (Unix seconds).
pub fn permits(key: &KeyTerms<'_>, call: &CallShape<'_>, now: i64) -> Result<(), Refused> {
    if key.revoked {
        return Err(Refused::Revoked);
    }
    if now >= key.expires_at {
        return Err(Refused::Expired);
    }
    if key.suspended {
        return Err(Refused::Suspended);
    }
    if Vendor::parse(call.vendor) != Some(key.vendor) {
        return Err(Refused::WrongVendor { key_vendor: key.vendor });
    }
    if !any_matches(key.scopes, call.method, call.path) {
        return Err(Refused::OutOfScope);
    }
    account::check(key.allowed_accounts, call.stripe_account, call.stripe_context).map_err(Refused::Account)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes() -> Vec<Scope> {
        vec!["GET /v1/charges/*".parse().unwrap(), "POST /v1/charges".parse().unwrap()]
    }

    fn call<'a>(method: Method, path: &'a str, account: &'a str) -> CallShape<'a> {
        CallShape { vendor: "stripe", method, path, stripe_account: account, stripe_context: "" }
    }

    #[test]
    fn a_live_key_in_scope_for_its_accounts_may() {
        let scopes = scopes();
        let accounts = vec!["acct_1".to_owned()];
        let key = KeyTerms {
            vendor: Vendor::Stripe,
            scopes: &scopes,
            allowed_accounts: &accounts,
            expires_at: 100,
            revoked: false,
            suspended: false,
        };
        assert_eq!(permits(&key, &call(Method::Get, "/v1/charges/ch_1", "acct_1"), 99), Ok(()));
        assert_eq!(permits(&key, &call(Method::Get, "/v1/refunds/re_1", "acct_1"), 99), Err(Refused::OutOfScope));
        assert!(matches!(permits(&key, &call(Method::Post, "/v1/charges", ""), 99), Err(Refused::Account(_))));
        assert_eq!(permits(&key, &call(Method::Post, "/v1/charges", "acct_1"), 100), Err(Refused::Expired));
        let revoked = KeyTerms { revoked: true, suspended: true, ..key };
        assert_eq!(permits(&revoked, &call(Method::Post, "/v1/charges", "acct_1"), 100), Err(Refused::Revoked));
        let suspended = KeyTerms { suspended: true, ..key };
        assert_eq!(permits(&suspended, &call(Method::Post, "/v1/charges", "acct_1"), 1), Err(Refused::Suspended));
        let audit = KeyTerms { vendor: Vendor::Keybrake, ..key };
        assert_eq!(
            permits(&audit, &call(Method::Post, "/v1/charges", "acct_1"), 1),
            Err(Refused::WrongVendor { key_vendor: Vendor::Keybrake })
        );
    }
}
