//! Random identifiers and vault keys, from the operating system's CSPRNG.

use keybrake_core::fingerprint::to_hex;
use keybrake_core::vault_key::VaultKey;

/// `prefix_` followed by 24 random hex characters.
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 12];
    // getrandom fails only when the OS has no entropy source at all; fall back
    // to time so ids stay unique (they are not secrets).
    if getrandom::fill(&mut bytes).is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        bytes.copy_from_slice(&t.to_le_bytes()[..12]);
    }
    format!("{prefix}_{}", to_hex(&bytes))
}

/// A fresh vault key. Without an entropy source no key is made.
pub fn new_vault_key() -> Option<VaultKey> {
    let mut entropy = [0u8; 32];
    getrandom::fill(&mut entropy).ok()?;
    Some(VaultKey::from_entropy(entropy))
}
