//! Vault key format: `vk_` + 43 base62 characters of entropy + 6 base62 checksum characters.
//!
//! The checksum (CRC-32 of the entropy part) lets the filter refuse a mistyped or
//! truncated key without a round trip; it is not a secret and adds no strength.
//! Keys are stored and looked up only by their SHA-256 ([`VaultKey::hash`]).

use sha2::{Digest, Sha256};

/// Prefix of every vault key.
pub const PREFIX: &str = "vk_";
const BODY_LEN: usize = 43;
const CHECK_LEN: usize = 6;
/// Total length of a vault key in characters.
pub const KEY_LEN: usize = PREFIX.len() + BODY_LEN + CHECK_LEN;
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a string is not a vault key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("a vault key starts with \"vk_\"")]
    Prefix,
    #[error("a vault key is {KEY_LEN} characters long")]
    Length,
    #[error("a vault key holds only letters and digits after \"vk_\"")]
    Alphabet,
    #[error("the vault key's checksum does not match (mistyped or truncated key)")]
    Checksum,
}

/// A syntactically valid vault key. Deliberately not `Debug`/`Display`: it is a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct VaultKey(String);

/// SHA-256 of a vault key: the only form in which keys are stored or sent to the control service.
pub type KeyHash = [u8; 32];

impl VaultKey {
    /// Builds a key from 32 bytes of entropy (the caller supplies a CSPRNG's output).
    pub fn from_entropy(entropy: [u8; 32]) -> VaultKey {
        let body = base62_fixed(entropy);
        let check = checksum(&body);
        VaultKey(format!("{PREFIX}{body}{check}"))
    }

    /// Checks the format and checksum of a presented key.
    pub fn parse(text: &str) -> Result<VaultKey, KeyFormatError> {
        let rest = text.strip_prefix(PREFIX).ok_or(KeyFormatError::Prefix)?;
        if text.len() != KEY_LEN {
            return Err(KeyFormatError::Length);
        }
        if !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(KeyFormatError::Alphabet);
        }
        let (body, check) = rest.split_at(BODY_LEN);
        if checksum(body) != check {
            return Err(KeyFormatError::Checksum);
        }
        Ok(VaultKey(text.to_owned()))
    }

    /// The key's text, to hand to its holder once.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the key's text.
    pub fn hash(&self) -> KeyHash {
        hash_key_text(&self.0)
    }
}

/// SHA-256 of a key's text (used for any presented secret, well-formed or not).
pub fn hash_key_text(text: &str) -> KeyHash {
    Sha256::digest(text.as_bytes()).into()
}

/// True when `text` holds what looks like a vault key, also when
/// percent-encoded (for refusing keys in URLs, where they would travel on).
pub fn looks_like_vault_key(text: &str) -> bool {
    text.contains(PREFIX) || percent_decode_lossy(text).to_ascii_lowercase().contains(PREFIX)
}

/// `%XX` decoded (repeatedly, to see through double encoding) and `+` as a
/// space; malformed escapes are kept as they are.
fn percent_decode_lossy(text: &str) -> String {
    let mut current = text.to_owned();
    for _ in 0..3 {
        let bytes = current.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            let escaped = (b == b'%')
                .then(|| {
                    Some(
                        (crate::path::hex_value(*bytes.get(i + 1)?)? << 4)
                            | crate::path::hex_value(*bytes.get(i + 2)?)?,
                    )
                })
                .flatten();
            match (escaped, b) {
                (Some(d), _) => {
                    out.push(d);
                    i += 3;
                }
                (None, b'+') => {
                    out.push(b' ');
                    i += 1;
                }
                (None, other) => {
                    out.push(other);
                    i += 1;
                }
            }
        }
        let next = String::from_utf8_lossy(&out).into_owned();
        if next == current {
            break;
        }
        current = next;
    }
    current
}

fn checksum(body: &str) -> String {
    let crc = crc32fast::hash(body.as_bytes());
    let mut digits = [b'0'; CHECK_LEN];
    let mut n = u64::from(crc);
    for d in digits.iter_mut().rev() {
        *d = digit(n % 62);
        n /= 62;
    }
    digits.iter().map(|&b| char::from(b)).collect()
}

fn digit(n: u64) -> u8 {
    // n < 62 by construction; `get` keeps the function total anyway.
    ALPHABET.get(n as usize).copied().unwrap_or(b'0')
}

/// Base62 of a 256-bit number, left-padded to 43 digits (62^43 > 2^256).
fn base62_fixed(bytes: [u8; 32]) -> String {
    let mut num = bytes;
    let mut out = [b'0'; BODY_LEN];
    for slot in out.iter_mut().rev() {
        let mut rem: u32 = 0;
        for byte in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*byte);
            *byte = (acc / 62) as u8;
            rem = acc % 62;
        }
        *slot = digit(u64::from(rem));
    }
    out.iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(not(target_arch = "wasm32"))]
    use proptest::prelude::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn generated_keys_parse_and_hash_stably() {
        let key = VaultKey::from_entropy([7u8; 32]);
        assert_eq!(key.expose().len(), KEY_LEN);
        let again = VaultKey::parse(key.expose()).unwrap();
        assert_eq!(again.hash(), key.hash());
        assert_ne!(VaultKey::from_entropy([8u8; 32]).hash(), key.hash());
    }

    #[test]
    fn rejects_wrong_prefix_length_alphabet_and_checksum() {
        let key = VaultKey::from_entropy([1u8; 32]);
        let text = key.expose();
        assert_eq!(VaultKey::parse(&text.replacen("vk_", "sk_", 1)).err(), Some(KeyFormatError::Prefix));
        assert_eq!(VaultKey::parse(&text[..KEY_LEN - 1]).err(), Some(KeyFormatError::Length));
        let mut bad = text.to_owned();
        bad.replace_range(5..6, "-");
        assert_eq!(VaultKey::parse(&bad).err(), Some(KeyFormatError::Alphabet));
        let mut typo = text.to_owned();
        let c = if &typo[10..11] == "a" { "b" } else { "a" };
        typo.replace_range(10..11, c);
        assert_eq!(VaultKey::parse(&typo).err(), Some(KeyFormatError::Checksum));
    }

    #[test]
    fn spots_keys_even_when_encoded() {
        assert!(looks_like_vault_key("key=vk_abc"));
        assert!(looks_like_vault_key("key=%76k_abc"));
        assert!(looks_like_vault_key("key=%2576%256b_abc"));
        assert!(looks_like_vault_key("key=VK%5Fabc"));
        assert!(!looks_like_vault_key("limit=3&expand[]=customer"));
    }

    #[test]
    fn base62_of_zero_and_max() {
        assert_eq!(base62_fixed([0u8; 32]), "0".repeat(43));
        assert!(base62_fixed([255u8; 32]).bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[cfg(not(target_arch = "wasm32"))]
    proptest! {
        #[test]
        fn every_entropy_round_trips(bytes in proptest::array::uniform32(any::<u8>())) {
            let key = VaultKey::from_entropy(bytes);
            prop_assert!(VaultKey::parse(key.expose()).is_ok());
        }

        #[test]
        fn parse_never_panics(s in ".{0,80}") {
            let _ = VaultKey::parse(&s);
        }
    }
}
