//! Reading the vault key from the request: `Authorization: Bearer vk_...`, or
//! Basic auth with the key as user name and an empty password (Stripe's curl
//! style, `-u vk_...:`). Exactly one credential, or a refusal.

use base64::Engine;
use keybrake_core::vault_key::VaultKey;

use crate::host::{header, header_count};
use crate::refusal::Refusal;

/// The vault key presented on a request.
pub fn vault_key(headers: &[(String, String)]) -> Result<VaultKey, Refusal> {
    match header_count(headers, "authorization") {
        0 => return Err(Refusal::MissingKey),
        1 => {}
        _ => return Err(Refusal::AmbiguousCredentials),
    }
    let value = header(headers, "authorization").unwrap_or_default().trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Err(Refusal::MissingKey);
        }
        if rest.contains(char::is_whitespace) {
            return Err(Refusal::AmbiguousCredentials);
        }
        VaultKey::parse(rest).map_err(Refusal::MalformedKey)
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest).map_err(|_| Refusal::UnsupportedScheme)?;
        let text = String::from_utf8(decoded).map_err(|_| Refusal::UnsupportedScheme)?;
        let (user, password) = text.split_once(':').unwrap_or((text.as_str(), ""));
        if !password.is_empty() {
            return Err(Refusal::AmbiguousCredentials);
        }
        if user.is_empty() {
            return Err(Refusal::MissingKey);
        }
        VaultKey::parse(user).map_err(Refusal::MalformedKey)
    } else {
        Err(Refusal::UnsupportedScheme)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybrake_core::vault_key::KeyFormatError;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn bearer_and_basic() {
        let key = VaultKey::from_entropy([3; 32]);
        let bearer = format!("Bearer {}", key.expose());
        assert_eq!(vault_key(&h(&[("authorization", &bearer)])).unwrap().hash(), key.hash());
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:", key.expose())));
        assert_eq!(vault_key(&h(&[("authorization", &basic)])).unwrap().hash(), key.hash());
        let lower = format!("bearer {}", key.expose());
        assert!(vault_key(&h(&[("authorization", &lower)])).is_ok());
    }

    #[test]
    fn refusals() {
        let key = VaultKey::from_entropy([3; 32]);
        let bearer = format!("Bearer {}", key.expose());
        assert_eq!(vault_key(&h(&[])).err(), Some(Refusal::MissingKey));
        assert_eq!(vault_key(&h(&[("authorization", "Bearer ")])).err(), Some(Refusal::MissingKey));
        assert_eq!(
            vault_key(&h(&[("authorization", &bearer), ("authorization", &bearer)])).err(),
            Some(Refusal::AmbiguousCredentials)
        );
        assert_eq!(
            vault_key(&h(&[("authorization", "Bearer sk_test_123")])).err(),
            Some(Refusal::MalformedKey(KeyFormatError::Prefix))
        );
        let with_password =
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:secret", key.expose())));
        assert_eq!(vault_key(&h(&[("authorization", &with_password)])).err(), Some(Refusal::AmbiguousCredentials));
        assert_eq!(vault_key(&h(&[("authorization", "Basic !!!")])).err(), Some(Refusal::UnsupportedScheme));
        assert_eq!(vault_key(&h(&[("authorization", "Digest x")])).err(), Some(Refusal::UnsupportedScheme));
        let two = format!("Bearer {} {}", key.expose(), key.expose());
        assert_eq!(vault_key(&h(&[("authorization", &two)])).err(), Some(Refusal::AmbiguousCredentials));
    }
}
