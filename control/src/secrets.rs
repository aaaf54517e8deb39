//! The vault's secrets: the real vendor key and the admin key. They come from
//! the environment or a secret file at start, never from Envoy's config, and
//! are never printed: `Secret` has no way to be formatted.

use keybrake_core::fingerprint::to_hex;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A secret string that cannot be logged by accident.
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl Secret {
    pub fn new(text: String) -> Secret {
        Secret(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{0} is not set (set it, or {0}_FILE to a file holding it)")]
    Missing(&'static str),
    #[error("cannot read {0}_FILE: {1}")]
    File(&'static str, std::io::Error),
    #[error("{0} {1}")]
    Invalid(&'static str, &'static str),
}

/// Reads `NAME` or the file named by `NAME_FILE` (trailing newline trimmed).
pub fn from_env(name: &'static str) -> Result<Option<Secret>, SecretError> {
    if let Ok(v) = std::env::var(name) {
        if !v.is_empty() {
            return Ok(Some(Secret(v.trim().to_owned())));
        }
    }
    match std::env::var(format!("{name}_FILE")) {
        Ok(path) if !path.is_empty() => {
            let text = std::fs::read_to_string(path).map_err(|e| SecretError::File(name, e))?;
            Ok(Some(Secret(text.trim().to_owned())))
        }
        _ => Ok(None),
    }
}

/// What the control service holds: the real Stripe key and the admin key's hash.
pub struct Vault {
    stripe_key: Secret,
    admin_key_hash: [u8; 32],
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault([redacted])")
    }
}

impl Vault {
    pub fn new(stripe_key: Secret, admin_key: &Secret) -> Result<Vault, SecretError> {
        let k = stripe_key.expose();
        if !(k.starts_with("sk_") || k.starts_with("rk_")) || k.len() < 8 || k.contains(char::is_whitespace) {
            return Err(SecretError::Invalid(
                "KEYBRAKE_STRIPE_SECRET_KEY",
                "must be a Stripe secret (sk_...) or restricted (rk_...) key",
            ));
        }
        if admin_key.expose().len() < 16 {
            return Err(SecretError::Invalid("KEYBRAKE_ADMIN_KEY", "must be at least 16 characters"));
        }
        Ok(Vault { stripe_key, admin_key_hash: Sha256::digest(admin_key.expose().as_bytes()).into() })
    }

    /// `Authorization` value for the vendor's API.
    pub fn upstream_authorization(&self) -> String {
        format!("Bearer {}", self.stripe_key.expose())
    }

    /// Identifies one upstream account (credential plus `Stripe-Account`) without revealing the credential.
    pub fn account_scope(&self, stripe_account: &str) -> String {
        let mut h = Sha256::new();
        h.update(b"keybrake-account-v1\0");
        h.update(self.stripe_key.expose().as_bytes());
        h.update([0u8]);
        h.update(stripe_account.as_bytes());
        to_hex(&h.finalize())
    }

    /// Constant-time check of a presented admin key.
    pub fn is_admin_key(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&self.admin_key_hash).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_keys_and_never_prints_them() {
        let v = Vault::new(Secret::new("sk_test_abcdef".into()), &Secret::new("admin-key-0123456789".into())).unwrap();
        assert!(v.is_admin_key("admin-key-0123456789"));
        assert!(!v.is_admin_key("admin-key-012345678"));
        assert!(!format!("{v:?}").contains("sk_test"));
        assert_ne!(v.account_scope(""), v.account_scope("acct_1"));
        assert!(!v.account_scope("").contains("sk_test"));
        assert!(Vault::new(Secret::new("pk_test_abc".into()), &Secret::new("admin-key-0123456789".into())).is_err());
        assert!(Vault::new(Secret::new("sk_test_abcdef".into()), &Secret::new("short".into())).is_err());
    }
}
