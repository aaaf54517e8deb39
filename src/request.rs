//! What the filter learns from a request before asking the control service:
//! the route, the canonical method and target, the vault key's hash, the
//! account it acts on, and the headers that shape idempotency. Anything
//! ambiguous is a [`Refusal`]. What is forwarded is rebuilt from what was
//! read here ([`Priced::body`], [`Incoming::forwarded_path`]), never the
//! client's bytes.

use keybrake_core::account::{self, MAX_ACCOUNT_LEN};
use keybrake_core::fingerprint::fingerprint;
use keybrake_core::form::FormParams;
use keybrake_core::path::{self, Target};
use keybrake_core::pricing::{self, Price};
use keybrake_core::scope::Method;
use keybrake_core::vault_key::{looks_like_vault_key, KeyHash};

use crate::config::FilterConfig;
use crate::credentials;
use crate::host::{header, header_count};
use crate::refusal::Refusal;

/// Stripe's own limit on `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// The only body Stripe's API reads (v1): form parameters, in UTF-8.
pub const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";
/// Names the MCP tool behind a call, for the audit trail (never forwarded upstream).
pub const MCP_TOOL_HEADER: &str = "keybrake-mcp-tool";

/// A request on a vendor route, read from its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub vendor: String,
    pub prefix: String,
    pub method: Method,
    /// Whether the client wrote the method in another case (the canonical one is forwarded).
    pub method_rewritten: bool,
    pub target: Target,
    /// The `:path` as received (the canonical one is forwarded when they differ).
    pub raw_path: String,
    pub key_hash: KeyHash,
    /// The `Stripe-Account` and `Stripe-Context` headers as sent (empty when absent).
    pub stripe_account: String,
    pub stripe_context: String,
    /// The account the call acts on (either header; empty for the platform).
    pub account: String,
    pub idempotency_key: String,
    pub content_type: Option<String>,
    /// The MCP tool that made the call (`Keybrake-Mcp-Tool`, set by Keybrake's MCP endpoint).
    pub mcp_tool: String,
}

/// What the body adds: the price, the fingerprint, and the body to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Priced {
    pub price: Price,
    pub fingerprint: String,
    /// The parameters that were priced, re-encoded: what the upstream receives.
    pub body: String,
}

/// Whether a request is for a vendor route at all (others pass through untouched).
pub fn is_vendor_route(config: &FilterConfig, headers: &[(String, String)]) -> bool {
    header(headers, ":path").is_some_and(|p| config.route_for(p).is_some())
}

impl Incoming {
    /// Reads a vendor-route request's headers. Credentials are checked first,
    /// so an unauthenticated caller learns nothing about scopes or paths.
    pub fn from_headers(config: &FilterConfig, headers: &[(String, String)]) -> Result<Incoming, Refusal> {
        let raw_path = header(headers, ":path").unwrap_or_default();
        let Some((route, rest)) = config.route_for(raw_path) else {
            return Err(Refusal::Path(path::PathError::NotAbsolute));
        };
        let key = credentials::vault_key(headers)?;
        if rest.split_once('?').is_some_and(|(_, q)| looks_like_vault_key(q)) {
            return Err(Refusal::KeyInQuery);
        }
        let raw_method = header(headers, ":method").unwrap_or_default();
        let method = Method::parse(raw_method).ok_or_else(|| Refusal::MethodNotAllowed(sanitize(raw_method)))?;
        if header_count(headers, "x-http-method-override") > 0
            || header_count(headers, "x-http-method") > 0
            || header_count(headers, "x-method-override") > 0
        {
            return Err(Refusal::MethodOverride);
        }
        let mut target = path::normalize(rest).map_err(Refusal::Path)?;
        if looks_like_vault_key(&target.path) {
            return Err(Refusal::KeyInQuery);
        }
        if let Some(q) = &target.query {
            if method == Method::Post {
                return Err(Refusal::QueryOnPost);
            }
            let overrides = q.split('&').filter_map(|kv| kv.split('=').next()).any(is_method_override_param);
            if overrides {
                return Err(Refusal::MethodOverride);
            }
            // The query is read like a body, and forwarded as re-encoded.
            let params = FormParams::parse(q.as_bytes()).map_err(Refusal::Query)?;
            target.query = (!params.is_empty()).then(|| params.encode());
            // Re-encoding can lengthen it (a `+` becomes `%20`): what is forwarded obeys the same bound.
            if target.to_request_target().len() > path::MAX_TARGET_LEN {
                return Err(Refusal::Path(path::PathError::TooLong));
            }
        }
        let encoding = single(headers, "content-encoding", 64)?;
        if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("identity") {
            return Err(Refusal::ContentEncoding);
        }
        let stripe_account = single(headers, "stripe-account", MAX_ACCOUNT_LEN)?;
        let stripe_context = single(headers, "stripe-context", MAX_ACCOUNT_LEN)?;
        let account = account::acting_account(&stripe_account, &stripe_context).map_err(Refusal::Account)?.to_owned();
        Ok(Incoming {
            vendor: route.vendor.clone(),
            prefix: route.prefix.clone(),
            method,
            method_rewritten: raw_method != method.as_str(),
            target,
            raw_path: raw_path.to_owned(),
            key_hash: key.hash(),
            stripe_account,
            stripe_context,
            account,
            idempotency_key: single(headers, "idempotency-key", MAX_IDEMPOTENCY_KEY_LEN)?,
            content_type: header(headers, "content-type").map(str::to_owned),
            mcp_tool: mcp_tool(headers)?,
        })
    }

    /// Parses and prices the body (empty for body-less requests).
    pub fn price_body(&self, body: &[u8]) -> Result<Priced, Refusal> {
        let params = match self.method {
            Method::Post => {
                if !body.is_empty() && !is_form(self.content_type.as_deref()) {
                    return Err(Refusal::ContentType);
                }
                FormParams::parse(body).map_err(Refusal::Form)?
            }
            Method::Get | Method::Delete => {
                if !body.is_empty() {
                    return Err(Refusal::BodyNotAllowed);
                }
                FormParams::default()
            }
        };
        if params.iter().any(|(k, _)| is_method_override_param(k)) {
            return Err(Refusal::MethodOverride);
        }
        let price = pricing::price(self.method, &self.target.path, &params).map_err(Refusal::Pricing)?;
        Ok(Priced {
            fingerprint: fingerprint(self.method, &self.target, &self.account, &params),
            price,
            body: params.encode(),
        })
    }

    /// The `:path` to forward: the route prefix plus the canonical target
    /// (Envoy's route strips the prefix on the way out).
    pub fn forwarded_path(&self) -> String {
        format!("{}{}", self.prefix, self.target.to_request_target())
    }
}

/// `_method` in any case or encoding (`%5Fmethod`, `_METHOD`).
fn is_method_override_param(name: &str) -> bool {
    let decoded = name.replace("%5F", "_").replace("%5f", "_");
    decoded.eq_ignore_ascii_case("_method")
}

/// `application/x-www-form-urlencoded`, with no parameter but `charset=utf-8`:
/// a body in another charset would be decoded differently upstream.
fn is_form(content_type: Option<&str>) -> bool {
    let Some(value) = content_type else { return false };
    let mut parts = value.split(';').map(str::trim);
    let media_type_ok = parts.next().is_some_and(|m| m.eq_ignore_ascii_case(FORM_CONTENT_TYPE));
    media_type_ok
        && parts.all(|param| {
            param.split_once('=').is_some_and(|(name, value)| {
                name.trim().eq_ignore_ascii_case("charset")
                    && matches!(value.trim().to_ascii_lowercase().as_str(), "utf-8" | "\"utf-8\"")
            })
        })
}

/// A header that may appear at most once; empty when absent.
fn single(headers: &[(String, String)], name: &'static str, max_len: usize) -> Result<String, Refusal> {
    if header_count(headers, name) > 1 {
        return Err(Refusal::RepeatedHeader(name));
    }
    let value = header(headers, name).unwrap_or_default();
    if value.len() > max_len {
        return Err(Refusal::HeaderTooLong(name));
    }
    Ok(value.to_owned())
}

/// `Keybrake-Mcp-Tool`: a tool name (lower-case letters, digits, `_`), or empty.
fn mcp_tool(headers: &[(String, String)]) -> Result<String, Refusal> {
    let name = single(headers, MCP_TOOL_HEADER, 64)?;
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return Err(Refusal::HeaderInvalid(MCP_TOOL_HEADER));
    }
    Ok(name)
}

/// A method name safe to echo in an error message.
fn sanitize(method: &str) -> String {
    method.chars().filter(char::is_ascii_alphanumeric).take(16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybrake_core::vault_key::VaultKey;

    fn headers(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let key = VaultKey::from_entropy([9; 32]);
        let mut h = vec![
            (":method".to_owned(), method.to_owned()),
            (":path".to_owned(), path.to_owned()),
            ("authorization".to_owned(), format!("Bearer {}", key.expose())),
        ];
        h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        h
    }

    fn incoming(method: &str, path: &str, extra: &[(&str, &str)]) -> Result<Incoming, Refusal> {
        Incoming::from_headers(&FilterConfig::default(), &headers(method, path, extra))
    }

    #[test]
    fn reads_a_charge() {
        let i = incoming("post", "/stripe/v1//charges", &[("idempotency-key", "abc"), ("stripe-account", "acct_1")])
            .unwrap();
        assert_eq!(i.method, Method::Post);
        assert!(i.method_rewritten);
        assert_eq!(i.target.path, "/v1/charges");
        assert_eq!(i.forwarded_path(), "/stripe/v1/charges");
        assert_eq!(i.idempotency_key, "abc");
        assert_eq!(i.stripe_account, "acct_1");
    }

    #[test]
    fn refuses_ambiguity() {
        assert_eq!(incoming("HEAD", "/stripe/v1/charges", &[]).err(), Some(Refusal::MethodNotAllowed("HEAD".into())));
        assert_eq!(
            incoming("POST", "/stripe/v1/charges", &[("x-http-method-override", "GET")]).err(),
            Some(Refusal::MethodOverride)
        );
        assert_eq!(incoming("GET", "/stripe/v1/charges?_method=POST", &[]).err(), Some(Refusal::MethodOverride));
        assert_eq!(incoming("POST", "/stripe/v1/charges?amount=1", &[]).err(), Some(Refusal::QueryOnPost));
        assert_eq!(incoming("GET", "/stripe/v1/charges?key=vk_abc", &[]).err(), Some(Refusal::KeyInQuery));
        assert_eq!(incoming("GET", "/stripe/v1/charges?key=%76k_abc", &[]).err(), Some(Refusal::KeyInQuery));
        assert_eq!(incoming("GET", "/stripe/v1/charges/vk_abc", &[]).err(), Some(Refusal::KeyInQuery));
        assert_eq!(incoming("GET", "/stripe/v1/charges?%5Fmethod=POST", &[]).err(), Some(Refusal::MethodOverride));
        assert!(matches!(incoming("GET", "/stripe/v1/%2e%2e/%2e%2e/x", &[]).err(), Some(Refusal::Path(_))));
        assert_eq!(
            incoming("POST", "/stripe/v1/charges", &[("idempotency-key", "a"), ("idempotency-key", "b")]).err(),
            Some(Refusal::RepeatedHeader("idempotency-key"))
        );
        let long = "k".repeat(300);
        assert_eq!(
            incoming("POST", "/stripe/v1/charges", &[("idempotency-key", &long)]).err(),
            Some(Refusal::HeaderTooLong("idempotency-key"))
        );
    }

    #[test]
    fn a_query_is_forwarded_re_encoded_within_the_target_bound() {
        let i = incoming("GET", "/stripe/v1/charges?limit=3&expand[]=data.customer&q=a+b", &[]).unwrap();
        assert_eq!(i.forwarded_path(), "/stripe/v1/charges?limit=3&expand[]=data.customer&q=a%20b");
        let spaces = format!("/stripe/v1/charges?q={}", "+".repeat(1500));
        assert_eq!(incoming("GET", &spaces, &[]).err(), Some(Refusal::Path(path::PathError::TooLong)));
    }

    #[test]
    fn prices_bodies_strictly() {
        let form = [("content-type", "application/x-www-form-urlencoded; charset=utf-8")];
        let i = incoming("POST", "/stripe/v1/charges", &form).unwrap();
        let p = i.price_body(b"amount=100&currency=usd").unwrap();
        assert!(matches!(p.price, Price::Amount { minor: 100, .. }));
        assert_eq!(p.fingerprint.len(), 64);
        assert!(matches!(i.price_body(b"amount=1&amount=2&currency=usd"), Err(Refusal::Form(_))));
        assert!(matches!(i.price_body(b"amount=1&currency=usd&_method=GET"), Err(Refusal::MethodOverride)));
        let json = incoming("POST", "/stripe/v1/charges", &[("content-type", "application/json")]).unwrap();
        assert_eq!(json.price_body(b"{}"), Err(Refusal::ContentType));
        let get = incoming("GET", "/stripe/v1/charges", &[]).unwrap();
        assert_eq!(get.price_body(b"x=1"), Err(Refusal::BodyNotAllowed));
        assert_eq!(get.price_body(b"").unwrap().price, Price::Free);
    }
}
