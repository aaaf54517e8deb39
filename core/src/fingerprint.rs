//! Request fingerprints: what makes two calls "the same operation" for
//! idempotency and content dedup, independent of the vault key used and of
//! how the body happened to be encoded.

use sha2::{Digest, Sha256};

use crate::form::FormParams;
use crate::path::Target;
use crate::scope::Method;

/// Hex SHA-256 of method, normalised path, query, `Stripe-Account` and the canonical body.
pub fn fingerprint(method: Method, target: &Target, stripe_account: &str, params: &FormParams) -> String {
    let mut h = Sha256::new();
    for part in [
        "keybrake-fingerprint-v1",
        method.as_str(),
        &target.path,
        target.query.as_deref().unwrap_or(""),
        stripe_account,
        &params.canonical(),
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    to_hex(&h.finalize())
}

/// The `Idempotency-Key` the gateway sends upstream for a deduplicated
/// operation: deterministic for one operation record (`record_salt` tells a
/// new operation with the same content, after the dedup window, from a retry).
pub fn derived_idempotency_key(fingerprint: &str, record_salt: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"keybrake-idempotency-v1\0");
    h.update(fingerprint.as_bytes());
    h.update([0u8]);
    h.update(record_salt.as_bytes());
    let hex = to_hex(&h.finalize());
    format!("kb_{}", hex.get(..40).unwrap_or(&hex))
}

/// Lower-case hex of bytes (the `hex` crate's; kept as the name the control service uses).
pub fn to_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::normalize;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn fp(path: &str, account: &str, body: &str) -> String {
        fingerprint(Method::Post, &normalize(path).unwrap(), account, &FormParams::parse(body.as_bytes()).unwrap())
    }

    #[test]
    fn same_operation_same_fingerprint() {
        let a = fp("/v1/charges", "", "amount=100&currency=usd");
        assert_eq!(a, fp("/v1//charges/", "", "currency=usd&amount=100"));
        assert_eq!(a.len(), 64);
        assert_ne!(a, fp("/v1/charges", "", "amount=101&currency=usd"));
        assert_ne!(a, fp("/v1/charges", "acct_1", "amount=100&currency=usd"));
        assert_ne!(a, fp("/v1/refunds", "", "amount=100&currency=usd"));
    }

    #[test]
    fn derived_keys_are_deterministic_per_record() {
        let f = fp("/v1/charges", "", "amount=1&currency=usd");
        assert_eq!(derived_idempotency_key(&f, "r1"), derived_idempotency_key(&f, "r1"));
        assert_ne!(derived_idempotency_key(&f, "r1"), derived_idempotency_key(&f, "r2"));
        assert!(derived_idempotency_key(&f, "r1").starts_with("kb_"));
    }

    #[test]
    fn fingerprints_are_pinned() {
        // Stored in the control service's idempotency records: a change here breaks dedup across upgrades.
        let f = fp("/v1/charges", "", "amount=100&currency=usd");
        assert_eq!(f, "396dedac46b2ed24ec2fa9eaad6cc092cca019133ed12bec5757e9143a4010e5");
        assert_eq!(to_hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }
}
