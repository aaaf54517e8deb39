//! Which Stripe account a call acts on, and whether a vault key may act on it.
//!
//! A call acts on a connected account when it names one in `Stripe-Account`
//! (Connect) or `Stripe-Context` (organization keys), and on the platform's
//! own account when it names none. A key's `allowed_accounts`, when set, is
//! the complete list: the platform itself is allowed only when listed as
//! [`PLATFORM`]. One rule, used by the control service and by the filter's
//! key cache alike.

/// How `allowed_accounts` names the platform's own account (a call with no account header).
pub const PLATFORM: &str = "self";
/// Longest account header accepted.
pub const MAX_ACCOUNT_LEN: usize = 255;

/// Why a call's account headers are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("the Stripe-Account header is not a Stripe account id (acct_...)")]
    BadAccount,
    #[error("the Stripe-Context header is not a Stripe context (acct_... or org_..., separated by '/')")]
    BadContext,
    #[error("Stripe-Account and Stripe-Context name different accounts; send one of them")]
    Disagree,
    #[error("this vault key may act only on the accounts it lists, and the call names none (the platform account)")]
    PlatformNotAllowed,
    #[error("this vault key may not act on the account the call names")]
    NotAllowed,
}

impl AccountError {
    /// The header at fault, for Stripe's `param` field.
    pub fn header(self) -> &'static str {
        match self {
            AccountError::BadContext => "Stripe-Context",
            _ => "Stripe-Account",
        }
    }

    /// Malformed headers are the caller's error (400); the others are refusals of scope (403).
    pub fn is_malformed(self) -> bool {
        matches!(self, AccountError::BadAccount | AccountError::BadContext | AccountError::Disagree)
    }
}

/// The account a call acts on: the one `Stripe-Account` or `Stripe-Context`
/// names (both, if given, must name the same), or `""` for the platform.
/// Malformed values are refused, so no server reads one differently.
pub fn acting_account<'a>(stripe_account: &'a str, stripe_context: &'a str) -> Result<&'a str, AccountError> {
    if !stripe_account.is_empty() && !is_account_id(stripe_account) {
        return Err(AccountError::BadAccount);
    }
    if !stripe_context.is_empty() && !is_context(stripe_context) {
        return Err(AccountError::BadContext);
    }
    match (stripe_account.is_empty(), stripe_context.is_empty()) {
        (false, false) if stripe_account != stripe_context => Err(AccountError::Disagree),
        (false, _) => Ok(stripe_account),
        (true, _) => Ok(stripe_context),
    }
}

/// Whether a key whose `allowed_accounts` is `allowed` may make a call with
/// these account headers; an empty list allows every account.
pub fn check(allowed: &[String], stripe_account: &str, stripe_context: &str) -> Result<(), AccountError> {
    let acting = acting_account(stripe_account, stripe_context)?;
    if allowed.is_empty() {
        return Ok(());
    }
    let name = if acting.is_empty() { PLATFORM } else { acting };
    if allowed.iter().any(|a| a == name) {
        Ok(())
    } else if acting.is_empty() {
        Err(AccountError::PlatformNotAllowed)
    } else {
        Err(AccountError::NotAllowed)
    }
}

/// `acct_` and letters or digits.
pub fn is_account_id(text: &str) -> bool {
    text.len() <= MAX_ACCOUNT_LEN
        && text
            .strip_prefix("acct_")
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// A value `allowed_accounts` may list: an account id or [`PLATFORM`].
pub fn is_allowed_entry(text: &str) -> bool {
    text == PLATFORM || is_account_id(text)
}

/// `acct_...` or `org_...` ids, separated by `/`.
fn is_context(text: &str) -> bool {
    text.len() <= MAX_ACCOUNT_LEN
        && text.split('/').all(|part| {
            ["acct_", "org_"].iter().any(|p| {
                part.strip_prefix(p)
                    .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_acting_account_comes_from_either_header() {
        assert_eq!(acting_account("", ""), Ok(""));
        assert_eq!(acting_account("acct_1", ""), Ok("acct_1"));
        assert_eq!(acting_account("", "acct_1"), Ok("acct_1"));
        assert_eq!(acting_account("acct_1", "acct_1"), Ok("acct_1"));
        assert_eq!(acting_account("acct_1", "acct_2"), Err(AccountError::Disagree));
        assert_eq!(acting_account("acct_1,acct_2", ""), Err(AccountError::BadAccount));
        assert_eq!(acting_account(" acct_1", ""), Err(AccountError::BadAccount));
        assert_eq!(acting_account("", "acct_1/x"), Err(AccountError::BadContext));
        assert_eq!(acting_account("", "org_1/acct_2"), Ok("org_1/acct_2"));
    }

    #[test]
    fn a_list_is_complete_and_names_the_platform_as_self() {
        let connected = list(&["acct_1"]);
        assert_eq!(check(&connected, "acct_1", ""), Ok(()));
        assert_eq!(check(&connected, "", "acct_1"), Ok(()));
        assert_eq!(check(&connected, "acct_2", ""), Err(AccountError::NotAllowed));
        assert_eq!(check(&connected, "", "acct_2"), Err(AccountError::NotAllowed));
        assert_eq!(check(&connected, "", ""), Err(AccountError::PlatformNotAllowed));
        assert_eq!(check(&list(&["acct_1", PLATFORM]), "", ""), Ok(()));
        assert_eq!(check(&[], "", ""), Ok(()));
        assert_eq!(check(&[], "acct_9", ""), Ok(()));
        assert_eq!(check(&[], "acct_1", "acct_2"), Err(AccountError::Disagree));
        assert!(is_allowed_entry("self") && is_allowed_entry("acct_x1") && !is_allowed_entry("acct_"));
    }
}
