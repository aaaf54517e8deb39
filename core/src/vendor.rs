//! Vendors a vault key can be issued for, and which scopes make sense for each.

use crate::scope::{Method, Scope};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// Stripe's API, reached through the gateway under `/stripe/`.
    Stripe,
    /// Keybrake's own read-only audit API (`GET /admin/audit`), for audit-scoped keys.
    Keybrake,
}

impl Vendor {
    pub fn parse(text: &str) -> Option<Vendor> {
        match text {
            "stripe" => Some(Vendor::Stripe),
            "keybrake" => Some(Vendor::Keybrake),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Stripe => "stripe",
            Vendor::Keybrake => "keybrake",
        }
    }

    /// Whether `scope` is one this vendor's API has; the message says why not.
    pub fn check_scope(self, scope: &Scope) -> Result<(), String> {
        match self {
            Vendor::Stripe => match scope.first_segment() {
                Some("v1" | "v2") => Ok(()),
                _ => Err(format!(
                    "scope {scope:?} is not a Stripe API path (they start with /v1/ or /v2/)",
                    scope = scope.to_string()
                )),
            },
            Vendor::Keybrake => {
                if scope.method() == Method::Get && scope.matches(Method::Get, "/admin/audit") {
                    Ok(())
                } else {
                    Err(format!(
                        "vendor \"keybrake\" keys may only hold \"GET /admin/audit\", not {:?}",
                        scope.to_string()
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn scopes_per_vendor() {
        let s = |t: &str| t.parse::<Scope>().unwrap();
        assert!(Vendor::Stripe.check_scope(&s("POST /v1/charges")).is_ok());
        assert!(Vendor::Stripe.check_scope(&s("GET /admin/audit")).is_err());
        assert!(Vendor::Keybrake.check_scope(&s("GET /admin/audit")).is_ok());
        assert!(Vendor::Keybrake.check_scope(&s("GET /admin/vault_keys")).is_err());
        assert_eq!(Vendor::parse("paypal"), None);
    }
}
