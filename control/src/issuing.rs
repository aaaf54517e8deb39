//! Issuing vault keys: the validation of a key request, and the view of a key
//! with its spend today. The key itself is returned once and stored only as
//! its SHA-256.

use std::str::FromStr;

use keybrake_core::account;
use keybrake_core::money::UsdMicros;
use keybrake_core::scope::Scope;
use keybrake_core::vendor::Vendor;
use serde::{Deserialize, Serialize};
use serde_json::Number;

use crate::clock::{day_text, rfc3339};
use crate::model::{invalid, DedupMode, Invalid, KeyRecord, KeyState, Spend};
use crate::usd::{usd_number, DecimalText};

/// Longest lifetime of a vault key: 30 days.
pub const MAX_TTL_SECS: i64 = 30 * 86_400;
/// Longest content-dedup window: 7 days.
pub const MAX_DEDUP_WINDOW_SECS: i64 = 7 * 86_400;
const MAX_LABEL_LEN: usize = 200;
const MAX_SCOPES: usize = 64;
/// Largest cap accepted: one billion dollars.
const MAX_USD: i64 = 1_000_000_000 * 1_000_000;

/// `POST /admin/vault_keys`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    pub label: String,
    pub vendor: String,
    pub allowed_endpoints: Vec<String>,
    /// USD per UTC day; absent or null for no cap. A decimal (number or string), at most 6 places.
    #[serde(default)]
    #[schema(value_type = Option<f64>, example = 32.99, minimum = 0)]
    pub daily_usd_cap: Option<DecimalText>,
    #[schema(value_type = i64, example = 3600, minimum = 1, maximum = 2592000)]
    pub expires_in_seconds: Number,
    #[serde(default)]
    #[schema(value_type = Option<f64>, minimum = 0)]
    pub max_amount_per_call_usd: Option<DecimalText>,
    /// Lets money-moving calls whose amount is not in the request through a capped key.
    #[serde(default)]
    pub allow_unpriced_calls: bool,
    /// `"content"` (default) or `"idempotency_key"`.
    #[serde(default)]
    pub dedup: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 604800)]
    pub dedup_window_seconds: Option<Number>,
    /// Accounts the key may act on (`Stripe-Account` or `Stripe-Context`), `"self"` for the
    /// platform's own account (calls with neither header); empty means any.
    #[serde(default)]
    pub allowed_accounts: Vec<String>,
}

impl CreateKey {
    /// Validates the request into a key record (without id, hash or times).
    pub fn validate(&self) -> Result<ValidKey, Invalid> {
        let label = self.label.trim();
        if label.is_empty() || label.len() > MAX_LABEL_LEN || label.chars().any(char::is_control) {
            return Err(invalid("label", format!("label must be 1 to {MAX_LABEL_LEN} printable characters")));
        }
        let vendor = Vendor::parse(&self.vendor).ok_or_else(|| {
            invalid(
                "vendor",
                format!("unknown vendor {:?}: use \"stripe\" (or \"keybrake\" for audit-scoped keys)", self.vendor),
            )
        })?;
        if self.allowed_endpoints.is_empty() || self.allowed_endpoints.len() > MAX_SCOPES {
            return Err(invalid(
                "allowed_endpoints",
                format!("allowed_endpoints must list 1 to {MAX_SCOPES} endpoints"),
            ));
        }
        let mut scopes = Vec::new();
        for text in &self.allowed_endpoints {
            let scope =
                Scope::from_str(text).map_err(|e| invalid("allowed_endpoints", format!("allowed_endpoints: {e}")))?;
            vendor.check_scope(&scope).map_err(|m| invalid("allowed_endpoints", format!("allowed_endpoints: {m}")))?;
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        let daily_cap = self.daily_usd_cap.as_ref().map(|n| usd("daily_usd_cap", n)).transpose()?;
        let max_per_call =
            self.max_amount_per_call_usd.as_ref().map(|n| usd("max_amount_per_call_usd", n)).transpose()?;
        let ttl = whole("expires_in_seconds", &self.expires_in_seconds)?;
        if !(1..=MAX_TTL_SECS).contains(&ttl) {
            return Err(invalid(
                "expires_in_seconds",
                format!("expires_in_seconds must be between 1 and {MAX_TTL_SECS} (30 days)"),
            ));
        }
        let dedup = match self.dedup.as_deref() {
            None => DedupMode::Content,
            Some(m) => DedupMode::parse(m)
                .ok_or_else(|| invalid("dedup", "dedup must be \"content\" or \"idempotency_key\""))?,
        };
        let window = match &self.dedup_window_seconds {
            None => 86_400,
            Some(n) => whole("dedup_window_seconds", n)?,
        };
        if !(1..=MAX_DEDUP_WINDOW_SECS).contains(&window) {
            return Err(invalid(
                "dedup_window_seconds",
                format!("dedup_window_seconds must be between 1 and {MAX_DEDUP_WINDOW_SECS}"),
            ));
        }
        for a in &self.allowed_accounts {
            if !account::is_allowed_entry(a) {
                return Err(invalid(
                    "allowed_accounts",
                    format!(
                        "{a:?} is not a Stripe account id (acct_...) or \"{}\" (the platform account)",
                        account::PLATFORM
                    ),
                ));
            }
        }
        Ok(ValidKey {
            label: label.to_owned(),
            vendor,
            scopes,
            daily_cap,
            max_per_call,
            ttl_secs: ttl,
            allow_unpriced: self.allow_unpriced_calls,
            dedup,
            dedup_window_secs: window,
            allowed_accounts: self.allowed_accounts.clone(),
        })
    }
}

/// A validated key request.
#[derive(Debug, Clone)]
pub struct ValidKey {
    pub label: String,
    pub vendor: Vendor,
    pub scopes: Vec<Scope>,
    pub daily_cap: Option<UsdMicros>,
    pub max_per_call: Option<UsdMicros>,
    pub ttl_secs: i64,
    pub allow_unpriced: bool,
    pub dedup: DedupMode,
    pub dedup_window_secs: i64,
    pub allowed_accounts: Vec<String>,
}

impl ValidKey {
    pub fn into_record(self, id: String, key_hash: [u8; 32], now: i64) -> KeyRecord {
        KeyRecord {
            id,
            key_hash,
            label: self.label,
            vendor: self.vendor,
            scopes: self.scopes,
            allowed_accounts: self.allowed_accounts,
            daily_cap: self.daily_cap,
            max_per_call: self.max_per_call,
            allow_unpriced: self.allow_unpriced,
            dedup: self.dedup,
            dedup_window_secs: self.dedup_window_secs,
            created_at: now,
            expires_at: now + self.ttl_secs,
            revoked_at: None,
            suspended_at: None,
            suspended_reason: String::new(),
        }
    }
}

/// A USD amount from JSON: a plain decimal, non-negative, at most six decimals.
fn usd(param: &str, n: &DecimalText) -> Result<UsdMicros, Invalid> {
    let text = n.0.as_str();
    if text.starts_with('-') {
        return Err(invalid(param, format!("{param} must not be negative")));
    }
    let v = UsdMicros::parse_decimal(text)
        .map_err(|e| invalid(param, format!("{param}: {e} (use a plain decimal like 32.99)")))?;
    if v.0 > MAX_USD {
        return Err(invalid(param, format!("{param} is too large")));
    }
    Ok(v)
}

fn whole(param: &str, n: &Number) -> Result<i64, Invalid> {
    n.as_i64().ok_or_else(|| invalid(param, format!("{param} must be a whole number of seconds")))
}

/// A key as the admin API shows it (never the secret).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyView {
    pub id: String,
    pub object: &'static str,
    pub label: String,
    pub vendor: &'static str,
    pub allowed_endpoints: Vec<String>,
    pub allowed_accounts: Vec<String>,
    #[schema(value_type = Option<f64>)]
    pub daily_usd_cap: Option<Number>,
    #[schema(value_type = Option<f64>)]
    pub max_amount_per_call_usd: Option<Number>,
    pub allow_unpriced_calls: bool,
    pub dedup: &'static str,
    pub dedup_window_seconds: i64,
    pub created_at: String,
    pub expires_at: String,
    pub revoked_at: Option<String>,
    /// When a call with the key moved more money than Keybrake priced; refused until reinstated.
    pub suspended_at: Option<String>,
    /// What the suspension found (both readings of the call), empty when not suspended.
    pub suspended_reason: String,
    pub state: KeyState,
    /// UTC day the spend figures are for.
    pub usage_day: String,
    #[schema(value_type = f64)]
    pub spent_today_usd: Number,
    #[schema(value_type = f64)]
    pub reserved_usd: Number,
    #[schema(value_type = f64)]
    pub uncertain_usd: Number,
    #[schema(value_type = Option<f64>)]
    pub remaining_today_usd: Option<Number>,
}

impl KeyView {
    pub fn new(k: &KeyRecord, spend: Spend, now: i64, day: i64) -> KeyView {
        KeyView {
            id: k.id.clone(),
            object: "vault_key",
            label: k.label.clone(),
            vendor: k.vendor.as_str(),
            allowed_endpoints: k.scopes.iter().map(ToString::to_string).collect(),
            allowed_accounts: k.allowed_accounts.clone(),
            daily_usd_cap: k.daily_cap.map(usd_number),
            max_amount_per_call_usd: k.max_per_call.map(usd_number),
            allow_unpriced_calls: k.allow_unpriced,
            dedup: k.dedup.as_str(),
            dedup_window_seconds: k.dedup_window_secs,
            created_at: rfc3339(k.created_at),
            expires_at: rfc3339(k.expires_at),
            revoked_at: k.revoked_at.map(rfc3339),
            suspended_at: k.suspended_at.map(rfc3339),
            suspended_reason: k.suspended_reason.clone(),
            state: k.state(now),
            usage_day: day_text(day),
            spent_today_usd: usd_number(UsdMicros(spend.committed)),
            reserved_usd: usd_number(UsdMicros(spend.reserved)),
            uncertain_usd: usd_number(UsdMicros(spend.uncertain)),
            remaining_today_usd: k.daily_cap.map(|c| usd_number(UsdMicros((c.0 - spend.total()).max(0)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Result<ValidKey, String> {
        let r: CreateKey = serde_json::from_str(json).map_err(|e| e.to_string())?;
        r.validate().map_err(|e| format!("{}: {}", e.param, e.message))
    }

    const OK: &str = r#"{"label":"ray-billing-cus_123","vendor":"stripe","allowed_endpoints":["POST /v1/charges"],"daily_usd_cap":32.99,"expires_in_seconds":3600}"#;

    #[test]
    fn accepts_the_seed_request_exactly() {
        let k = req(OK).unwrap();
        assert_eq!(k.daily_cap, Some(UsdMicros(32_990_000)));
        assert_eq!(k.ttl_secs, 3600);
        assert_eq!(k.dedup, DedupMode::Content);
        assert_eq!(usd_number(UsdMicros(32_990_000)).to_string(), "32.99");
        assert_eq!(usd_number(UsdMicros(1_000_000_000)).to_string(), "1000.00");
    }

    #[test]
    fn rejects_what_is_wrong_with_a_reason() {
        let cases = [
            (r#""vendor":"stripe""#, r#""vendor":"paypal""#, "vendor"),
            (r#"["POST /v1/charges"]"#, r#"["POST v1/charges"]"#, "allowed_endpoints"),
            (r#"["POST /v1/charges"]"#, r#"["GET /admin/audit"]"#, "allowed_endpoints"),
            (r#"["POST /v1/charges"]"#, r#"[]"#, "allowed_endpoints"),
            ("32.99", "-1", "daily_usd_cap"),
            ("32.99", "1e3", "daily_usd_cap"),
            ("32.99", "0.0000001", "daily_usd_cap"),
            ("3600}", "0}", "expires_in_seconds"),
            ("3600}", "99999999}", "expires_in_seconds"),
            ("3600}", "1.5}", "expires_in_seconds"),
            (r#""label":"ray-billing-cus_123""#, r#""label":"  ""#, "label"),
        ];
        for (from, to, param) in cases {
            assert!(OK.contains(from), "{from}");
            let json = OK.replacen(from, to, 1);
            let err = req(&json).unwrap_err();
            assert!(err.starts_with(param), "{json} -> {err}");
        }
        assert!(req(&OK.replace('}', r#","surprise":1}"#)).unwrap_err().contains("unknown field"));
        assert!(req(r#"{"label":"x"}"#).unwrap_err().contains("missing field"));
    }
}
